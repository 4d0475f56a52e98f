package stack

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// TestSocketWriter writes more than the socket buffers hold to a reader
// that starts late, so that writes meet a full socket and park; every byte
// arrives in order. Writing after the peer has gone fails with an
// *net.OpError, and the write deadline bounds a write that cannot go on.
func TestSocketWriter(t *testing.T) {
	a, b := tcpPair(t)
	var written atomic.Uint64
	w, err := newSocketWriter(a, &written)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 8<<20)
	for i := range want {
		want[i] = byte(i * 7)
	}
	got := make(chan []byte, 1)
	go func() {
		time.Sleep(100 * time.Millisecond) // let the socket fill
		b.SetReadDeadline(time.Now().Add(10 * time.Second))
		data, _ := io.ReadAll(io.LimitReader(b, int64(len(want))))
		got <- data
	}()
	a.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if n, err := w.Write(want); n != len(want) || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
	}
	if data := <-got; !bytes.Equal(data, want) {
		t.Fatalf("read %d bytes, not the %d written", len(data), len(want))
	}
	if written.Load() != uint64(len(want)) {
		t.Fatalf("counted %d bytes written, want %d", written.Load(), len(want))
	}

	// Nobody reads b: the write fills both sockets' buffers (a few MiB)
	// and meets the deadline.
	big := make([]byte, 64<<20)
	a.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	n, err := w.Write(big)
	var oe *net.OpError
	if !errors.As(err, &oe) || !errors.Is(err, os.ErrDeadlineExceeded) || n == len(big) {
		t.Fatalf("Write to a full socket = %d, %v; want a deadline *net.OpError", n, err)
	}

	b.Close()
	a.SetWriteDeadline(time.Now().Add(5 * time.Second))
	var werr error
	for range 100 { // the first writes after the close may still be taken
		if _, werr = w.Write([]byte("x")); werr != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !errors.As(werr, &oe) {
		t.Fatalf("Write after the peer closed = %v; want a *net.OpError", werr)
	}
}

// TestSocketWriterAllocs checks that a write to a socket with room
// allocates nothing: it is on every flow's path from the guest to the host.
func TestSocketWriterAllocs(t *testing.T) {
	a, b := tcpPair(t)
	go io.Copy(io.Discard, b)
	var written atomic.Uint64
	w, err := newSocketWriter(a, &written)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("ping")
	if allocs := testing.AllocsPerRun(100, func() {
		if _, err := w.Write(msg); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("a write allocates %.1f times, want 0", allocs)
	}
}
