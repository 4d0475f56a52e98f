package stack

import (
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// metadataAddr is the cloud metadata service, which a guest must not reach
// unless allowed: it hands out the host's credentials on many clouds.
var metadataAddr = netip.MustParsePrefix("169.254.169.254/32")

// Fence says which outside destinations the guest may reach. The zero
// Fence allows everything but the metadata address.
type Fence struct {
	// DenyHost refuses every address of the host, not only its loopback.
	DenyHost bool
	// Deny and Allow fence destinations: a destination in Deny (or the
	// metadata address) is refused unless it is also in Allow, where the
	// longer prefix wins.
	Deny, Allow []netip.Prefix
}

// hostAddrs lists the addresses of ferry's own network namespace.
func hostAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
				out[ip.Unmap()] = true
			}
		}
	}
	return out
}

// denied reports whether a dial to a (a host address, after translation)
// is fenced off.
func (st *Stack) denied(a netip.Addr) bool {
	f := st.cfg.Fence
	if f.DenyHost && (a.IsLoopback() || st.hostAddrs[a]) {
		return true
	}
	best, deny := -1, false
	for _, p := range f.Deny {
		if p.Contains(a) && p.Bits() > best {
			best, deny = p.Bits(), true
		}
	}
	if metadataAddr.Contains(a) && best < 32 {
		best, deny = 32, true
	}
	for _, p := range f.Allow {
		if p.Contains(a) && p.Bits() >= best {
			best, deny = p.Bits(), false
		}
	}
	return deny
}

// guard wraps a forwarder's packet handler with the policy that applies
// before any flow is opened: the gateway, when the host's loopback is
// disabled, answers "network unreachable" as slirp4netns does, and fenced
// destinations "administratively prohibited"; neither reaches the
// forwarder.
func (st *Stack) guard(next packetHandler) packetHandler {
	n := st.cfg.Network
	return func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
		dst := addrOf(id.LocalAddress)
		if dst == n.Gateway || (n.IPv6() && dst == n.Gateway6) {
			if st.cfg.DisableHostLoopback {
				st.counters.drop(DropLoopback)
				st.sendUnreachable(pkt, header.ICMPv4NetUnreachable, header.ICMPv6NetworkUnreachable)
				return true
			}
		}
		if a, ok := st.hostAddr(id.LocalAddress); ok && st.denied(a) {
			if st.counters.drop(DropDenied) {
				st.log.Info("refused a fenced destination (logged at most every 10s)", "dst", a)
			}
			st.sendUnreachable(pkt, header.ICMPv4AdminProhibited, header.ICMPv6Policy)
			return true
		}
		return next(id, pkt)
	}
}
