// Package stack builds and runs ferry's userspace network: gVisor's netstack
// on a link endpoint, the virtual network's addresses and routes, and the
// forwarders that NAT the guest's TCP and UDP flows to ordinary host sockets,
// with a DNS forwarder at the network's DNS address.
package stack

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// nicID is the only NIC of the stack: the link to the guest.
const nicID tcpip.NICID = 1

// Defaults for Config's zero values.
const (
	DefaultUDPIdleTimeout  = 60 * time.Second
	defaultDialTimeout     = 30 * time.Second
	defaultDNSTimeout      = 5 * time.Second
	DefaultMaxTCPFlows     = 65536
	DefaultMaxUDPFlows     = 16384
	DefaultMaxInFlightSYNs = 1024
	// DefaultMaxUnansweredUDP bounds UDP flows whose destination has not
	// answered yet, as MaxInFlightSYNs bounds connection attempts: a guest
	// spraying datagrams at random addresses fills this, not the flow
	// table, and a flow that hears back no longer counts. Kept small
	// because each such flow's destination becomes an address of the
	// stack, and gVisor scans them all for every datagram to an address
	// it does not hold (the flood's).
	DefaultMaxUnansweredUDP = 256
	// unansweredUDPTimeout expires a flow that has never heard back sooner
	// than UDPIdleTimeout, as conntrack does an unreplied UDP entry.
	unansweredUDPTimeout = 30 * time.Second
)

// Config configures a Stack.
type Config struct {
	// Link is the link endpoint to the guest (see package tap).
	Link stack.LinkEndpoint
	// Network is the virtual network's addressing.
	Network Network
	// DisableHostLoopback makes connections to the gateway fail with
	// "network unreachable" instead of reaching the host's 127.0.0.1.
	DisableHostLoopback bool
	// DisableDNS leaves the DNS address silent.
	DisableDNS bool
	// DNSUpstreams are the servers ("host:port") the DNS forwarder asks.
	DNSUpstreams []string
	// UDPIdleTimeout expires UDP flows without traffic; zero means
	// DefaultUDPIdleTimeout.
	UDPIdleTimeout time.Duration
	// OutboundAddr4 and OutboundAddr6, when valid, are the local addresses
	// of the host sockets that carry the guest's IPv4 and IPv6 flows
	// (--outbound-addr, --outbound-addr6).
	OutboundAddr4, OutboundAddr6 netip.Addr
	// Fence limits the destinations the guest may reach.
	Fence Fence
	// MaxTCPFlows and MaxUDPFlows bound concurrent flows (zero means the
	// defaults); a flow over the limit is refused, flows already open are
	// untouched. MaxInFlightSYNs bounds connection attempts still dialing.
	MaxTCPFlows, MaxUDPFlows, MaxInFlightSYNs int
	// MaxUnansweredUDP bounds UDP flows that have not yet received a
	// datagram from their destination (zero means the default); a new
	// flow over it is refused with ICMP port unreachable.
	MaxUnansweredUDP int
	// Logger receives the stack's logs; nil discards them.
	Logger *slog.Logger
}

// Stack is a running userspace network for one guest.
type Stack struct {
	cfg    Config
	log    *slog.Logger
	s      *stack.Stack
	dialer net.Dialer

	ctx    context.Context // canceled by Close: ends every flow
	cancel context.CancelFunc
	flows  sync.WaitGroup

	dns       *dnsForwarder
	closers   []func() error // DNS listeners
	closeMu   sync.Once
	counters  counters
	hostAddrs map[netip.Addr]bool   // for Fence.DenyHost
	udpBatch  *udpBatch             // nil unless the link reports its bursts
	udpFast   udpFlows              // flows whose datagrams skip the stack
	guestPin  stack.AddressEndpoint // see pinGuestSource; nil without IPv4
}

// burstHooker is a link endpoint that reports the end of each burst of
// frames it delivered (tap's endpoint does).
type burstHooker interface{ SetBurstHook(func()) }

