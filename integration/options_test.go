package integration

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// TestOutboundAddr checks that host sockets bind to --outbound-addr: a
// server on the host's loopback sees it as the source.
func TestOutboundAddr(t *testing.T) {
	w := newWorld(t, time.Minute)
	l, err := nstest.ListenIn(w.host.Path, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "%s\n", host)
			c.Close()
		}
	}()
	w.attach(t, "-c", "--outbound-addr=127.0.0.2")
	port := l.Addr().(*net.TCPAddr).Port
	res := w.mustInGuest(t, "socat", "-T", "5", "-", fmt.Sprintf("TCP:10.0.2.2:%d", port))
	if got := strings.TrimSpace(res.Stdout); got != "127.0.0.2" {
		t.Errorf("server saw source %q, want 127.0.0.2", got)
	}
}

// TestLinkOptions checks that --macaddress, --mtu and --cidr show in the
// guest's configuration.
func TestLinkOptions(t *testing.T) {
	w := newWorld(t, time.Minute)
	w.attach(t, "-c", "--macaddress", "02:42:ac:11:00:99", "--mtu", "9000", "--cidr", "10.0.135.128/25")
	link := w.mustInGuest(t, "ip", "-o", "link", "show", "tap0").Stdout
	for _, want := range []string{"mtu 9000", "link/ether 02:42:ac:11:00:99"} {
		if !strings.Contains(link, want) {
			t.Errorf("ip link lacks %q:\n%s", want, link)
		}
	}
	if addr := w.mustInGuest(t, "ip", "-o", "-4", "addr", "show", "tap0").Stdout; !strings.Contains(addr, "10.0.135.228/25") {
		t.Errorf("want 10.0.135.228/25 on tap0:\n%s", addr)
	}
	if route := w.mustInGuest(t, "ip", "route", "show", "default").Stdout; !strings.Contains(route, "via 10.0.135.130") {
		t.Errorf("want the default route via 10.0.135.130:\n%s", route)
	}
	// The gateway of that network is ferry.
	w.mustInGuest(t, "ping", "-n", "-c", "1", "-W", "2", "10.0.135.130")
}
