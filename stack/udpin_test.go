package stack

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// TestUDPIn reads datagrams of every size, small and the largest, several
// to a recvmmsg, intact and in order; and holds no arena while it waits.
func TestUDPIn(t *testing.T) {
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.SetReadBuffer(8 << 20)
	c, err := net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var want [][]byte
	for i := range 3 * udpInBatch {
		size := []int{0, 1, 1400, 9000, 65507}[i%5]
		d := bytes.Repeat([]byte{byte(i)}, size)
		want = append(want, d)
		if _, err := c.Write(d); err != nil {
			t.Fatal(err)
		}
	}
	rc, err := srv.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var in udpIn
	defer in.release()
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got [][]byte
	reads := 0
	for len(got) < len(want) {
		if err := in.read(rc); err != nil {
			t.Fatalf("after %d datagrams: %v", len(got), err)
		}
		reads++
		if len(in.dgrams) == 0 || len(in.dgrams) > udpInBatch {
			t.Fatalf("a read returned %d datagrams", len(in.dgrams))
		}
		for _, d := range in.dgrams {
			got = append(got, append([]byte(nil), d...))
		}
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("datagram %d: %d bytes, want %d", i, len(got[i]), len(want[i]))
		}
	}
	if reads >= len(want) {
		t.Errorf("%d reads for %d datagrams: no batching", reads, len(want))
	}
	srv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if err := in.read(rc); !isTimeout(err) {
		t.Fatalf("read of an empty socket: %v, want a timeout", err)
	}
	if in.arena != nil || len(in.dgrams) != 0 {
		t.Fatal("an arena is held while nothing was read")
	}
}
