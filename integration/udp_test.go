package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// udpSizes returns count datagram sizes between 8 and 65000 bytes: the
// edges, sizes around common MTUs, and the rest pseudo-random.
func udpSizes(count int) []int {
	sizes := []int{8, 65000, 1472, 1473, 1500, 8972, 9000, 32768, 64999, 100}
	r := rand.New(rand.NewPCG(1, 2))
	for len(sizes) < count {
		if r.IntN(2) == 0 {
			sizes = append(sizes, 8+r.IntN(1500))
		} else {
			sizes = append(sizes, 8+r.IntN(65000-8+1))
		}
	}
	return sizes
}

// TestUDPEchoMixedSizes sends 1000 datagrams of mixed sizes, up to 65000
// bytes, from the guest to an echo server on the host's loopback and checks
// that each comes back intact.
func TestUDPEchoMixedSizes(t *testing.T) {
	w := newWorld(t, 3*time.Minute)
	pc := echoUDP(t, w.host.Path, "127.0.0.1:0")
	w.attach(t, "-c")

	addr := fmt.Sprintf("10.0.2.2:%d", pc.LocalAddr().(*net.UDPAddr).Port)
	c, err := nstest.DialIn(w.ctx, w.guest.NetnsPath, "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	src := rand.NewChaCha8([32]byte{3})
	buf := make([]byte, 65536)
	retries := 0
	for seq, size := range udpSizes(1000) {
		msg := make([]byte, size)
		src.Read(msg)
		binary.BigEndian.PutUint32(msg, uint32(seq))
		if err := echoOnce(c, msg, buf, &retries); err != nil {
			t.Fatalf("datagram %d (%d bytes): %v", seq, size, err)
		}
	}
	if retries > 0 {
		t.Logf("%d datagrams had to be sent again", retries)
	}
}

// echoOnce sends msg and waits for the same bytes back, sending again up to
// twice when nothing comes. Stale echoes of earlier tries are skipped.
func echoOnce(c net.Conn, msg, buf []byte, retries *int) error {
	for try := 1; try <= 3; try++ {
		if try > 1 {
			*retries++
		}
		if _, err := c.Write(msg); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			n, err := c.Read(buf)
			if err != nil {
				break // timed out: send again
			}
			if n >= 4 && binary.BigEndian.Uint32(buf) != binary.BigEndian.Uint32(msg) {
				continue // an echo of an earlier datagram
			}
			if !bytes.Equal(buf[:n], msg) {
				return fmt.Errorf("echo differs: got %d bytes, want %d", n, len(msg))
			}
			return nil
		}
	}
	return fmt.Errorf("no echo after 3 tries")
}
