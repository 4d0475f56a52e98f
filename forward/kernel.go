package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ferrynet/ferry/portspec"
	"github.com/ferrynet/ferry/stack"
)

// NamespaceDialer connects to addresses as seen from inside the guest's
// network namespace, with kernel sockets created there: network "tcp"
// yields a *net.TCPConn, "udp" a connected *net.UDPConn.
// *nsenter.Dialer is one.
type NamespaceDialer interface {
	Dial(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error)
}

// Kernel publishes ports kernel to kernel ("--port-driver=kernel"): each
// connection to a host listener is matched with a socket created inside the
// guest's network namespace and connected there, and bytes go from one
// kernel socket to the other with splice(2), never through ferry's
// userspace stack. It is faster than Userspace but does not preserve the
// caller's source address: a forward to the guest's own address connects to
// 127.0.0.1 inside the namespace, so the guest sees every connection (and
// UDP datagram) coming from 127.0.0.1, and a server must listen on
// 127.0.0.1 or the wildcard address, with the namespace's lo up. A forward
// to another guest address (the API's guest_addr) connects to that address
// from inside the namespace.
type Kernel struct {
	dialer NamespaceDialer
	guest  netip.Addr
	opts   Options
	log    *slog.Logger
	// udp relays UDP forwards: Userspace's relay with a Guest that dials
	// through the namespace.
	udp *Userspace

	mu     sync.Mutex
	nextID int
	fwds   []*published
	closed bool
}

var _ Publisher = (*Kernel)(nil)

// NewKernel returns a kernel-mode publisher; guest is the guest's address,
// which a Spec without GuestAddr means (and which is reached as 127.0.0.1
// inside the namespace).
func NewKernel(d NamespaceDialer, guest netip.Addr, opts Options) *Kernel {
	u := NewUserspace(nil, opts) // defaults
	k := &Kernel{dialer: d, guest: guest, opts: u.opts, log: u.log, nextID: 1}
	u.guest = kernelGuest{k}
	k.udp = u
	return k
}

// Add publishes s. See Publisher.
func (k *Kernel) Add(ctx context.Context, s Spec) ([]Forward, error) {
	if s.Proto != portspec.TCP && s.Proto != portspec.UDP {
		return nil, fmt.Errorf("cannot publish %s: protocol %q: use tcp or udp", s.Mapping, s.Proto)
	}
	if s.GuestPort == 0 {
		return nil, fmt.Errorf("cannot publish %s: container port 0 is out of range 1-65535", s.Mapping)
	}
	guestAddr := s.GuestAddr
	if !guestAddr.IsValid() {
		guestAddr = k.guest
	}
	addrs, implicit := hostAddrs(s.Mapping)
	var ports []uint16
	if s.HostPort == 0 {
		for range maxRandomTries {
			ports = append(ports, 0)
		}
	} else {
		for p := int(s.HostPort); p <= int(max(s.HostPort, s.HostPortEnd)); p++ {
			ports = append(ports, uint16(p))
		}
	}
	var lastErr error
	for _, p := range ports {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ls, err := bindAll(s.Proto, addrs, p, implicit)
		if err == nil {
			return k.register(s, ls, guestAddr)
		}
		lastErr = err
		var inUse *inUseError
		if !errors.As(err, &inUse) {
			return nil, err
		}
	}
	if s.HostPortEnd > s.HostPort {
		return nil, fmt.Errorf("cannot publish %s: every host port in %d-%d is already in use", s.Mapping, s.HostPort, s.HostPortEnd)
	}
	return nil, lastErr
}

// register numbers the bound sockets and starts serving them.
func (k *Kernel) register(s Spec, ls []boundSocket, guestAddr netip.Addr) ([]Forward, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		for _, b := range ls {
			b.l.Close()
		}
		return nil, errors.New("the publisher is closed")
	}
	var out []Forward
	for _, b := range ls {
		ctx, cancel := context.WithCancel(context.Background())
		p := &published{
			Forward: Forward{ID: k.nextID, Proto: s.Proto, HostAddr: b.addr, HostPort: b.port, GuestAddr: guestAddr, GuestPort: s.GuestPort},
			l:       b.l, cancel: cancel,
		}
		k.nextID++
		k.fwds = append(k.fwds, p)
		out = append(out, p.Forward)
		dst := netip.AddrPortFrom(k.inside(guestAddr), s.GuestPort)
		log := k.log.With("id", p.ID, "publish", p.Forward.String(), "guest", dst, "driver", "kernel")
		p.done.Add(1)
		go func() {
			defer p.done.Done()
			if s.Proto == portspec.UDP {
				k.udp.serveUDP(ctx, p, log)
			} else {
				k.serveTCP(ctx, p, dst, log)
			}
		}()
		log.Info("port published")
	}
	return out, nil
}

