package bridge

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/ferrynet/ferry/portspec"
)

// choosePorts turns parsed -p mappings into published ports with their
// host ports chosen: a given port must be free, a range yields its first
// free port, and 0 yields a free ephemeral port. A port is free when no
// ferry network publishes it on an overlapping address and it can be bound
// on the host.
func choosePorts(st *state, ms []portspec.Mapping) ([]PublishedPort, error) {
	var out []PublishedPort
	taken := func(p PublishedPort) bool {
		for _, q := range out {
			if conflict(p, q) {
				return true
			}
		}
		for _, n := range st.Networks {
			for _, a := range n.Attachments {
				for _, q := range a.Ports {
					if conflict(p, q) {
						return true
					}
				}
			}
		}
		return false
	}
	for _, m := range ms {
		v4, _ := m.Families()
		if !v4 {
			return nil, fmt.Errorf("publish %s: IPv6 host addresses need an IPv6 network, which this version of ferry net does not make yet: publish on an IPv4 address", m)
		}
		p := PublishedPort{Proto: m.Proto, HostIP: m.HostIP, GuestPort: m.GuestPort}
		switch {
		case m.HostPort == 0:
			var err error
			for range 100 {
				if p.HostPort, err = ephemeralPort(p); err != nil {
					return nil, err
				}
				if !taken(p) {
					break
				}
				p.HostPort = 0
			}
			if p.HostPort == 0 {
				return nil, fmt.Errorf("publish %s: no free host port found", m)
			}
		default:
			end := max(m.HostPortEnd, m.HostPort)
			var lastErr error
			for port := int(m.HostPort); port <= int(end); port++ {
				p.HostPort = uint16(port)
				if taken(p) {
					lastErr = fmt.Errorf("publish %s: host port %d/%s is already published by a ferry network: choose another", m, port, m.Proto)
					continue
				}
				if err := bindable(p); err != nil {
					lastErr = fmt.Errorf("publish %s: host port %d/%s is in use on the host (%v): choose another", m, port, m.Proto, err)
					continue
				}
				lastErr = nil
				break
			}
			if lastErr != nil {
				return nil, lastErr
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// conflict reports whether p and q publish the same host port.
func conflict(p, q PublishedPort) bool {
	if p.Proto != q.Proto || p.HostPort != q.HostPort {
		return false
	}
	any := func(a netip.Addr) bool { return !a.IsValid() || a.IsUnspecified() }
	return any(p.HostIP) || any(q.HostIP) || p.HostIP == q.HostIP
}

func hostAddr(p PublishedPort, port uint16) string {
	ip := "0.0.0.0"
	if p.HostIP.IsValid() {
		ip = p.HostIP.String()
	}
	return net.JoinHostPort(ip, strconv.Itoa(int(port)))
}

// bindable checks that the host port of p can be bound.
func bindable(p PublishedPort) error {
	if p.Proto == portspec.UDP {
		c, err := net.ListenPacket("udp4", hostAddr(p, p.HostPort))
		if err != nil {
			return err
		}
		return c.Close()
	}
	l, err := net.Listen("tcp4", hostAddr(p, p.HostPort))
	if err != nil {
		return err
	}
	return l.Close()
}

// ephemeralPort asks the kernel for a free port of p's protocol.
func ephemeralPort(p PublishedPort) (uint16, error) {
	if p.Proto == portspec.UDP {
		c, err := net.ListenPacket("udp4", hostAddr(p, 0))
		if err != nil {
			return 0, fmt.Errorf("choose a host port: %w", err)
		}
		defer c.Close()
		return uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
	}
	l, err := net.Listen("tcp4", hostAddr(p, 0))
	if err != nil {
		return 0, fmt.Errorf("choose a host port: %w", err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port), nil
}
