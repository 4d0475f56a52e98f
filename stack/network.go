package stack

import (
	"errors"
	"fmt"
	"net/netip"
)

// Network is the virtual network's addressing, derived from its prefix the
// way slirp4netns derives it.
type Network struct {
	// Prefix is the whole network, e.g. 10.0.2.0/24.
	Prefix netip.Prefix
	// Gateway is network+2: ferry itself, and the host's loopback.
	Gateway netip.Addr
	// DNS is network+3: the DNS forwarder.
	DNS netip.Addr
	// Guest is network+100: the address recommended for the namespace.
	Guest netip.Addr

	// Prefix6 is the IPv6 network, invalid when IPv6 is off; Gateway6,
	// DNS6 and Guest6 are its ::2, ::3 and ::100 (hexadecimal, as in
	// slirp4netns).
	Prefix6                netip.Prefix
	Gateway6, DNS6, Guest6 netip.Addr
}

// DefaultCIDR6 is the IPv6 network of --enable-ipv6, as in slirp4netns.
const DefaultCIDR6 = "fd00::/64"

// WithIPv6 returns n with IPv6 on, on the /64 p.
func (n Network) WithIPv6(p netip.Prefix) Network {
	base := p.Masked().Addr().As16()
	at := func(suffix uint16) netip.Addr {
		b := base
		b[14], b[15] = byte(suffix>>8), byte(suffix)
		return netip.AddrFrom16(b)
	}
	n.Prefix6 = p.Masked()
	n.Gateway6, n.DNS6, n.Guest6 = at(0x2), at(0x3), at(0x100)
	return n
}

// IPv6 reports whether the network has IPv6.
func (n Network) IPv6() bool { return n.Prefix6.IsValid() }

// GuestPrefix6 is the guest's IPv6 address with the prefix length.
func (n Network) GuestPrefix6() netip.Prefix {
	return netip.PrefixFrom(n.Guest6, n.Prefix6.Bits())
}

// DefaultCIDR is the network used when none is given.
const DefaultCIDR = "10.0.2.0/24"

// NewNetwork derives a Network from a prefix accepted by ParseCIDR.
func NewNetwork(p netip.Prefix) Network {
	return Network{
		Prefix:  p,
		Gateway: addrAdd(p.Addr(), 2),
		DNS:     addrAdd(p.Addr(), 3),
		Guest:   addrAdd(p.Addr(), 100),
	}
}

// GuestPrefix is the guest's address with the network's prefix length.
func (n Network) GuestPrefix() netip.Prefix {
	return netip.PrefixFrom(n.Guest, n.Prefix.Bits())
}

// addrAdd returns the IPv4 address n after a.
func addrAdd(a netip.Addr, n uint32) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ParseCIDR parses the IPv4 network of --cidr. It must be a network address
// with a prefix length of 1 to 25, so that network+100 lies inside it. The
// messages are slirp4netns's, which callers and their tests look for.
func ParseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR: %q", s)
	}
	if p.Bits() < 1 || p.Bits() > 25 {
		return netip.Prefix{}, errors.New("prefix length needs to be 1-25")
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("CIDR needs to be a network address like %s, not like %s", p.Masked(), s)
	}
	return p, nil
}
