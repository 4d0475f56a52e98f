package bridge

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
)

// candidateSubnets are the private ranges a network without --subnet may
// get, in Docker's order: 172.17/16 to 172.31/16, then 192.168.0/20 to
// 192.168.240/20.
func candidateSubnets() []netip.Prefix {
	var out []netip.Prefix
	for b := 17; b <= 31; b++ {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(b), 0, 0}), 16))
	}
	for c := 0; c < 256; c += 16 {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(c), 0}), 20))
	}
	return out
}

// pickSubnet returns the first candidate that overlaps neither a route in
// use (routed) nor a ferry network's subnet (taken).
func pickSubnet(routed, taken []netip.Prefix) (netip.Prefix, error) {
	for _, c := range candidateSubnets() {
		if !overlapsAny(c, routed) && !overlapsAny(c, taken) {
			return c, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no free private subnet left (172.17-31.0.0/16 and 192.168.0.0/16 are all routed or taken): give one with --subnet")
}

func overlapsAny(p netip.Prefix, set []netip.Prefix) bool {
	for _, q := range set {
		if p.Overlaps(q) {
			return true
		}
	}
	return false
}

// firstHost is the first usable address of p (the gateway by default).
func firstHost(p netip.Prefix) netip.Addr {
	return p.Masked().Addr().Next()
}

// broadcast is the last address of an IPv4 prefix.
func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	bits := p.Bits()
	for i := range 4 {
		for j := range 8 {
			if i*8+j >= bits {
				a[i] |= 0x80 >> j
			}
		}
	}
	return netip.AddrFrom4(a)
}

// pickSubnet6 returns a random unique local /64 (fdXX:XXXX:XXXX::/64, a
// random global ID as RFC 4193 says) that overlaps nothing in routed or
// taken.
func pickSubnet6(routed, taken []netip.Prefix) (netip.Prefix, error) {
	for range 100 {
		var b [16]byte
		rand.Read(b[1:6])
		b[0] = 0xfd
		p := netip.PrefixFrom(netip.AddrFrom16(b), 64)
		if !overlapsAny(p, routed) && !overlapsAny(p, taken) {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no free IPv6 subnet found: give one with --subnet")
}

// allocate6 returns the first address of n's IPv6 subnet, from ::2 on,
// that is neither its gateway nor used by an attachment.
func allocate6(n *Network) (netip.Addr, error) {
	used := map[netip.Addr]bool{n.Gateway6: true}
	for _, a := range n.Attachments {
		used[a.IP6] = true
	}
	a := n.Subnet6.Addr().Next()
	for range 1 << 16 {
		if a = a.Next(); !n.Subnet6.Contains(a) {
			break
		}
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("network %s: no free IPv6 address left in %s: disconnect a namespace or create a larger network", n.Name, n.Subnet6)
}

// checkStatic6 validates an address asked for with --ip6.
func checkStatic6(n *Network, ip netip.Addr) error {
	switch {
	case !n.IPv6():
		return fmt.Errorf("--ip6 %s: network %s has no IPv6 subnet (create it with --ipv6)", ip, n.Name)
	case !n.Subnet6.Contains(ip):
		return fmt.Errorf("--ip6 %s is outside network %s's IPv6 subnet %s", ip, n.Name, n.Subnet6)
	case ip == n.Gateway6 || ip == n.Subnet6.Addr():
		return fmt.Errorf("--ip6 %s is network %s's subnet-router or gateway address: choose another", ip, n.Name)
	}
	for _, a := range n.Attachments {
		if a.IP6 == ip {
			return fmt.Errorf("--ip6 %s is already in use on network %s: choose another", ip, n.Name)
		}
	}
	return nil
}

// allocate returns the first address of n's range (its --ip-range, else
// its subnet) that is neither the network, broadcast or gateway address nor
// used by an attachment.
func allocate(n *Network) (netip.Addr, error) {
	used := map[netip.Addr]bool{n.Gateway: true, n.Subnet.Masked().Addr(): true, broadcast(n.Subnet): true}
	for _, a := range n.Attachments {
		used[a.IP] = true
	}
	r := n.Subnet
	if n.IPRange.IsValid() {
		r = n.IPRange
	}
	for a := r.Masked().Addr(); r.Contains(a); a = a.Next() {
		if !used[a] && n.Subnet.Contains(a) {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("network %s: no free address left in %s: disconnect a namespace or create a larger network", n.Name, r)
}

// checkStatic validates an address asked for with --ip.
func checkStatic(n *Network, ip netip.Addr) error {
	switch {
	case !n.Subnet.Contains(ip):
		return fmt.Errorf("--ip %s is outside network %s's subnet %s", ip, n.Name, n.Subnet)
	case ip == n.Gateway || ip == n.Subnet.Masked().Addr() || ip == broadcast(n.Subnet):
		return fmt.Errorf("--ip %s is network %s's network, gateway or broadcast address: choose another", ip, n.Name)
	}
	for _, a := range n.Attachments {
		if a.IP == ip {
			return fmt.Errorf("--ip %s is already in use on network %s: choose another", ip, n.Name)
		}
	}
	return nil
}

// macFor derives a locally administered MAC address from an IPv4 address,
// as Docker does (02:42 followed by the address).
func macFor(ip netip.Addr) net.HardwareAddr {
	b := ip.As4()
	return net.HardwareAddr{0x02, 0x42, b[0], b[1], b[2], b[3]}
}
