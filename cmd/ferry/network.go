package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"time"

	"github.com/spf13/pflag"

	"github.com/ferrynet/ferry/nsenter"
	"github.com/ferrynet/ferry/stack"
	"github.com/ferrynet/ferry/tap"
)

// netFlags are the flags that shape ferry's userspace network, shared by
// attach and run.
type netFlags struct {
	mtu                 int
	cidr                string
	disableHostLoopback bool
	disableDNS          bool
	dnsUpstreams        []string
	udpIdleTimeout      time.Duration
	outboundAddr        string
	outboundAddr6       string
	macAddress          string
	enableIPv6          bool
	denyHost            bool
	deny, allow         []string
	maxTCPFlows         int
	maxUDPFlows         int
	maxSYNs             int
	maxUDPUnanswered    int
	pcap                string
	portDriver          string
}

// MTU bounds: IPv4's minimum, and the largest a TAP frame fits in 64 KiB.
const (
	minMTU = 68
	maxMTU = 65521
)

func (f *netFlags) register(fl *pflag.FlagSet) {
	fl.IntVarP(&f.mtu, "mtu", "m", 65520, fmt.Sprintf("MTU of the TAP device (%d-%d)", minMTU, maxMTU))
	fl.StringVar(&f.cidr, "cidr", stack.DefaultCIDR, "IPv4 network of the namespace: gateway +2, DNS +3, guest +100 (prefix length 1-25)")
	fl.BoolVar(&f.disableHostLoopback, "disable-host-loopback", false, "refuse connections to the gateway (network unreachable) instead of reaching the host's 127.0.0.1")
	fl.BoolVar(&f.disableDNS, "disable-dns", false, "do not answer DNS at the DNS address (it stays silent)")
	listVar(fl, &f.dnsUpstreams, "dns-upstream", "DNS server ADDR[:PORT] the DNS forwarder asks (repeatable; default: the host's /etc/resolv.conf servers)")
	fl.DurationVar(&f.udpIdleTimeout, "udp-idle-timeout", stack.DefaultUDPIdleTimeout, "close UDP flows idle for this long")
	fl.StringVar(&f.outboundAddr, "outbound-addr", "", "IPv4 address, or interface name, that host sockets for the namespace's flows bind to")
	fl.StringVar(&f.outboundAddr6, "outbound-addr6", "", "IPv6 address, or interface name, that host sockets for the namespace's IPv6 flows bind to")
	fl.StringVar(&f.macAddress, "macaddress", "", "MAC address of the TAP device (with --configure)")
	fl.BoolVar(&f.denyHost, "deny-host", false, "refuse connections to every address of the host, not only its loopback")
	listVar(fl, &f.deny, "deny", "refuse destinations in CIDR (repeatable; 169.254.169.254, cloud metadata, is always denied unless allowed)")
	listVar(fl, &f.allow, "allow", "allow destinations in CIDR despite --deny (repeatable; the longer prefix wins)")
	fl.IntVar(&f.maxTCPFlows, "max-tcp-flows", stack.DefaultMaxTCPFlows, "concurrent TCP flows; more are refused with a reset")
	fl.IntVar(&f.maxUDPFlows, "max-udp-flows", stack.DefaultMaxUDPFlows, "concurrent UDP flows; more are refused with ICMP port unreachable")
	fl.IntVar(&f.maxSYNs, "max-syn-in-flight", stack.DefaultMaxInFlightSYNs, "connection attempts still being dialed; more SYNs are dropped")
	fl.IntVar(&f.maxUDPUnanswered, "max-udp-unanswered", stack.DefaultMaxUnansweredUDP, "UDP flows whose destination has not answered yet (a flood of datagrams to random addresses fills this, not --max-udp-flows); more are refused with ICMP port unreachable")
	fl.StringVar(&f.pcap, "pcap", "", "write the namespace's frames to FILE in pcap format")
	fl.StringVar(&f.portDriver, "port-driver", "userspace", "how published ports reach the guest: userspace (through ferry's stack; the guest sees the caller's address) or kernel (the bytes stay in the kernel: a socket made inside the namespace, spliced to the host's, about half the CPU; the guest sees every connection from 127.0.0.1, so its server must listen on 127.0.0.1 or all addresses)")
	fl.BoolVarP(&f.enableIPv6, "enable-ipv6", "6", false, "IPv6 too: fd00::/64, gateway fd00::2 (the host's ::1), DNS fd00::3, Router Advertisements for SLAAC")
}

