package forward_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ferrynet/ferry/forward"
	"github.com/ferrynet/ferry/forward/forwardtest"
	"github.com/ferrynet/ferry/portspec"
)

// loopDialer stands in for the namespace: its sockets are the host's own,
// so "127.0.0.1 inside the namespace" is the host's loopback, where
// userspaceHarness's guest servers listen.
type loopDialer struct{}

func (loopDialer) Dial(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network+"4", dst.String())
}

type kernelHarness struct{ userspaceHarness }

func (kernelHarness) New(t *testing.T) forward.Publisher {
	// The guest's address is 10.0.2.100; forwards to it go to 127.0.0.1.
	return forward.NewKernel(loopDialer{}, netip.MustParseAddr("10.0.2.100"), forward.Options{})
}

// TestKernel runs the shared suite. It has no source-address checks (the
// guest servers echo the peer but the suite does not compare it), so
// nothing is skipped; kernel mode's peer is always 127.0.0.1, which the
// integration test checks.
func TestKernel(t *testing.T) {
	forwardtest.Run(t, kernelHarness{})
}

func TestKernelRefusedGuestPortResets(t *testing.T) {
	p := forward.NewKernel(loopDialer{}, netip.MustParseAddr("10.0.2.100"), forward.Options{})
	defer p.Close()
	l, _ := net.Listen("tcp4", "127.0.0.1:0")
	gp := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	fs, err := p.Add(context.Background(), forward.Spec{Mapping: portspec.Mapping{Proto: portspec.TCP, HostIP: netip.MustParseAddr("127.0.0.1"), GuestPort: gp}})
	if err != nil {
		t.Fatal(err)
	}
	if fs[0].GuestAddr != netip.MustParseAddr("10.0.2.100") {
		t.Errorf("GuestAddr = %s, want the guest's address", fs[0].GuestAddr)
	}
	c, err := net.Dial("tcp", fs[0].Host())
	if err == nil {
		defer c.Close()
		_, err = c.Read(make([]byte, 1))
	}
	if err == nil || !isReset(err) {
		t.Fatalf("read from a forward to a closed guest port: %v, want connection reset", err)
	}
}

// TestKernelHalfCloseAndBulk sends a payload, half-closes, and reads the
// guest's sha256 of it back after the guest saw EOF.
func TestKernelHalfCloseAndBulk(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h := sha256.New()
				io.Copy(h, c) // until the client's half-close
				c.Write(h.Sum(nil))
			}()
		}
	}()
	p := forward.NewKernel(loopDialer{}, netip.MustParseAddr("10.0.2.100"), forward.Options{})
	defer p.Close()
	fs, err := p.Add(context.Background(), forward.Spec{Mapping: portspec.Mapping{Proto: portspec.TCP,
		HostIP: netip.MustParseAddr("127.0.0.1"), GuestPort: uint16(l.Addr().(*net.TCPAddr).Port)}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", fs[0].Host())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(payload)
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("guest's sha256 %x, want %x", got, want)
	}
}
