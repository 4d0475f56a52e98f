package forward

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/ferrynet/ferry/portspec"
)

// unprivilegedPortStart is where the sysctl's value is read from; a
// variable for tests.
var unprivilegedPortStart = "/proc/sys/net/ipv4/ip_unprivileged_port_start"

// listener is a bound host socket: a net.Listener for TCP, a *net.UDPConn
// for UDP.
type listener interface {
	Close() error
}

// listen binds proto on addr:port (port 0: any free port) for one address
// family only, and returns the socket and the port bound.
func listen(proto portspec.Proto, addr netip.Addr, port uint16) (listener, uint16, error) {
	network := string(proto) + "4"
	if !addr.Is4() {
		network = string(proto) + "6" // Go sets IPV6_V6ONLY for tcp6 and udp6
	}
	hostPort := net.JoinHostPort(addr.String(), strconv.Itoa(int(port)))
	switch proto {
	case portspec.UDP:
		c, err := net.ListenPacket(network, hostPort)
		if err != nil {
			return nil, 0, listenError(proto, addr, port, err)
		}
		return c, uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
	default:
		l, err := net.Listen(network, hostPort)
		if err != nil {
			return nil, 0, listenError(proto, addr, port, err)
		}
		return l, uint16(l.Addr().(*net.TCPAddr).Port), nil
	}
}

// listenError turns a bind failure into a sentence that says what to do.
func listenError(proto portspec.Proto, addr netip.Addr, port uint16, err error) error {
	where := netip.AddrPortFrom(addr, port).String()
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return &inUseError{where: where, proto: proto}
	case errors.Is(err, syscall.EACCES):
		// EACCES on bind means a privileged port. Inside the sandbox /proc
		// is gone (and ferry is root of the guest's user namespace, not
		// the host's): fall back to the kernel's default.
		start, ok := readUnprivilegedPortStart()
		now := fmt.Sprintf("now %d", start)
		if !ok {
			start, now = 1024, "1024 by default"
		}
		if int(port) < start {
			return fmt.Errorf("cannot publish %s/%s: port %d is privileged: ports below %d need root; publish a higher port, or lower the sysctl net.ipv4.ip_unprivileged_port_start (%s)",
				where, proto, port, start, now)
		}
		return fmt.Errorf("cannot publish %s/%s: %w", where, proto, err)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("cannot publish %s/%s: %s is not an address of this host (see 'ip address'); use one of its addresses, or leave the address out", where, proto, addr)
	case errors.Is(err, syscall.EAFNOSUPPORT):
		return &noFamilyError{fmt.Errorf("cannot publish %s/%s: the host does not support IPv6", where, proto)}
	}
	return fmt.Errorf("cannot publish %s/%s: %w", where, proto, err)
}

// inUseError is a host port some other socket holds.
type inUseError struct {
	where string
	proto portspec.Proto
}

func (e *inUseError) Error() string {
	return fmt.Sprintf("%s is already in use (%s): publish another host port, or leave the port out for a free one", e.where, e.proto)
}

// noFamilyError is an address family the host lacks.
type noFamilyError struct{ error }

func (e *noFamilyError) Unwrap() error { return e.error }

// readUnprivilegedPortStart reads net.ipv4.ip_unprivileged_port_start.
func readUnprivilegedPortStart() (int, bool) {
	b, err := os.ReadFile(unprivilegedPortStart)
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return n, err == nil
}