// netConfig is the validated form of netFlags.
type netConfig struct {
	tap   tap.Config
	stack stack.Config
	pcap  string // file for --pcap
	// kernelPorts is --port-driver=kernel.
	kernelPorts bool
}

// parse validates the flags, without side effects.
func (f *netFlags) parse(tapName string, configure bool) (netConfig, error) {
	if f.mtu < minMTU || f.mtu > maxMTU {
		return netConfig{}, fmt.Errorf("invalid MTU %d: MTU must be between %d and %d", f.mtu, minMTU, maxMTU)
	}
	prefix, err := stack.ParseCIDR(f.cidr)
	if err != nil {
		return netConfig{}, err
	}
	kernelPorts := false
	switch f.portDriver {
	case "", "userspace":
	case "kernel":
		kernelPorts = true
	default:
		return netConfig{}, fmt.Errorf("invalid --port-driver %q: use userspace or kernel", f.portDriver)
	}
	if f.udpIdleTimeout <= 0 {
		return netConfig{}, fmt.Errorf("invalid --udp-idle-timeout %s: must be positive", f.udpIdleTimeout)
	}
	if len(tapName) == 0 || len(tapName) >= 16 {
		return netConfig{}, fmt.Errorf("invalid TAP name %q: must be 1 to 15 characters", tapName)
	}
	if f.macAddress != "" {
		if !configure {
			return netConfig{}, errors.New("--macaddr cannot be specified when --configure or -c is not specified")
		}
		if hw, err := net.ParseMAC(f.macAddress); err != nil || len(hw) != 6 {
			return netConfig{}, fmt.Errorf("invalid --macaddress %q: want an Ethernet address like 02:42:ac:11:00:02", f.macAddress)
		}
	}
	outbound, err := outboundAddr(f.outboundAddr, "--outbound-addr", false)
	if err != nil {
		return netConfig{}, err
	}
	outbound6, err := outboundAddr(f.outboundAddr6, "--outbound-addr6", true)
	if err != nil {
		return netConfig{}, err
	}
	fence := stack.Fence{DenyHost: f.denyHost}
	for _, set := range []struct {
		flag string
		in   []string
		out  *[]netip.Prefix
	}{{"--deny", f.deny, &fence.Deny}, {"--allow", f.allow, &fence.Allow}} {
		for _, v := range set.in {
			p, err := netip.ParsePrefix(v)
			if err != nil {
				a, aerr := netip.ParseAddr(v)
				if aerr != nil {
					return netConfig{}, fmt.Errorf("invalid %s %q: want a CIDR such as 10.1.0.0/16 or an address", set.flag, v)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			*set.out = append(*set.out, p.Masked())
		}
	}
	for _, l := range []struct {
		flag string
		v    int
	}{{"--max-tcp-flows", f.maxTCPFlows}, {"--max-udp-flows", f.maxUDPFlows}, {"--max-syn-in-flight", f.maxSYNs}, {"--max-udp-unanswered", f.maxUDPUnanswered}} {
		if l.v < 1 {
			return netConfig{}, fmt.Errorf("invalid %s %d: must be at least 1", l.flag, l.v)
		}
	}
	network := stack.NewNetwork(prefix)
	if f.enableIPv6 {
		network = network.WithIPv6(netip.MustParsePrefix(stack.DefaultCIDR6))
	}
	var upstreams []string
	for _, u := range f.dnsUpstreams {
		addr, err := stack.ParseUpstream(u)
		if err != nil {
			return netConfig{}, err
		}
		upstreams = append(upstreams, addr)
	}
	c := netConfig{
		tap: tap.Config{
			Name:      tapName,
			MTU:       f.mtu,
			Configure: configure,
			MAC:       f.macAddress,
			Addr:      network.GuestPrefix(),
			Gateway:   network.Gateway,
		},
		stack: stack.Config{
			Network:             network,
			DisableHostLoopback: f.disableHostLoopback,
			DisableDNS:          f.disableDNS,
			DNSUpstreams:        upstreams,
			UDPIdleTimeout:      f.udpIdleTimeout,
			OutboundAddr4:       outbound,
			OutboundAddr6:       outbound6,
			Fence:               fence,
			MaxTCPFlows:         f.maxTCPFlows,
			MaxUDPFlows:         f.maxUDPFlows,
			MaxInFlightSYNs:     f.maxSYNs,
			MaxUnansweredUDP:    f.maxUDPUnanswered,
		},
		pcap:        f.pcap,
		kernelPorts: kernelPorts,
	}
	if f.enableIPv6 {
		c.tap.Addr6, c.tap.Gateway6 = network.GuestPrefix6(), network.Gateway6
	}
	return c, nil
}

// outboundAddr resolves --outbound-addr (v6 false) or --outbound-addr6: an
// address of the family, or the name of an interface whose first address of
// the family is used.
func outboundAddr(v, flag string, v6 bool) (netip.Addr, error) {
	family := "IPv4"
	if v6 {
		family = "IPv6"
	}
	if v == "" {
		return netip.Addr{}, nil
	}
	if a, err := netip.ParseAddr(v); err == nil {
		if a.Is6() != v6 {
			return netip.Addr{}, fmt.Errorf("invalid %s %q: must be an %s address or an interface name", flag, v, family)
		}
		return a, nil
	}
	ifi, err := net.InterfaceByName(v)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("invalid %s %q: neither an %s address nor an interface: %w", flag, v, family, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s %q: read its addresses: %w", flag, v, err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Unmap().Is6() == v6 && !ip.IsLinkLocalUnicast() {
				return ip.Unmap(), nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("%s %q: the interface has no %s address", flag, v, family)
}

// network is ferry's userspace network serving one namespace.
type network struct {
	tapFile *os.File
	stack   *stack.Stack
	pcap    *os.File // nil without --pcap
	// dialer opens sockets inside the namespace for --port-driver=kernel
	// (nil otherwise).
	dialer *nsenter.Dialer
	// tapReads is how frames are read from the TAP: "io_uring" (in bursts)
	// or "readv" (one per call).
	tapReads string
}

// startNetwork creates the TAP in the target's namespace and runs the stack
// on it.
func startNetwork(ctx context.Context, t nsenter.Target, c netConfig, log *slog.Logger) (*network, error) {
	q, err := nsenter.OpenTAP(ctx, t, c.tap)
	if err != nil {
		return nil, err
	}
	if q.Fallback != "" {
		log.Info("TAP offloads refused: using a plain TAP (slower)", "reason", q.Fallback)
	}
	var dialer *nsenter.Dialer
	if c.kernelPorts {
		if dialer, err = nsenter.StartDialer(ctx, t); err != nil {
			q.Close()
			return nil, err
		}
	}
	n, err := startNetworkOn(q.File, q.VNet, readRing(q.File, q.VNet, log), c, log)
	if err != nil {
		if dialer != nil {
			dialer.Close()
		}
		return nil, err
	}
	n.dialer = dialer
	return n, nil
}

// readRing returns a ring that reads the TAP's frames in bursts (made
// before a seccomp filter refuses io_uring_setup), or nil, logged, when
// the TAP has no virtio-net headers (vnet) or the kernel refused a ring.
func readRing(tapFile *os.File, vnet bool, log *slog.Logger) *tap.ReadRing {
	if !vnet {
		return nil
	}
	r, err := tap.NewReadRing(int(tapFile.Fd()))
	if err != nil {
		log.Debug("reading the TAP one frame per readv: no io_uring", "err", err)
		return nil
	}
	log.Debug("reading the TAP in bursts through io_uring")
	return r
}

// startNetworkOn runs the stack on an open TAP, which it takes over, with
// ring (which may be nil) from readRing; vnet says the TAP carries
// virtio-net headers.
func startNetworkOn(tapFile *os.File, vnet bool, ring *tap.ReadRing, c netConfig, log *slog.Logger) (*network, error) {
	oneProc()
	if len(c.stack.DNSUpstreams) == 0 && !c.stack.DisableDNS {
		up, err := stack.UpstreamsFromResolvConf("/etc/resolv.conf")
		if err != nil {
			log.Warn("no DNS upstream: DNS queries will fail; pass --dns-upstream", "err", err)
		}
		c.stack.DNSUpstreams = up
	}
	link, err := tap.NewEndpoint(int(tapFile.Fd()), uint32(c.tap.MTU), gatewayMAC(c.stack.Network), vnet, ring)
	if err != nil {
		tapFile.Close()
		return nil, err
	}
	var pcap *os.File
	if c.pcap != "" {
		if pcap, err = os.OpenFile(c.pcap, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600); err != nil {
			tapFile.Close()
			return nil, fmt.Errorf("--pcap: %w", err)
		}
		if link, err = tap.WithPcap(link, pcap); err != nil {
			pcap.Close()
			tapFile.Close()
			return nil, err
		}
	}
	c.stack.Link = link
	c.stack.Logger = log
	st, err := stack.New(c.stack)
	if err != nil {
		tapFile.Close()
		if pcap != nil {
			pcap.Close()
		}
		return nil, err
	}
	log.Debug("network up", "tap", c.tap.Name, "mtu", c.tap.MTU, "offloads", vnet,
		"network", c.stack.Network.Prefix, "gateway", c.stack.Network.Gateway, "dns", c.stack.Network.DNS)
	reads := "readv"
	if ring != nil && vnet {
		reads = "io_uring"
	}
	return &network{tapFile: tapFile, stack: st, pcap: pcap, tapReads: reads}, nil
}

// Close stops the stack and closes the TAP.
func (n *network) Close() {
	n.stack.Close()
	n.tapFile.Close()
	if n.dialer != nil {
		n.dialer.Close()
	}
	if n.pcap != nil {
		n.pcap.Close()
	}
}

// gatewayMAC is the link address of ferry's side of the TAP: 52:55 followed
// by the gateway's IPv4 address, as libslirp uses.
func gatewayMAC(n stack.Network) net.HardwareAddr {
	a := n.Gateway.As4()
	return net.HardwareAddr{0x52, 0x55, a[0], a[1], a[2], a[3]}
}

// resumeDialer takes over the port helper that the sandbox's stage 1
// started (--port-driver=kernel); on failure it closes n.
func resumeDialer(n *network) (*nsenter.Dialer, error) {
	d, err := nsenter.ResumeDialer()
	if err == nil && d == nil {
		err = errors.New("--port-driver=kernel: the port helper was not handed over to the sandbox")
	}
	if err != nil {
		n.Close()
		return nil, err
	}
	return d, nil
}

// oneProc runs ferry's Go code on one thread at a time (GOMAXPROCS=1)
// unless the GOMAXPROCS environment variable says otherwise. A frame's
// trip through ferry passes between goroutines (the TAP reader, gVisor's
// TCP processor, a flow's copier, the netpoller); with one P each pass is
// a run-queue operation on the same thread, where with several it is a
// futex wake-up of another thread, which costs more than the work itself
// on a virtual machine. Measured on the 2-core bench VM: RR latency p50
// 173 -> ~100-130 µs, published port 8.6 -> 11-12 Gbit/s at two thirds of
// the CPU per GB. Syscalls that block still leave the P to others, as Go
// does for any syscall; slirp4netns and pasta are single-threaded too.
func oneProc() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
}
