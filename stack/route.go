package stack

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// hostAddr translates a destination the guest asked for into the address
// ferry dials on the host. The gateway is the host's loopback; the DNS
// address and the network's own broadcast addresses are not forwarded, nor
// is anything that is not unicast. ok is false for destinations that must
// not be dialed.
func (st *Stack) hostAddr(dst tcpip.Address) (addr netip.Addr, ok bool) {
	a, _ := netip.AddrFromSlice(dst.AsSlice())
	n := st.cfg.Network
	switch {
	case a == n.Gateway:
		return netip.AddrFrom4([4]byte{127, 0, 0, 1}), true
	case a == n.DNS, !a.IsValid(), a.IsUnspecified(), a.IsMulticast(), a.IsLoopback(),
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255}), a == lastAddr(n.Prefix):
		return netip.Addr{}, false
	}
	return a, true
}

// lastAddr is the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	bits := p.Bits()
	for i := range 4 {
		for j := range 8 {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	return netip.AddrFrom4(b)
}
