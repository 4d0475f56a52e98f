package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Inbound connections: opened from ferry into the guest, for published
// ports. The guest sees them coming from a source address of the caller's
// choice: a client's own address where the guest can answer it, else the
// gateway. gVisor binds only to local addresses, so a client's address is
// added to the NIC (never primary, so outbound traffic never uses it) while
// a connection uses it.

// Network is the virtual network's addressing.
func (st *Stack) Network() Network { return st.cfg.Network }

// TCPConn is a TCP connection into the guest. Closing it also releases its
// source address.
type TCPConn struct {
	*gonet.TCPConn
	wq      *waiter.Queue
	ep      tcpip.Endpoint
	release func()
}

// endpoint implements guestEndpoint: a published port's copy writes into
// the endpoint straight from the client's socket.
func (c *TCPConn) endpoint() (tcpip.Endpoint, *waiter.Queue) { return c.ep, c.wq }

// Close closes the connection.
func (c *TCPConn) Close() error {
	err := c.TCPConn.Close()
	c.release()
	return err
}

// UDPConn is a connected UDP socket into the guest. Closing it also releases
// its source address.
type UDPConn struct {
	*gonet.UDPConn
	release func()
}

// Close closes the socket.
func (c *UDPConn) Close() error {
	err := c.UDPConn.Close()
	c.release()
	return err
}

// DialTCP connects to dst in the guest from src. A zero src, or one the
// guest could not answer (see sourceFor), means the gateway with an
// ephemeral port. A refused connection (nothing listens on dst) fails
// promptly.
func (st *Stack) DialTCP(ctx context.Context, src, dst netip.AddrPort) (*TCPConn, error) {
	src = st.sourceFor(src, dst.Addr().Is6())
	release, err := st.holdAddr(src.Addr())
	if err != nil {
		return nil, err
	}
	local := st.fullAddr(src)
	remote := st.fullAddr(dst)
	proto := protoOf(dst.Addr())
	c, err := st.dialTCP(ctx, local, remote, proto)
	if err != nil && src.Port() != 0 && isBindError(err) {
		// The client's port is taken in the stack (e.g. TIME-WAIT of an
		// earlier connection): keep the address, let the port go.
		local.Port = 0
		c, err = st.dialTCP(ctx, local, remote, proto)
	}
	if err != nil {
		release()
		return nil, err
	}
	c.release = sync.OnceFunc(release)
	return c, nil
}

// dialTCP connects an endpoint bound to local to remote. A bind error is
// returned plain, a connection error as a *net.OpError (see isBindError).
func (st *Stack) dialTCP(ctx context.Context, local, remote tcpip.FullAddress, proto tcpip.NetworkProtocolNumber) (*TCPConn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	wq := new(waiter.Queue)
	ep, tcpErr := st.s.NewEndpoint(tcp.ProtocolNumber, proto, wq)
	if tcpErr != nil {
		return nil, errors.New(tcpErr.String())
	}
	// Connect's outcome is signaled as writability (or an error, which
	// makes the endpoint writable too).
	entry, connected := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	if tcpErr := ep.Bind(local); tcpErr != nil {
		ep.Close()
		return nil, fmt.Errorf("bind %s:%d in the stack: %s", addrOf(local.Addr), local.Port, tcpErr)
	}
	tcpErr = ep.Connect(remote)
	if _, ok := tcpErr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, ctx.Err()
		case <-connected:
		}
		tcpErr = ep.LastError()
	}
	if tcpErr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "connect", Net: "tcp",
			Addr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(addrOf(remote.Addr), remote.Port)), Err: errors.New(tcpErr.String())}
	}
	return &TCPConn{TCPConn: gonet.NewTCPConn(wq, ep), wq: wq, ep: ep}, nil
}

// DialUDP opens a UDP socket connected to dst in the guest, from src as
// DialTCP chooses it.
func (st *Stack) DialUDP(src, dst netip.AddrPort) (*UDPConn, error) {
	src = st.sourceFor(src, dst.Addr().Is6())
	release, err := st.holdAddr(src.Addr())
	if err != nil {
		return nil, err
	}
	local := st.fullAddr(src)
	remote := st.fullAddr(dst)
	proto := protoOf(dst.Addr())
	c, err := gonet.DialUDP(st.s, &local, &remote, proto)
	if err != nil && src.Port() != 0 {
		local.Port = 0
		c, err = gonet.DialUDP(st.s, &local, &remote, proto)
	}
	if err != nil {
		release()
		return nil, fmt.Errorf("udp into the guest %s: %w", dst, err)
	}
	return &UDPConn{UDPConn: c, release: sync.OnceFunc(release)}, nil
}

