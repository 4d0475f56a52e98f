package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrynet/ferry/stack"
)

// NamespaceDialer connects to addresses as seen from inside the guest's
// network namespace, with kernel sockets created there: network "tcp"
// yields a *net.TCPConn, "udp" a connected *net.UDPConn.
// *nsenter.Dialer is one.
type NamespaceDialer interface {
	Dial(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error)
}

// NewKernel returns a publisher of ports kernel to kernel
// ("--port-driver=kernel"): each connection to a host listener is matched
// with a socket created inside the guest's network namespace by d and
// connected there, and bytes go from one kernel socket to the other with
// splice(2) (SpliceTCP), never through ferry's userspace stack. It is
// Userspace's bookkeeping with a Guest that dials through d. It is faster
// than the stack's path but does not preserve the caller's source address:
// a forward to the guest's own address (guest, which a Spec without
// GuestAddr means) connects to 127.0.0.1 inside the namespace, so the guest
// sees every connection (and UDP datagram) coming from 127.0.0.1, and a
// server must listen on 127.0.0.1 or the wildcard address, with the
// namespace's lo up. A forward to another guest address (the API's
// guest_addr) connects to that address from inside the namespace.
func NewKernel(d NamespaceDialer, guest netip.Addr, opts Options) *Userspace {
	return NewUserspace(kernelGuest{d, guest}, opts)
}

// SpliceTCP copies both ways between two kernel TCP sockets until both
// directions have ended, passing each half-close on (CloseWrite), then
// closes both, counting the bytes written into a and into b in intoA and
// intoB as they go. Go copies between *net.TCPConn with splice(2) through a
// pipe, so the bytes stay in the kernel. An error either way (a reset)
// resets both connections; ctx ending closes both.
func SpliceTCP(ctx context.Context, a, b *net.TCPConn, intoA, intoB *atomic.Uint64) {
	var once sync.Once
	abort := func(reset bool) {
		once.Do(func() {
			if reset {
				a.SetLinger(0)
				b.SetLinger(0)
			}
			a.Close()
			b.Close()
		})
	}
	stop := context.AfterFunc(ctx, func() { abort(false) })
	defer stop()
	pipe := func(dst, src *net.TCPConn, n *atomic.Uint64) {
		// In chunks, so that the count moves while a long flow runs; a
		// chunk is still one splice loop in the kernel's pipe.
		for {
			w, err := dst.ReadFrom(io.LimitReader(src, spliceChunk))
			n.Add(uint64(w))
			if err != nil {
				abort(!errors.Is(err, net.ErrClosed))
				return
			}
			if w < spliceChunk {
				break // src's EOF
			}
		}
		dst.CloseWrite()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(a, b, intoA)
	}()
	pipe(b, a, intoB)
	<-done
	abort(false)
}

// spliceChunk is how many bytes SpliceTCP moves between two counts.
const spliceChunk = 4 << 20

// kernelGuest is the Guest of kernel mode: it dials through the namespace
// dialer, and forwards to the guest's address go to 127.0.0.1 inside.
type kernelGuest struct {
	d     NamespaceDialer
	guest netip.Addr
}

func (g kernelGuest) Addr() netip.Addr { return g.guest }

// Addr6 is invalid: kernel mode does not move IPv6 clients to the guest's
// IPv6 address (it connects to loopback whatever the client).
func (g kernelGuest) Addr6() netip.Addr { return netip.Addr{} }

// inside is the address a forward to a connects to inside the namespace.
func (g kernelGuest) inside(dst netip.AddrPort) netip.AddrPort {
	if a := dst.Addr(); !a.IsValid() || a == g.guest {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), dst.Port())
	}
	return dst
}

// DialTCP returns a *net.TCPConn, which Userspace splices (SpliceTCP).
func (g kernelGuest) DialTCP(ctx context.Context, _, dst netip.AddrPort) (stack.HalfConn, error) {
	c, err := g.d.Dial(ctx, "tcp", g.inside(dst))
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("namespace dialer returned %T, not a TCP connection", c)
	}
	return tc, nil
}

func (g kernelGuest) DialUDP(_, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return g.d.Dial(ctx, "udp", g.inside(dst))
}