// inside is the address a forward to a connects to inside the namespace.
func (k *Kernel) inside(a netip.Addr) netip.Addr {
	if !a.IsValid() || a == k.guest {
		return netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	return a
}

// List returns the published forwards in ID order.
func (k *Kernel) List() []Forward {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]Forward, len(k.fwds))
	for i, p := range k.fwds {
		out[i] = p.Forward
	}
	return out
}

// Remove withdraws forward id and waits until its listener and connections
// are closed.
func (k *Kernel) Remove(id int) error {
	k.mu.Lock()
	i := slices.IndexFunc(k.fwds, func(p *published) bool { return p.ID == id })
	if i < 0 {
		k.mu.Unlock()
		return ErrNotFound{id}
	}
	p := k.fwds[i]
	k.fwds = slices.Delete(k.fwds, i, i+1)
	k.mu.Unlock()
	p.stop()
	k.log.Info("port withdrawn", "id", id, "publish", p.Forward.String())
	return nil
}

// Close withdraws every forward; later Adds fail.
func (k *Kernel) Close() error {
	k.mu.Lock()
	fwds := k.fwds
	k.fwds, k.closed = nil, true
	k.mu.Unlock()
	for _, p := range fwds {
		p.stop()
	}
	return nil
}

// serveTCP accepts on p's listener until ctx ends and splices each
// connection to a connection to dst inside the namespace.
func (k *Kernel) serveTCP(ctx context.Context, p *published, dst netip.AddrPort, log *slog.Logger) {
	l := p.l.(net.Listener)
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			log.Warn("accept", "err", err)
			continue
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			k.proxyTCP(ctx, c.(*net.TCPConn), dst, log)
		}()
	}
}

// proxyTCP connects client to dst inside the namespace and splices between
// them; a refused or failed connection resets the client.
func (k *Kernel) proxyTCP(ctx context.Context, client *net.TCPConn, dst netip.AddrPort, log *slog.Logger) {
	dctx, cancel := context.WithTimeout(ctx, k.opts.DialTimeout)
	c, err := k.dialer.Dial(dctx, "tcp", dst)
	cancel()
	if err != nil {
		log.Debug("connect inside the namespace failed", "client", client.RemoteAddr(), "err", err)
		client.SetLinger(0)
		client.Close()
		return
	}
	guest, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		client.SetLinger(0)
		client.Close()
		return
	}
	SpliceTCP(ctx, client, guest)
}

// SpliceTCP copies both ways between two kernel TCP sockets until both
// directions have ended, passing each half-close on (CloseWrite), then
// closes both. Go copies between *net.TCPConn with splice(2) through a
// pipe, so the bytes stay in the kernel. An error either way (a reset)
// resets both connections; ctx ending closes both.
func SpliceTCP(ctx context.Context, a, b *net.TCPConn) {
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
	pipe := func(dst, src *net.TCPConn) {
		if _, err := dst.ReadFrom(src); err != nil {
			abort(!errors.Is(err, net.ErrClosed))
			return
		}
		dst.CloseWrite()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(a, b)
	}()
	pipe(b, a)
	<-done
	abort(false)
}

// kernelGuest is the Guest that k.udp dials UDP through: forwards to the
// guest's address go to 127.0.0.1 inside the namespace.
type kernelGuest struct{ k *Kernel }

func (g kernelGuest) Addr() netip.Addr { return g.k.guest }

// Addr6 is invalid: kernel mode does not move IPv6 clients to the guest's
// IPv6 address (it connects to loopback whatever the client).
func (g kernelGuest) Addr6() netip.Addr { return netip.Addr{} }

func (g kernelGuest) DialTCP(ctx context.Context, _, dst netip.AddrPort) (stack.HalfConn, error) {
	c, err := g.k.dialer.Dial(ctx, "tcp", netip.AddrPortFrom(g.k.inside(dst.Addr()), dst.Port()))
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func (g kernelGuest) DialUDP(_, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return g.k.dialer.Dial(ctx, "udp", netip.AddrPortFrom(g.k.inside(dst.Addr()), dst.Port()))
}
