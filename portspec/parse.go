package portspec

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// parse does the work of Parse; its errors lack the spec context.
func parse(spec string) ([]Mapping, error) {
	if spec == "" {
		return nil, errors.New("empty")
	}
	ip, hostStr, guestStr, err := split(spec)
	if err != nil {
		return nil, err
	}
	guestStr, protoStr, _ := strings.Cut(guestStr, "/")
	if guestStr == "" {
		return nil, errors.New("missing container port")
	}

	var hostLo, hostHi uint16
	if hostStr != "" {
		if hostLo, hostHi, err = parseRange(hostStr, true); err != nil {
			return nil, err
		}
	}
	guestLo, guestHi, err := parseRange(guestStr, false)
	if err != nil {
		return nil, err
	}
	proto, err := parseProto(protoStr)
	if err != nil {
		return nil, err
	}

	guestN := int(guestHi) - int(guestLo) + 1
	if guestN == 1 {
		// A host range for a single container port: pick one of them.
		return []Mapping{{
			Proto: proto, HostIP: ip,
			HostPort: hostLo, HostPortEnd: hostHi,
			GuestPort: guestLo,
		}}, nil
	}
	hostN := int(hostHi) - int(hostLo) + 1
	if hostStr != "" && hostN != guestN {
		return nil, fmt.Errorf("port ranges don't match: host %s (%s), container %s (%s)",
			portRange(hostLo, hostHi), plural(hostN), portRange(guestLo, guestHi), plural(guestN))
	}
	ms := make([]Mapping, guestN)
	for i := range ms {
		m := Mapping{Proto: proto, HostIP: ip, GuestPort: guestLo + uint16(i)}
		if hostStr != "" {
			m.HostPort = hostLo + uint16(i)
			m.HostPortEnd = m.HostPort
		}
		ms[i] = m
	}
	return ms, nil
}

// split splits spec into its host IP (zero if none), host port part (empty
// if none) and container port part (with any "/proto" suffix).
func split(spec string) (ip netip.Addr, host, guest string, err error) {
	if rest, ok := strings.CutPrefix(spec, "["); ok {
		addr, rest, ok := strings.Cut(rest, "]")
		if !ok {
			return ip, "", "", errors.New("missing ']' after bracketed host IP")
		}
		if ip, err = parseHostIP(addr); err != nil {
			return ip, "", "", err
		}
		ports, ok := strings.CutPrefix(rest, ":")
		if !ok {
			return ip, "", "", fmt.Errorf("expected ':' after host IP [%s]", addr)
		}
		host, guest, ok = strings.Cut(ports, ":")
		if !ok {
			return ip, "", "", fmt.Errorf("host IP [%s] must be followed by a host port and a container port "+
				"(e.g. [%[1]s]:8080:80, or [%[1]s]::80 for any free host port)", addr)
		}
		if strings.Contains(guest, ":") {
			return ip, "", "", errors.New("too many colons")
		}
		return ip, host, guest, nil
	}

	parts := strings.Split(spec, ":")
	switch n := len(parts); n {
	case 1:
		return ip, "", parts[0], nil
	case 2:
		return ip, parts[0], parts[1], nil
	case 3:
		if parts[0] != "" {
			if ip, err = parseHostIP(parts[0]); err != nil {
				return ip, "", "", err
			}
		}
		return ip, parts[1], parts[2], nil
	default:
		addr := strings.Join(parts[:n-2], ":")
		if a, err := netip.ParseAddr(addr); err == nil && a.Is6() {
			return ip, "", "", fmt.Errorf("too many colons (an IPv6 host IP must be in brackets: %q)",
				"["+addr+"]:"+parts[n-2]+":"+parts[n-1])
		}
		return ip, "", "", errors.New("too many colons")
	}
}

// parseHostIP parses a host address given without brackets.
func parseHostIP(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, errors.New(`invalid host IP "": empty address in brackets`)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		// Drop netip's `ParseAddr("s"): ` prefix; we quote s ourselves.
		msg := strings.TrimPrefix(err.Error(), "ParseAddr("+strconv.Quote(s)+"): ")
		return netip.Addr{}, fmt.Errorf("invalid host IP %q: %s", s, msg)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("invalid host IP %q: zones are not supported", s)
	}
	return a.Unmap(), nil
}

// parseRange parses "port" or "lo-hi". A lone host port may be 0 (any free
// port); otherwise ports are 1-65535.
func parseRange(s string, hostPort bool) (lo, hi uint16, err error) {
	loStr, hiStr, isRange := strings.Cut(s, "-")
	if !isRange {
		p, err := parsePort(s, hostPort)
		return p, p, err
	}
	switch {
	case loStr == "":
		return 0, 0, fmt.Errorf("invalid port range %q: missing start port", s)
	case hiStr == "":
		return 0, 0, fmt.Errorf("invalid port range %q: missing end port", s)
	case strings.Contains(hiStr, "-"):
		return 0, 0, fmt.Errorf("invalid port range %q: too many '-'", s)
	}
	if lo, err = parsePort(loStr, false); err != nil {
		return 0, 0, err
	}
	if hi, err = parsePort(hiStr, false); err != nil {
		return 0, 0, err
	}
	if hi < lo {
		return 0, 0, fmt.Errorf("invalid port range %q: end is before start", s)
	}
	return lo, hi, nil
}

// parsePort parses a decimal port number (leading zeros allowed, as Docker
// allows them) in 1-65535, or 0 if allowZero.
func parsePort(s string, allowZero bool) (uint16, error) {
	if s == "" {
		return 0, errors.New("missing port")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("invalid port %q: not a number", s)
		}
	}
	n := 0
	if digits := strings.TrimLeft(s, "0"); len(digits) > 5 {
		n = -1 // too large for a port
	} else if digits != "" {
		n, _ = strconv.Atoi(digits) // at most 5 digits: cannot fail
	}
	if n < 0 || n > 65535 || (n == 0 && !allowZero) {
		return 0, fmt.Errorf("invalid port %q: must be 1-65535", s)
	}
	return uint16(n), nil
}

// parseProto parses the "/proto" suffix; empty means TCP, as in Docker.
func parseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "", "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "sctp":
		return "", fmt.Errorf("invalid proto %q: not supported (use tcp or udp)", s)
	default:
		return "", fmt.Errorf("invalid proto %q: must be tcp or udp", s)
	}
}

// plural formats a port count: "1 port", "3 ports".
func plural(n int) string {
	if n == 1 {
		return "1 port"
	}
	return strconv.Itoa(n) + " ports"
}
