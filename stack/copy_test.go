package stack

import (
	"bytes"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// rawRead runs f on c's fd as copySocketToEndpoint does, failing the test
// if the socket never becomes ready.
func rawRead(t *testing.T, c *net.TCPConn, f func(fd uintptr) bool) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := rc.Read(f); err != nil {
		t.Fatal(err)
	}
}

// TestSocketPayload reads a socket the way copySocketToEndpoint does, in
// one rc.Read that parks when fill finds the socket empty: exactly the
// bytes sent, in pieces of every size around the read-ahead buffer's and
// with pauses between them (a park that lost a wake-up would run into the
// deadline), then EOF once the peer closes.
func TestSocketPayload(t *testing.T) {
	a, b := tcpPair(t)
	var want []byte
	for i, size := range []int{1, 5, headSize - 1, headSize, headSize + 1, 3 * headSize, 100000, 7, 250000, 1} {
		want = append(want, bytes.Repeat([]byte{byte('a' + i)}, size)...)
	}
	go func() {
		for off, i := 0, 0; off < len(want); i++ {
			n := min(len(want)-off, []int{1, 5, headSize - 1, headSize, headSize + 1, 3 * headSize, 100000, 7, 250000, 1}[i%10])
			a.Write(want[off : off+n])
			off += n
			if i%2 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		a.CloseWrite()
	}()
	var (
		p   socketPayload
		got []byte
	)
	defer p.release()
	rawRead(t, b, func(fd uintptr) bool {
		p.fd = int(fd)
		for {
			if !p.fill() {
				return false
			}
			if p.eof || p.err != nil {
				return true
			}
			if p.Len() <= 0 {
				t.Fatalf("filled with nothing to read")
			}
			chunk, err := io.ReadAll(io.LimitReader(&p, int64(p.Len())))
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, chunk...)
			if p.Len() != 0 || p.headBuf != nil {
				t.Fatalf("after reading all it knew of: %d bytes left, head buffer held %v", p.Len(), p.headBuf != nil)
			}
		}
	})
	if p.err != nil {
		t.Fatal(p.err)
	}
	if !p.eof {
		t.Fatal("no EOF")
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want %d (equal: %v)", len(got), len(want), bytes.Equal(got, want))
	}
}

// TestUDPOutSend sends a batch of datagrams with one sendmmsg.
func TestUDPOutSend(t *testing.T) {
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var moved atomic.Uint64
	u := &udpOut{host: rc, moved: &moved, fail: func() { t.Error("send failed") }}
	var dgrams [][]byte
	total := 0
	for i := range 100 {
		d := bytes.Repeat([]byte{byte(i)}, 1+i*13)
		dgrams = append(dgrams, d)
		total += len(d)
	}
	u.send(dgrams)
	if moved.Load() != uint64(total) {
		t.Fatalf("moved %d bytes, want %d", moved.Load(), total)
	}
	buf := make([]byte, maxDatagram)
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i, want := range dgrams {
		n, err := srv.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if !bytes.Equal(buf[:n], want) {
			t.Fatalf("datagram %d: %d bytes, want %d", i, n, len(want))
		}
	}
}
