package integration

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// Addresses of the veth between the host namespace and a "server"
// namespace: a routable network that exists only inside this test.
const (
	natHostAddr   = "172.31.200.1"
	natServerAddr = "172.31.200.2"
)

// TestNATToRoutableAddress checks that the guest reaches a server beyond
// the host namespace over TCP and UDP, and that the server sees the host
// namespace's own address, as with any NAT.
func TestNATToRoutableAddress(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	srv, err := w.lab.NewNetns(w.ctx, "server")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.NewVeth(w.ctx, w.host, natHostAddr+"/24", srv, natServerAddr+"/24"); err != nil {
		t.Fatal(err)
	}

	// TCP: the server answers with the peer address it sees.
	l, err := nstest.ListenIn(srv.Path, "tcp", natServerAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			c.Close()
		}
	}()
	// UDP: the server echoes the datagram, prefixed with the peer address.
	pc, err := nstest.ListenPacketIn(srv.Path, "udp", natServerAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte(from.String()+" "), buf[:n]...), from)
		}
	}()

	w.attach(t, "-c")

	t.Run("TCP", func(t *testing.T) {
		addr := fmt.Sprintf("%s:%d", natServerAddr, l.Addr().(*net.TCPAddr).Port)
		c, err := nstest.DialIn(w.ctx, w.guest.NetnsPath, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("read from %s: %v", addr, err)
		}
		checkSource(t, strings.TrimSpace(line))
	})
	t.Run("UDP", func(t *testing.T) {
		addr := fmt.Sprintf("%s:%d", natServerAddr, pc.LocalAddr().(*net.UDPAddr).Port)
		c, err := nstest.DialIn(w.ctx, w.guest.NetnsPath, "udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, 65536)
		for try := 1; ; try++ {
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatalf("send to %s: %v", addr, err)
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := c.Read(buf)
			if err != nil {
				if try < 3 {
					continue
				}
				t.Fatalf("no echo from %s after %d tries: %v", addr, try, err)
			}
			from, payload, _ := strings.Cut(string(buf[:n]), " ")
			if payload != "ping" {
				t.Errorf("echo payload %q, want %q", payload, "ping")
			}
			checkSource(t, from)
			return
		}
	})
}

// checkSource checks that the server saw the host namespace's address.
func checkSource(t *testing.T, peer string) {
	t.Helper()
	host, _, err := net.SplitHostPort(peer)
	if err != nil {
		t.Fatalf("server reported peer %q: %v", peer, err)
	}
	if host != natHostAddr {
		t.Errorf("server saw the guest as %s, want the host namespace's %s", host, natHostAddr)
	}
}