// New builds the stack on cfg.Link and starts forwarding.
func New(cfg Config) (*Stack, error) {
	if cfg.UDPIdleTimeout <= 0 {
		cfg.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if cfg.MaxTCPFlows <= 0 {
		cfg.MaxTCPFlows = DefaultMaxTCPFlows
	}
	if cfg.MaxUnansweredUDP <= 0 {
		cfg.MaxUnansweredUDP = DefaultMaxUnansweredUDP
	}
	if cfg.MaxUDPFlows <= 0 {
		cfg.MaxUDPFlows = DefaultMaxUDPFlows
	}
	if cfg.MaxInFlightSYNs <= 0 {
		cfg.MaxInFlightSYNs = DefaultMaxInFlightSYNs
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	link := cfg.Link // before any wrapper of the stack's own
	opts := stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	}
	if cfg.Network.IPv6() {
		// No duplicate address detection: the addresses are ferry's own on
		// a link it owns, and usable at once.
		opts.NetworkProtocols = append(opts.NetworkProtocols, ipv6.NewProtocolWithOptions(ipv6.Options{
			DADConfigs: stack.DADConfigurations{DupAddrDetectTransmits: 0},
		}))
		opts.TransportProtocols = append(opts.TransportProtocols, icmp.NewProtocol6)
		cfg.Link = newRouterAdvertiser(cfg.Link)
	}
	s := stack.New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	st := &Stack{cfg: cfg, log: log, s: s, ctx: ctx, cancel: cancel, dialer: net.Dialer{Timeout: defaultDialTimeout, KeepAlive: 30 * time.Second}}
	if cfg.Fence.DenyHost {
		st.hostAddrs = hostAddrs()
	}
	if h, ok := link.(burstHooker); ok {
		st.udpBatch = newUDPBatch()
		h.SetBurstHook(st.udpBatch.flush)
	}
	if err := st.setup(); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

func (st *Stack) setup() error {
	s, n := st.s, st.cfg.Network
	if err := tuneTCP(s); err != nil {
		return err
	}
	if err := s.CreateNICWithOptions(nicID, newTimeWaitReuser(s, st.cfg.Link, st.bypass), stack.NICOptions{Name: "guest"}); err != nil {
		return fmt.Errorf("create NIC: %s", err)
	}
	// Promiscuous with spoofing: every destination the guest sends to is
	// accepted, and replies leave from that destination's address.
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("set promiscuous mode: %s", err)
	}
	if err := s.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("set spoofing: %s", err)
	}
	local := []netip.Prefix{netip.PrefixFrom(n.Gateway, n.Prefix.Bits())}
	if !st.cfg.DisableDNS {
		local = append(local, netip.PrefixFrom(n.DNS, n.Prefix.Bits()))
	}
	routes := []tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}}
	if n.IPv6() {
		local = append(local, netip.PrefixFrom(n.Gateway6, n.Prefix6.Bits()), netip.PrefixFrom(linkLocal(st.cfg.Link.LinkAddress()), 64))
		if !st.cfg.DisableDNS {
			local = append(local, netip.PrefixFrom(n.DNS6, n.Prefix6.Bits()))
		}
		routes = append(routes, tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	for _, p := range local {
		pa := tcpip.ProtocolAddress{
			Protocol:          ipv4.ProtocolNumber,
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFromSlice(p.Addr().AsSlice()), PrefixLen: p.Bits()},
		}
		if p.Addr().Is6() {
			pa.Protocol = ipv6.ProtocolNumber
		}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("add address %s: %s", p, err)
		}
	}
	s.SetRouteTable(routes)
	pin, err := pinGuestSource(s, n.Guest)
	if err != nil {
		return err
	}
	st.guestPin = pin

	tcpFwd := tcp.NewForwarder(s, 0, st.cfg.MaxInFlightSYNs, st.handleTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, st.guard(tcpFwd.HandlePacket))
	udpFwd := udp.NewForwarder(s, st.handleUDP)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, st.guard(udpFwd.HandlePacket))
	pings := newICMPForwarder(st)
	s.SetTransportProtocolHandler(icmp.ProtocolNumber4, pings.handle4)
	if n.IPv6() {
		s.SetTransportProtocolHandler(icmp.ProtocolNumber6, pings.handle6)
		ra := st.cfg.Link.(*routerAdvertiser)
		st.goFlow(func() { ra.run(st.ctx, st) })
	}

	if !st.cfg.DisableDNS {
		if err := st.startDNS(); err != nil {
			return err
		}
	}
	if err := st.serveDHCP(); err != nil {
		return err
	}
	st.goFlow(st.returnMemory)
	return nil
}

// tuneTCP sizes TCP buffers for throughput and turns on SACK.
func tuneTCP(s *stack.Stack) error {
	opts := []tcpip.SettableTransportProtocolOption{
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20},
		&tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20},
	}
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	// A short TIME_WAIT: ferry closes first toward the guest whenever the
	// server does, and a guest reusing the 4-tuple must not stall on it.
	timeWait := tcpip.TCPTimeWaitTimeoutOption(time.Second)
	reuse := tcpip.TCPTimeWaitReuseGlobal
	opts = append(opts, &sack, &moderate, &timeWait, &reuse)
	for _, o := range opts {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			return fmt.Errorf("set TCP option %T: %s", o, err)
		}
	}
	return nil
}

