package integration

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// TestIPv6ToHostLoopback checks IPv6 through the gateway fd00::2 to the
// host's ::1: HTTP, UDP echo, ping of the gateway, and the fd00::100
// address that -c sets.
func TestIPv6ToHostLoopback(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	port, err := nstest.ServeHTTP(t, w.host.Path, "[::1]:0", http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprint(rw, page)
	}))
	if err != nil {
		t.Fatal(err)
	}
	pc := echoUDP(t, w.host.Path, "[::1]:0")
	w.attach(t, "-c", "-6")

	if addr := w.mustInGuest(t, "ip", "-6", "-o", "addr", "show", "tap0").Stdout; !strings.Contains(addr, "fd00::100/64") {
		t.Errorf("want fd00::100/64 on tap0:\n%s", addr)
	}
	res := w.mustInGuest(t, "curl", "-s", "--max-time", "10", fmt.Sprintf("http://[fd00::2]:%d/", port))
	if res.Stdout != page {
		t.Errorf("curl over IPv6 printed %q, want %q", res.Stdout, page)
	}
	c, err := nstest.DialIn(w.ctx, w.guest.NetnsPath, "udp", fmt.Sprintf("[fd00::2]:%d", pc.LocalAddr().(*net.UDPAddr).Port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 65536)
	retries := 0
	for i, size := range []int{8, 1200, 9000, 65000} {
		msg := make([]byte, size)
		msg[0], msg[size-1] = byte(i), byte(i)
		if err := echoOnce(c, msg, buf, &retries); err != nil {
			t.Errorf("UDP echo of %d bytes over IPv6: %v", size, err)
		}
	}
	w.mustInGuest(t, "ping", "-6", "-n", "-c", "1", "-W", "2", "fd00::2")
}

// TestIPv6DisableHostLoopback checks that fd00::2 refuses at once under
// --disable-host-loopback.
func TestIPv6DisableHostLoopback(t *testing.T) {
	w := newWorld(t, time.Minute)
	l, err := nstest.ListenIn(w.host.Path, "tcp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	w.attach(t, "-c", "-6", "--disable-host-loopback")
	start := time.Now()
	_, err = nstest.DialIn(w.ctx, w.guest.NetnsPath, "tcp", fmt.Sprintf("[fd00::2]:%d", l.Addr().(*net.TCPAddr).Port))
	if !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("dial fd00::2: %v, want %v", err, syscall.ENETUNREACH)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("refusal took %v, want it at once", el)
	}
}

// TestIPv6SLAAC checks that a guest ferry did not configure gets an
// address in fd00::/64 from ferry's Router Advertisements.
func TestIPv6SLAAC(t *testing.T) {
	w := newWorld(t, time.Minute)
	w.attach(t, "-6")
	w.mustInGuest(t, "ip", "link", "set", "tap0", "up")
	deadline := time.Now().Add(15 * time.Second)
	var addrs string
	for time.Now().Before(deadline) {
		addrs = w.mustInGuest(t, "ip", "-6", "-o", "addr", "show", "dev", "tap0", "scope", "global").Stdout
		if regexp.MustCompile(`inet6 fd00::[0-9a-f:]+/64 .*dynamic`).MatchString(addrs) && !strings.Contains(addrs, "tentative") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !regexp.MustCompile(`inet6 fd00::[0-9a-f:]+/64 .*dynamic`).MatchString(addrs) {
		t.Fatalf("no SLAAC address in fd00::/64 after 15 s:\n%s", addrs)
	}
	if route := w.mustInGuest(t, "ip", "-6", "route", "show", "default").Stdout; !strings.Contains(route, "proto ra") {
		t.Errorf("no default route from the Router Advertisement:\n%s", route)
	}
}

// TestIPv6PingThroughNAT pings a server namespace over IPv6 through a host
// ICMPv6 socket; the hop limit shows the reply is the server's.
func TestIPv6PingThroughNAT(t *testing.T) {
	w := newWorld(t, time.Minute)
	srv, err := w.lab.NewNetns(w.ctx, "server")
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{
		{"ip", "netns", "exec", w.host.Name, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"},
		{"ip", "netns", "exec", srv.Name, "sysctl", "-qw", "net.ipv6.conf.all.hop_limit=77"},
		{"ip", "netns", "exec", srv.Name, "sysctl", "-qw", "net.ipv6.conf.default.hop_limit=77"},
	} {
		if _, err := nstest.MustExec(w.ctx, cmd...); err != nil {
			t.Fatal(err)
		}
	}
	v, err := nstest.NewVeth(w.ctx, w.host, "172.31.205.1/24", srv, "172.31.205.2/24")
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{
		{"ip", "-n", w.host.Name, "addr", "add", "fd99:205::1/64", "dev", v.NameA, "nodad"},
		{"ip", "-n", srv.Name, "addr", "add", "fd99:205::2/64", "dev", v.NameB, "nodad"},
	} {
		if _, err := nstest.MustExec(w.ctx, cmd...); err != nil {
			t.Fatal(err)
		}
	}
	w.attach(t, "-c", "-6")
	res := w.mustInGuest(t, "ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "2", "fd99:205::2")
	ttls := regexp.MustCompile(`ttl=(\d+)`).FindAllStringSubmatch(res.Stdout, -1)
	if len(ttls) != 2 {
		t.Fatalf("want 2 replies:\n%s", res.Stdout)
	}
	for _, m := range ttls {
		if m[1] != "76" {
			t.Errorf("reply hop limit %s, want 76 (the server's 77 less ferry's hop):\n%s", m[1], res.Stdout)
		}
	}
}

// TestIPv6DNS checks the DNS forwarder at fd00::3.
func TestIPv6DNS(t *testing.T) {
	w, _ := dnsWorld(t, "-6")
	for _, proto := range []string{"+notcp", "+tcp"} {
		res := w.mustInGuest(t, "dig", "+time=3", "+tries=1", proto, "+short", "@fd00::3", dnsName, "A")
		if strings.TrimSpace(res.Stdout) != dnsA {
			t.Errorf("dig %s @fd00::3 %s: %q, want %s", proto, dnsName, res.Stdout, dnsA)
		}
	}
}
