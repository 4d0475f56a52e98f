package stack

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// hostAddr translates a destination the guest asked for into the address
// ferry dials on the host. The gateway is the host's loopback; no other
// address of the virtual network is forwarded, nor anything that is not
// global unicast. ok is false for destinations that must
// not be dialed.
func (st *Stack) hostAddr(dst tcpip.Address) (addr netip.Addr, ok bool) {
	a, _ := netip.AddrFromSlice(dst.AsSlice())
	n := st.cfg.Network
	switch {
	case a == n.Gateway:
		return netip.AddrFrom4([4]byte{127, 0, 0, 1}), true
	case a.Is6() && a == n.Gateway6:
		return netip.IPv6Loopback(), true
	case !a.IsValid(), a.IsUnspecified(), a.IsMulticast(), a.IsLoopback(), a.Is6() && a.IsLinkLocalUnicast(),
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255}),
		// The virtual networks themselves (the DNS address, the broadcast
		// address, the guest's neighbours) are never dialed on the host,
		// where the same ranges may be real networks.
		n.Prefix.Contains(a), n.Prefix6.IsValid() && n.Prefix6.Contains(a):
		return netip.Addr{}, false
	}
	return a, true
}
