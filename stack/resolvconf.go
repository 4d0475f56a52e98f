package stack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// UpstreamsFromResolvConf returns the nameservers listed in the resolv.conf
// file at path as "host:53" addresses, in file order. IPv6 addresses are
// bracketed and keep their zone, as in "[fe80::1%eth0]:53".
//
// As in the C library, lines starting with '#' or ';' are comments, and
// nameserver lines whose address does not parse are ignored. It is an error
// for the file to list no usable nameserver.
func UpstreamsFromResolvConf(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading resolv.conf: %w", err)
	}
	var upstreams []string
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		addr, err := parseNameserverAddr(f[1])
		if err != nil {
			continue
		}
		upstreams = append(upstreams, net.JoinHostPort(addr.String(), "53"))
	}
	if len(upstreams) == 0 {
		return nil, fmt.Errorf("no nameservers in %s", path)
	}
	return upstreams, nil
}

// ParseUpstream parses the value of a DNS upstream flag, "ADDR",
// "ADDR:PORT", "[IPV6]" or "[IPV6]:PORT" where ADDR is an IPv4 or IPv6
// address (an IPv6 address may carry a zone, as in "fe80::1%eth0"), and
// returns it as a "host:port" address. The port defaults to 53.
func ParseUpstream(s string) (string, error) {
	addr, port, err := parseUpstream(s)
	if err != nil {
		return "", fmt.Errorf("invalid DNS upstream %q: %w", s, err)
	}
	return net.JoinHostPort(addr.String(), strconv.Itoa(int(port))), nil
}

// parseUpstream does the work of ParseUpstream.
func parseUpstream(s string) (netip.Addr, uint16, error) {
	switch {
	case s == "":
		return netip.Addr{}, 0, errors.New("empty address")
	case strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]"):
		addr, err := parseUpstreamIPv6(s[1 : len(s)-1])
		return addr, 53, err
	case !strings.HasPrefix(s, "[") && strings.Count(s, ":") != 1:
		// No port: an IPv4 address has no colon, an IPv6 one several.
		addr, err := parseNameserverAddr(s)
		return addr, 53, err
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	var addr netip.Addr
	if strings.HasPrefix(s, "[") {
		addr, err = parseUpstreamIPv6(host)
	} else {
		addr, err = parseNameserverAddr(host)
	}
	if err != nil {
		return netip.Addr{}, 0, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return netip.Addr{}, 0, fmt.Errorf("invalid port %q", portStr)
	}
	return addr, uint16(port), nil
}

// parseUpstreamIPv6 is like parseNameserverAddr but accepts only IPv6 addresses,
// as found between brackets.
func parseUpstreamIPv6(s string) (netip.Addr, error) {
	addr, err := parseNameserverAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	if !addr.Is6() {
		return netip.Addr{}, fmt.Errorf("%s in brackets is not an IPv6 address", addr)
	}
	return addr, nil
}

// parseNameserverAddr parses s as an IP address. Unlike netip.ParseAddr,
// it accepts only zones that could name a network interface, so that the
// address can be written unambiguously in "[host%zone]:port" form.
func parseNameserverAddr(s string) (netip.Addr, error) {
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	if zone := addr.Zone(); zone != "" && !validUpstreamZone(zone) {
		return netip.Addr{}, fmt.Errorf("invalid zone %q in address %q", zone, s)
	}
	return addr, nil
}

// validUpstreamZone reports whether zone is a plausible network interface name or
// index: at most 15 printable ASCII characters, none of them a space or
// one of "/:%[]".
func validUpstreamZone(zone string) bool {
	if len(zone) > 15 {
		return false
	}
	for _, c := range []byte(zone) {
		if c <= ' ' || c >= 0x7f || strings.IndexByte("/:%[]", c) >= 0 {
			return false
		}
	}
	return true
}