// HalfConn is a connection whose write side can be shut down alone, such as
// *net.TCPConn and the connections DialTCP returns.
type HalfConn interface {
	net.Conn
	CloseWrite() error
}

// Proxy copies bytes both ways between a and b until both directions have
// ended, carrying each half-close across, then closes both. An error in
// either direction, or ctx ending, closes both at once.
func Proxy(ctx context.Context, a, b HalfConn) { proxyTCP(ctx, a, b) }

// ProxyCounted is Proxy counting the bytes written into a and into b in
// intoA and intoB as they go.
func ProxyCounted(ctx context.Context, a, b HalfConn, intoA, intoB *atomic.Uint64) {
	proxyTCP(ctx, countedConn{a, intoA}, countedConn{b, intoB})
}

// sourceFor returns the source address a connection into the guest uses:
// src when it is a usable address of the destination's family outside the
// virtual network, else the gateway (of that family) with an ephemeral
// port.
func (st *Stack) sourceFor(src netip.AddrPort, to6 bool) netip.AddrPort {
	n := st.cfg.Network
	a := src.Addr().Unmap()
	if to6 {
		if !a.IsValid() || !a.Is6() || a.IsLoopback() || a.IsUnspecified() || a.IsMulticast() ||
			a.IsLinkLocalUnicast() || n.Prefix6.Contains(a) {
			return netip.AddrPortFrom(n.Gateway6, 0)
		}
		return netip.AddrPortFrom(a, src.Port())
	}
	if !a.IsValid() || !a.Is4() || a.IsLoopback() || a.IsUnspecified() || a.IsMulticast() ||
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || n.Prefix.Contains(a) {
		return netip.AddrPortFrom(n.Gateway, 0)
	}
	return netip.AddrPortFrom(a, src.Port())
}

// protoOf is the network protocol of an address.
func protoOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Unmap().Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

// fullAddr converts an address and port of the guest's network.
func (st *Stack) fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(ap.Addr().Unmap().AsSlice()), Port: ap.Port()}
}

// srcAddrs counts the connections using each client address added to the
// NIC.
type srcAddrs struct {
	mu    sync.Mutex
	count map[netip.Addr]int
}

// srcAddrsOf holds each Stack's srcAddrs (kept beside Stack so that inbound
// dialing stays in this file); an entry goes when its stack closes.
var srcAddrsOf sync.Map // *Stack -> *srcAddrs

func (st *Stack) srcAddrs() *srcAddrs {
	if v, ok := srcAddrsOf.Load(st); ok {
		return v.(*srcAddrs)
	}
	v, loaded := srcAddrsOf.LoadOrStore(st, &srcAddrs{count: make(map[netip.Addr]int)})
	if !loaded {
		context.AfterFunc(st.ctx, func() { srcAddrsOf.Delete(st) })
	}
	return v.(*srcAddrs)
}

var errStackClosed = errors.New("the network is shutting down")

// holdAddr makes a local to the NIC until release is called: the gateway
// already is; another address is added as a /32 on first use and removed
// when its last user releases it.
func (st *Stack) holdAddr(a netip.Addr) (release func(), err error) {
	if a == st.cfg.Network.Gateway || (a.Is6() && a == st.cfg.Network.Gateway6) {
		return func() {}, nil
	}
	if st.ctx.Err() != nil {
		return nil, errStackClosed
	}
	sa := st.srcAddrs()
	sa.mu.Lock()
	defer sa.mu.Unlock()
	addr := tcpip.AddrFromSlice(a.AsSlice())
	if sa.count[a] == 0 {
		pa := tcpip.ProtocolAddress{
			Protocol:          protoOf(a),
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: addr, PrefixLen: a.BitLen()},
		}
		if err := st.s.AddProtocolAddress(nicID, pa, stack.AddressProperties{PEB: stack.NeverPrimaryEndpoint}); err != nil {
			return nil, fmt.Errorf("use source address %s: %s", a, err)
		}
	}
	sa.count[a]++
	return func() {
		sa.mu.Lock()
		defer sa.mu.Unlock()
		sa.count[a]--
		if sa.count[a] == 0 {
			delete(sa.count, a)
			st.s.RemoveAddress(nicID, addr)
		}
	}, nil
}

// isBindError reports whether DialTCPWithBind failed in Bind (as opposed to
// Connect).
func isBindError(err error) bool {
	var op *net.OpError
	// Connect errors are *net.OpError; bind errors are plain.
	return !errors.As(err, &op) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}
