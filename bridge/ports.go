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
// on the host. A port on an IPv6 address needs a dual-stack network (v6);
// one on no address in particular is published on both families there.
func choosePorts(st *state, ms []portspec.Mapping, v6 bool) ([]PublishedPort, error) {
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
		if v4, _ := m.Families(); !v4 {
			switch {
			case !v6:
				return nil, fmt.Errorf("publish %s: IPv6 host addresses need a dual-stack network (ferry net create --ipv6): publish on an IPv4 address", m)
			case m.HostIP.IsLoopback():
				return nil, fmt.Errorf("publish %s: ::1 cannot be forwarded without a userland proxy, which ferry net does not run: publish on [::] or an address of the host", m)
			}
		}
		p := PublishedPort{Proto: m.Proto, HostIP: m.HostIP, GuestPort: m.GuestPort}
		both := v6 && !m.HostIP.IsValid()
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
				if err := bindable(p, both); err != nil {
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

// conflict reports whether p and q publish the same host port: same
// protocol and port, on addresses that overlap. A port on no address in
// particular covers both families, though a ferry network publishes it
// on IPv4 only unless it is dual stack.
func conflict(p, q PublishedPort) bool {
	if p.Proto != q.Proto || p.HostPort != q.HostPort {
		return false
	}
	any := func(a netip.Addr) bool { return !a.IsValid() || a.IsUnspecified() }
	sameFamily := !p.HostIP.IsValid() || !q.HostIP.IsValid() || p.HostIP.Is4() == q.HostIP.Is4()
	return sameFamily && (any(p.HostIP) || any(q.HostIP) || p.HostIP == q.HostIP)
}

// hostAddr is the address p is bound to on the host with port: its
// HostIP, else 0.0.0.0, or [::] when v6.
func hostAddr(p PublishedPort, port uint16, v6 bool) string {
	ip := "0.0.0.0"
	switch {
	case p.HostIP.IsValid():
		ip = p.HostIP.String()
	case v6:
		ip = "::"
	}
	return net.JoinHostPort(ip, strconv.Itoa(int(port)))
}

// netFor is the network name of p's protocol and family for net.Listen.
func netFor(p PublishedPort, v6 bool) string {
	if p.HostIP.IsValid() {
		v6 = p.HostIP.Is6()
	}
	n := string(p.Proto)
	if v6 {
		return n + "6"
	}
	return n + "4"
}

// bindable checks that the host port of p can be bound, on IPv6 too when
// p is published on both families.
func bindable(p PublishedPort, both bool) error {
	fams := []bool{false}
	if both {
		fams = append(fams, true)
	}
	if p.HostIP.IsValid() {
		fams = []bool{p.HostIP.Is6()}
	}
	for _, v6 := range fams {
		if p.Proto == portspec.UDP {
			c, err := net.ListenPacket(netFor(p, v6), hostAddr(p, p.HostPort, v6))
			if err != nil {
				return err
			}
			c.Close()
			continue
		}
		l, err := net.Listen(netFor(p, v6), hostAddr(p, p.HostPort, v6))
		if err != nil {
			return err
		}
		l.Close()
	}
	return nil
}

// ephemeralPort asks the kernel for a free port of p's protocol.
func ephemeralPort(p PublishedPort) (uint16, error) {
	if p.Proto == portspec.UDP {
		c, err := net.ListenPacket(netFor(p, false), hostAddr(p, 0, false))
		if err != nil {
			return 0, fmt.Errorf("choose a host port: %w", err)
		}
		defer c.Close()
		return uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
	}
	l, err := net.Listen(netFor(p, false), hostAddr(p, 0, false))
	if err != nil {
		return 0, fmt.Errorf("choose a host port: %w", err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port), nil
}
