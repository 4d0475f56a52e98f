package forward_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/ferrynet/ferry/forward"
	"github.com/ferrynet/ferry/forward/forwardtest"
	"github.com/ferrynet/ferry/portspec"
	"github.com/ferrynet/ferry/stack"
)

// loopGuest is a guest on the host's 127.0.0.1: connections "into" it are
// ordinary loopback connections.
type loopGuest struct{}

func (loopGuest) Addr() netip.Addr { return netip.MustParseAddr("127.0.0.1") }

// Addr6 is invalid: the stand-in guest has no IPv6 address.
func (loopGuest) Addr6() netip.Addr { return netip.Addr{} }

func (loopGuest) DialTCP(ctx context.Context, src, dst netip.AddrPort) (stack.HalfConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp4", dst.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func (loopGuest) DialUDP(src, dst netip.AddrPort) (net.Conn, error) {
	return net.Dial("udp4", dst.String())
}

type userspaceHarness struct{}

func (userspaceHarness) New(t *testing.T) forward.Publisher {
	return forward.NewUserspace(loopGuest{}, forward.Options{})
}

func (userspaceHarness) HasIPv6() bool {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func (userspaceHarness) ServeGuest(t *testing.T, proto portspec.Proto) uint16 {
	if proto == portspec.UDP {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
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
				pc.WriteTo(buf[:n], from)
			}
		}()
		return uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
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
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "%s %s", c.RemoteAddr(), line)
				}
			}()
		}
	}()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func TestUserspace(t *testing.T) {
	forwardtest.Run(t, userspaceHarness{})
}

func TestRefusedGuestPortResets(t *testing.T) {
	p := forward.NewUserspace(loopGuest{}, forward.Options{})
	defer p.Close()
	// A guest port nothing listens on.
	l, _ := net.Listen("tcp4", "127.0.0.1:0")
	gp := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	fs, err := p.Add(context.Background(), forward.Spec{Mapping: portspec.Mapping{Proto: portspec.TCP, HostIP: netip.MustParseAddr("127.0.0.1"), GuestPort: gp}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", fs[0].Host())
	if err == nil { // the reset may come before or after connect returns
		defer c.Close()
		_, err = c.Read(make([]byte, 1))
	}
	if err == nil || !isReset(err) {
		t.Fatalf("read from a forward to a closed guest port: %v, want connection reset", err)
	}
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET)
}