// startDNS serves the DNS forwarder on the DNS addresses, port 53, over UDP
// and TCP.
func (st *Stack) startDNS() error {
	n := st.cfg.Network
	st.dns = newDNSForwarder(st.cfg.DNSUpstreams, defaultDNSTimeout, st.log.With("component", "dns"))
	addrs := []netip.Addr{n.DNS}
	if n.IPv6() {
		addrs = append(addrs, n.DNS6)
	}
	for _, a := range addrs {
		proto := ipv4.ProtocolNumber
		if a.Is6() {
			proto = ipv6.ProtocolNumber
		}
		addr := tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(a.AsSlice()), Port: 53}
		pc, err := gonet.DialUDP(st.s, &addr, nil, proto)
		if err != nil {
			return fmt.Errorf("DNS forwarder: listen on %s/udp: %w", netip.AddrPortFrom(a, 53), err)
		}
		st.closers = append(st.closers, pc.Close)
		l, err := gonet.ListenTCP(st.s, addr, proto)
		if err != nil {
			return fmt.Errorf("DNS forwarder: listen on %s/tcp: %w", netip.AddrPortFrom(a, 53), err)
		}
		st.closers = append(st.closers, l.Close)
		st.goFlow(func() { st.dns.servePacket(pc) })
		st.goFlow(func() { st.dns.serveStream(l) })
	}
	return nil
}

// goFlow runs f as one of the stack's tracked goroutines. A panic in f is
// logged and ends that flow only.
func (st *Stack) goFlow(f func()) {
	st.flows.Add(1)
	go func() {
		defer st.flows.Done()
		defer st.recoverFlow()
		f()
	}()
}

// returnMemory gives memory back to the system once a burst is over (most
// of the flows open at its peak have closed, or many short flows came and
// went): Go collects an idle heap only every two minutes and returns it to
// the system slowly, and a helper's RSS should follow its open flows.
func (st *Stack) returnMemory() {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	var peak int64
	lastStarted := st.counters.started.Load()
	again := false // free once more a tick later: closed flows linger briefly
	for {
		select {
		case <-st.ctx.Done():
			return
		case <-t.C:
		}
		open := st.counters.tcpFlows.Load() + st.counters.udpFlows.Load()
		peak = max(peak, open)
		started := st.counters.started.Load()
		burstOver := peak >= 256 && open <= peak/2
		churned := started-lastStarted >= 1024 && open < 256
		switch {
		case burstOver || churned:
			debug.FreeOSMemory()
			peak, lastStarted, again = open, started, true
		case again:
			debug.FreeOSMemory()
			again = false
		}
	}
}

// recoverFlow, deferred in a flow's goroutine, turns a panic into a log line
// and a counted drop.
func (st *Stack) recoverFlow() {
	if r := recover(); r != nil {
		st.counters.drop(DropPanic)
		st.log.Error("flow ended by a panic; ferry goes on", "panic", r, "stack", string(debug.Stack()))
	}
}

// Close stops forwarding, ends every flow and detaches the link endpoint.
// It is safe to call more than once.
func (st *Stack) Close() {
	st.closeMu.Do(func() {
		st.cancel()
		if st.dns != nil {
			st.dns.Close()
		}
		for _, c := range st.closers {
			c()
		}
		st.s.Close()
		st.flows.Wait()
		st.s.Wait()
		st.s.Destroy()
	})
}

// dial connects a host socket for one of the guest's flows, from the
// outbound address when one is set.
func (st *Stack) dial(ctx context.Context, network, target string) (net.Conn, error) {
	d := st.dialer
	ap, err := netip.ParseAddrPort(target)
	if err != nil {
		return nil, err
	}
	a := st.cfg.OutboundAddr4
	if ap.Addr().Is6() {
		a = st.cfg.OutboundAddr6
	}
	if a.IsValid() {
		switch network {
		case "tcp":
			d.LocalAddr = &net.TCPAddr{IP: a.AsSlice()}
		case "udp":
			d.LocalAddr = &net.UDPAddr{IP: a.AsSlice()}
		}
	}
	return d.DialContext(ctx, network, target)
}

// outboundAddr is the local address for host ICMP sockets of a family.
func (st *Stack) outboundAddr(is4 bool) string {
	switch {
	case is4 && st.cfg.OutboundAddr4.IsValid():
		return st.cfg.OutboundAddr4.String()
	case is4:
		return "0.0.0.0"
	case st.cfg.OutboundAddr6.IsValid():
		return st.cfg.OutboundAddr6.String()
	}
	return "::"
}
