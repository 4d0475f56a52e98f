package integration

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// serverTTL is the default TTL of the test's server namespace: replies that
// carry it (less ferry's own hop) can only have come from the server.
const serverTTL = 77

// TestPingThroughNAT checks that echo requests leave through a host ICMP
// socket and that the replies are the server's, not forged ones.
func TestPingThroughNAT(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	srv, err := w.lab.NewNetns(w.ctx, "server")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.NewVeth(w.ctx, w.host, "172.31.202.1/24", srv, "172.31.202.2/24"); err != nil {
		t.Fatal(err)
	}
	// A dead end: an address routed into a namespace that never answers.
	dead, err := w.lab.NewNetns(w.ctx, "dead")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.NewVeth(w.ctx, w.host, "172.31.203.1/24", dead, "172.31.203.2/24"); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{
		{"ip", "netns", "exec", w.host.Name, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"},
		{"ip", "netns", "exec", srv.Name, "sysctl", "-qw", "net.ipv4.ip_default_ttl=77"},
		{"ip", "netns", "exec", dead.Name, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"},
	} {
		if _, err := nstest.MustExec(w.ctx, cmd...); err != nil {
			t.Fatal(err)
		}
	}
	w.attach(t, "-c")

	res := w.inGuest(t, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "172.31.202.2")
	if res.ExitCode != 0 {
		t.Fatalf("ping to the server failed: %s", res)
	}
	ttls := regexp.MustCompile(`ttl=(\d+)`).FindAllStringSubmatch(res.Stdout, -1)
	if len(ttls) != 3 {
		t.Fatalf("want 3 replies, got %d:\n%s", len(ttls), res.Stdout)
	}
	for _, m := range ttls {
		if m[1] != "76" {
			t.Errorf("reply TTL %s, want 76 (the server's %d less ferry's hop):\n%s", m[1], serverTTL, res.Stdout)
		}
	}
	res = w.inGuest(t, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "172.31.203.2")
	if res.ExitCode == 0 || strings.Contains(res.Stdout, "bytes from") {
		t.Errorf("ping to the dead end got replies (forged?):\n%s", res.Stdout)
	}
	// The gateway is ferry itself, which answers.
	w.mustInGuest(t, "ping", "-n", "-c", "1", "-W", "2", "10.0.2.2")
}

// TestPingForbidden checks that where ping_group_range forbids ICMP
// sockets, ferry says so once and the guest gets no reply at all.
func TestPingForbidden(t *testing.T) {
	w := newWorld(t, time.Minute)
	srv, err := w.lab.NewNetns(w.ctx, "server")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.NewVeth(w.ctx, w.host, "172.31.204.1/24", srv, "172.31.204.2/24"); err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.MustExec(w.ctx, "ip", "netns", "exec", w.host.Name, "sysctl", "-qw", "net.ipv4.ping_group_range=1 0"); err != nil {
		t.Fatal(err)
	}
	f := w.attach(t, "-c")
	res := w.inGuest(t, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "172.31.204.2")
	if res.ExitCode == 0 || strings.Contains(res.Stdout, "bytes from") {
		t.Errorf("ping got replies although ICMP sockets are forbidden:\n%s", res.Stdout)
	}
	if stderr := f.Stderr(); !strings.Contains(stderr, "ping_group_range") {
		t.Errorf("ferry did not say why ping is off; stderr:\n%s", stderr)
	}
}
