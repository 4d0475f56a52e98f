package integration

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

const bulkSize = 1 << 30 // 1 GiB

// bulkData returns bulkSize bytes of deterministic pseudo-random data.
func bulkData(seed byte) io.Reader {
	var s [32]byte
	s[0] = seed
	return io.LimitReader(rand.NewChaCha8(s), bulkSize)
}

type transfer struct {
	n   int64
	sum []byte
	err error
}

// hashAll reads r to EOF and returns how much it read and its SHA-256.
func hashAll(r io.Reader) transfer {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return transfer{n: n, sum: h.Sum(nil), err: err}
}

// sendAll writes src to w and returns how much it wrote and its SHA-256.
func sendAll(w io.Writer, src io.Reader) transfer {
	h := sha256.New()
	n, err := io.Copy(w, io.TeeReader(src, h))
	return transfer{n: n, sum: h.Sum(nil), err: err}
}

// bulkWorld attaches ferry and listens on the host's loopback; it returns
// the listener and a connection the guest opened to it through 10.0.2.2
// (and the host's end of it), both with the test's deadline.
func bulkWorld(t *testing.T) (guestConn, hostConn net.Conn) {
	w := newWorld(t, 6*time.Minute)
	l, err := nstest.ListenIn(w.host.Path, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	w.attach(t, "-c")
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	addr := fmt.Sprintf("10.0.2.2:%d", l.Addr().(*net.TCPAddr).Port)
	guestConn, err = nstest.DialIn(w.ctx, w.guest.NetnsPath, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { guestConn.Close() })
	select {
	case hostConn = <-accepted:
	case <-time.After(10 * time.Second):
	}
	if hostConn == nil {
		t.Fatal("host's loopback listener got no connection")
	}
	t.Cleanup(func() { hostConn.Close() })
	guestConn.SetDeadline(deadline(w.ctx))
	hostConn.SetDeadline(deadline(w.ctx))
	return guestConn, hostConn
}

// checkTransfer compares what was sent with what arrived.
func checkTransfer(t *testing.T, sent, got transfer, took time.Duration) {
	t.Helper()
	if sent.err != nil {
		t.Fatalf("send: %v (after %d bytes)", sent.err, sent.n)
	}
	if got.err != nil {
		t.Fatalf("receive: %v (after %d bytes)", got.err, got.n)
	}
	if sent.n != bulkSize || got.n != bulkSize {
		t.Fatalf("sent %d bytes, received %d, want %d both", sent.n, got.n, bulkSize)
	}
	if !bytes.Equal(sent.sum, got.sum) {
		t.Fatalf("SHA-256 differs: sent %x, received %x", sent.sum, got.sum)
	}
	t.Logf("1 GiB intact in %v (%.0f MiB/s), sha256 %x", took.Round(time.Millisecond),
		float64(bulkSize)/(1<<20)/took.Seconds(), got.sum)
}

func TestBulkGuestToHost(t *testing.T) {
	guestConn, hostConn := bulkWorld(t)
	received := make(chan transfer, 1)
	go func() { received <- hashAll(hostConn) }()
	start := time.Now()
	sent := sendAll(guestConn, bulkData(1))
	if err := guestConn.(*net.TCPConn).CloseWrite(); err != nil && sent.err == nil {
		sent.err = fmt.Errorf("close write: %w", err)
	}
	if sent.err != nil {
		hostConn.Close() // the receiver must not wait for the deadline
	}
	got := <-received // bounded by the connections' deadline
	checkTransfer(t, sent, got, time.Since(start))
}

func TestBulkHostToGuest(t *testing.T) {
	guestConn, hostConn := bulkWorld(t)
	sentc := make(chan transfer, 1)
	go func() {
		s := sendAll(hostConn, bulkData(2))
		hostConn.Close()
		sentc <- s
	}()
	start := time.Now()
	got := hashAll(guestConn)
	if got.err != nil {
		hostConn.Close() // unblock the sender
	}
	sent := <-sentc
	checkTransfer(t, sent, got, time.Since(start))
}
