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
	"sync/atomic"
	"time"

	"github.com/ferrynet/ferry/portspec"
	"github.com/ferrynet/ferry/stack"
)

// Guest is the way into the guest that the userspace publisher needs: its
// address, and connections to it from a chosen source (the zero AddrPort
// meaning the gateway). *stack.Stack provides it through StackGuest.
type Guest interface {
	Addr() netip.Addr
	// Addr6 is the guest's IPv6 address, invalid when it has none.
	Addr6() netip.Addr
	DialTCP(ctx context.Context, src, dst netip.AddrPort) (stack.HalfConn, error)
	DialUDP(src, dst netip.AddrPort) (net.Conn, error)
}

// StackGuest is the guest behind ferry's userspace stack.
func StackGuest(st *stack.Stack) Guest { return stackGuest{st} }

type stackGuest struct{ st *stack.Stack }

func (g stackGuest) Addr() netip.Addr { return g.st.Network().Guest }

func (g stackGuest) Addr6() netip.Addr { return g.st.Network().Guest6 }

func (g stackGuest) DialTCP(ctx context.Context, src, dst netip.AddrPort) (stack.HalfConn, error) {
	c, err := g.st.DialTCP(ctx, src, dst)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (g stackGuest) DialUDP(src, dst netip.AddrPort) (net.Conn, error) {
	c, err := g.st.DialUDP(src, dst)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Options tune a Userspace publisher; zero values mean the defaults.
type Options struct {
	// UDPIdleTimeout expires a UDP client's flow after this long without
	// traffic either way (default 60 s).
	UDPIdleTimeout time.Duration
	// DialTimeout bounds a connection into the guest (default 10 s).
	DialTimeout time.Duration
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Userspace publishes ports with a host listener per published port that
// proxies each connection (or UDP client) into the guest.
type Userspace struct {
	guest Guest
	opts  Options
	log   *slog.Logger

	mu     sync.Mutex
	nextID int
	fwds   []*published // in ID order
	closed bool

	tcpConns, udpFlows atomic.Int64
	bytesIn, bytesOut  atomic.Uint64
}

var _ Publisher = (*Userspace)(nil)

// Stats counts what a publisher carries: connections and UDP clients open
// now, and bytes into the guest and back out to the clients (as they go;
// a connection spliced kernel to kernel counts per 4 MiB and when each
// direction ends).
type Stats struct {
	TCPConns int64  `json:"tcp_conns"`
	UDPFlows int64  `json:"udp_flows"`
	BytesIn  uint64 `json:"bytes_in"`  // clients to the guest
	BytesOut uint64 `json:"bytes_out"` // the guest to its clients
}

// Stats returns a snapshot of u's counters.
func (u *Userspace) Stats() Stats {
	return Stats{TCPConns: u.tcpConns.Load(), UDPFlows: u.udpFlows.Load(), BytesIn: u.bytesIn.Load(), BytesOut: u.bytesOut.Load()}
}

// published is one Forward being served.
type published struct {
	Forward
	l      listener
	cancel context.CancelFunc // ends the forward's connections
	done   sync.WaitGroup
}

// NewUserspace returns a publisher into guest.
func NewUserspace(guest Guest, opts Options) *Userspace {
	if opts.UDPIdleTimeout <= 0 {
		opts.UDPIdleTimeout = 60 * time.Second
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 10 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Userspace{guest: guest, opts: opts, log: log, nextID: 1}
}

// maxRandomTries bounds the retries when a random port is free on one
// family and taken on the other.
const maxRandomTries = 20

// Add publishes s. See Publisher.
func (u *Userspace) Add(ctx context.Context, s Spec) ([]Forward, error) {
	if s.Proto != portspec.TCP && s.Proto != portspec.UDP {
		return nil, fmt.Errorf("cannot publish %s: protocol %q: use tcp or udp", s.Mapping, s.Proto)
	}
	if s.GuestPort == 0 {
		return nil, fmt.Errorf("cannot publish %s: container port 0 is out of range 1-65535", s.Mapping)
	}
	guestAddr := s.GuestAddr
	if !guestAddr.IsValid() {
		guestAddr = u.guest.Addr()
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
			return u.register(s, ls, guestAddr)
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

// hostAddrs is what a mapping listens on; implicit is true when no address
// was given (both families, and a host without IPv6 gets IPv4 only).
func hostAddrs(m portspec.Mapping) (addrs []netip.Addr, implicit bool) {
	if !m.HostIP.IsValid() {
		return []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}, true
	}
	return []netip.Addr{m.HostIP.Unmap()}, false
}

// boundSocket is one socket of bindAll.
type boundSocket struct {
	addr netip.Addr
	port uint16
	l    listener
}

// bindAll binds port (0: a free port, then the same on the other
// addresses) on every address, or nothing.
func bindAll(proto portspec.Proto, addrs []netip.Addr, port uint16, implicit bool) ([]boundSocket, error) {
	var out []boundSocket
	for _, a := range addrs {
		l, got, err := listen(proto, a, port)
		if err != nil {
			var nf *noFamilyError
			if implicit && a.Is6() && errors.As(err, &nf) {
				continue
			}
			for _, b := range out {
				b.l.Close()
			}
			return nil, err
		}
		port = got
		out = append(out, boundSocket{a, got, l})
	}
	return out, nil
}

// register numbers the bound sockets and starts serving them.
func (u *Userspace) register(s Spec, ls []boundSocket, guestAddr netip.Addr) ([]Forward, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		for _, b := range ls {
			b.l.Close()
		}
		return nil, errors.New("the publisher is closed")
	}
	var out []Forward
	for _, b := range ls {
		ctx, cancel := context.WithCancel(context.Background())
		p := &published{
			Forward: Forward{ID: u.nextID, Proto: s.Proto, HostAddr: b.addr, HostPort: b.port, GuestAddr: guestAddr, GuestPort: s.GuestPort},
			l:       b.l, cancel: cancel,
		}
		u.nextID++
		u.fwds = append(u.fwds, p)
		out = append(out, p.Forward)
		log := u.log.With("id", p.ID, "publish", p.Forward.String(), "guest", netip.AddrPortFrom(guestAddr, s.GuestPort))
		p.done.Add(1)
		go func() {
			defer p.done.Done()
			if s.Proto == portspec.UDP {
				u.serveUDP(ctx, p, log)
			} else {
				u.serveTCP(ctx, p, log)
			}
		}()
		log.Info("port published")
	}
	return out, nil
}

// List returns the published forwards in ID order.
func (u *Userspace) List() []Forward {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]Forward, len(u.fwds))
	for i, p := range u.fwds {
		out[i] = p.Forward
	}
	return out
}

// Remove withdraws forward id and waits until its listener and connections
// are closed.
func (u *Userspace) Remove(id int) error {
	u.mu.Lock()
	i := slices.IndexFunc(u.fwds, func(p *published) bool { return p.ID == id })
	if i < 0 {
		u.mu.Unlock()
		return ErrNotFound{id}
	}
	p := u.fwds[i]
	u.fwds = slices.Delete(u.fwds, i, i+1)
	u.mu.Unlock()
	p.stop()
	u.log.Info("port withdrawn", "id", id, "publish", p.Forward.String())
	return nil
}

// Close withdraws every forward; later Adds fail.
func (u *Userspace) Close() error {
	u.mu.Lock()
	fwds := u.fwds
	u.fwds, u.closed = nil, true
	u.mu.Unlock()
	for _, p := range fwds {
		p.stop()
	}
	return nil
}

func (p *published) stop() {
	p.cancel()
	p.l.Close()
	p.done.Wait()
}

// peerFor is the source a client appears from inside the guest: its own
// address and port when the guest can answer it directly (same family, not
// the host's loopback), else the zero AddrPort, the gateway, as libslirp
// does.
// dstFor is where a client's connection to a forward to dst goes: an IPv6
// client of a forward to the guest's default address goes to the guest's
// IPv6 address when it has one, so that it keeps its own source address.
func (u *Userspace) dstFor(client, dst netip.AddrPort) netip.AddrPort {
	if c := client.Addr(); c.Is6() && !c.Is4In6() && dst.Addr() == u.guest.Addr() {
		if a6 := u.guest.Addr6(); a6.IsValid() {
			return netip.AddrPortFrom(a6, dst.Port())
		}
	}
	return dst
}

func peerFor(client netip.AddrPort, guest netip.Addr) netip.AddrPort {
	a := client.Addr().Unmap()
	if !a.IsValid() || a.IsLoopback() || a.IsUnspecified() || a.Is4() != guest.Unmap().Is4() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, client.Port())
}
