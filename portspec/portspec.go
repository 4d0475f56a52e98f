// Package portspec parses and validates Docker's -p/--publish grammar, the
// strings that say which container ports to publish on which host addresses
// and ports:
//
//	[[hostIP:][hostPort]:]containerPort[/proto]
//
// containerPort and hostPort may each be a single port ("80") or an inclusive
// range ("8000-8010"). An IPv6 hostIP must be written in brackets
// ("[::1]:8080:80"). proto is "tcp" (the default) or "udp". Examples:
//
//	80                     container port 80 on any free host port
//	8080:80                host port 8080 to container port 80
//	127.0.0.1::80          any free host port on 127.0.0.1
//	[::1]:8080:80/udp      UDP on the IPv6 loopback address
//	8000-8010:8000-8010    eleven mappings, one per port
//	8000-8010:80           one mapping: any free host port in 8000-8010
//	80-82                  three mappings, each on any free host port
//
// The package is pure: it does no I/O and holds no state.
package portspec

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Proto is a transport protocol a port is published for: TCP or UDP.
type Proto string

// The protocols a port can be published for.
const (
	// TCP is the default protocol, used when a spec has no "/proto" suffix.
	TCP Proto = "tcp"
	// UDP is selected by the "/udp" suffix.
	UDP Proto = "udp"
)

// Mapping is one published port: traffic to HostIP:HostPort (or to one port
// of HostPort..HostPortEnd) is forwarded to GuestPort in the container.
type Mapping struct {
	// Proto is the transport protocol, TCP or UDP.
	Proto Proto

	// HostIP is the host address to listen on. The zero (invalid) Addr means
	// no address was given: listen on all IPv4 and all IPv6 addresses, as
	// Docker binds both 0.0.0.0 and [::]. An explicit 0.0.0.0 means all IPv4
	// addresses only, an explicit :: all IPv6 addresses only. Parse never
	// returns a zone or an IPv4-mapped IPv6 address (those are unmapped to
	// plain IPv4, as Docker treats them).
	HostIP netip.Addr

	// HostPort is the first host port to try; 0 means any free port.
	HostPort uint16

	// HostPortEnd equals HostPort for a single port (and is 0 when HostPort
	// is 0). It is greater than HostPort when a range of host ports was
	// given for one container port: one free port in HostPort..HostPortEnd
	// is to be picked.
	HostPortEnd uint16

	// GuestPort is the container port, 1-65535.
	GuestPort uint16
}

// Parse parses one -p/--publish value into the mappings it describes, one
// per container port, in increasing container port order. Every error names
// spec and says what is wrong with it.
func Parse(spec string) ([]Mapping, error) {
	ms, err := parse(spec)
	if err != nil {
		return nil, fmt.Errorf("invalid publish spec %q: %w", spec, err)
	}
	return ms, nil
}

// String returns m in the canonical spec form, such as
// "127.0.0.1:8080:80/tcp", "[::1]:8000-8010:80/udp", "127.0.0.1::80/tcp" or
// "80/tcp". For any mapping returned by Parse, Parse(m.String()) returns
// exactly []Mapping{m}.
func (m Mapping) String() string {
	var b strings.Builder
	if m.HostIP.IsValid() {
		if m.HostIP.Is4() {
			b.WriteString(m.HostIP.String())
		} else {
			b.WriteByte('[')
			b.WriteString(m.HostIP.String())
			b.WriteByte(']')
		}
		b.WriteByte(':')
		if m.HostPort != 0 {
			b.WriteString(portRange(m.HostPort, max(m.HostPort, m.HostPortEnd)))
		}
		b.WriteByte(':')
	} else if m.HostPort != 0 {
		b.WriteString(portRange(m.HostPort, max(m.HostPort, m.HostPortEnd)))
		b.WriteByte(':')
	}
	b.WriteString(strconv.Itoa(int(m.GuestPort)))
	b.WriteByte('/')
	b.WriteString(string(m.Proto))
	return b.String()
}

// Families reports which address families a mapping listens on: v4 for
// IPv4, v6 for IPv6. Without a HostIP it is both; with one, the family of
// that address (an IPv4-mapped IPv6 address counts as IPv4).
func (m Mapping) Families() (v4, v6 bool) {
	switch {
	case !m.HostIP.IsValid():
		return true, true
	case m.HostIP.Unmap().Is4():
		return true, false
	default:
		return false, true
	}
}

// portRange formats lo..hi as "lo" or "lo-hi".
func portRange(lo, hi uint16) string {
	if lo == hi {
		return strconv.Itoa(int(lo))
	}
	return strconv.Itoa(int(lo)) + "-" + strconv.Itoa(int(hi))
}
