package integration

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/bridge"
	"github.com/ferrynet/ferry/integration/nstest"
)

// newDualWorld is newBridgeWorld that also requires the host namespace's
// ip6tables rules to equal, at teardown, those from before the test.
func newDualWorld(t *testing.T, timeout time.Duration) *bridgeWorld {
	t.Helper()
	w := newBridgeWorld(t, timeout)
	before := w.snapshot6(t)
	// Registered after newBridgeWorld's cleanup, this runs before it:
	// it removes the networks itself, then compares.
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		w.ctx = cctx
		if res := w.ferryNet(t, "ls", "-q"); res.ExitCode == 0 {
			if names := strings.Fields(res.Stdout); len(names) > 0 {
				w.ferryNet(t, append([]string{"rm", "-f"}, names...)...)
			}
		}
		w.ferryNet(t, "prune")
		w.expectSnapshot6(t, before)
	})
	return w
}

// snapshot6 is the host namespace's ip6tables rules, normalized as
// snapshot normalizes iptables'.
func (w *bridgeWorld) snapshot6(t *testing.T) string {
	t.Helper()
	save, err := nstest.MustExec(w.ctx, "ip", "netns", "exec", w.host.Name, "ip6tables-save")
	if err != nil {
		t.Fatal(err)
	}
	return normalizeIptablesSave(save.Stdout)
}

func (w *bridgeWorld) expectSnapshot6(t *testing.T, want string) {
	t.Helper()
	var got string
	for deadline := time.Now().Add(5 * time.Second); ; {
		if got = w.snapshot6(t); got == want {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("host namespace's ip6tables rules differ from before:\n--- want\n%s\n--- got\n%s", want, got)
}

// ip6Of is the IPv6 address of namespace n on network v, without prefix
// length.
func ip6Of(t *testing.T, v bridge.NetworkView, n nstest.Netns) string {
	t.Helper()
	ip, _, _ := strings.Cut(endpoint(t, v, n).IPv6Address, "/")
	return ip
}

// mustRun runs a command as root and fails the test if it fails.
func mustRun(t *testing.T, ctx context.Context, args ...string) nstest.Result {
	t.Helper()
	res, err := nstest.MustExec(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// Two namespaces on a dual-stack network reach each other over IPv6 (and
// IPv4); a namespace reaches a server beyond the host over IPv6 and the
// server sees the host's IPv6 address (MASQUERADE); on an --internal
// dual-stack network it does not. Ports published on [::] and on no
// address reach the namespace over IPv6 from beyond the host, from the
// host and from the namespace itself. With the dual-stack networks gone,
// ferry's ip6tables chains go too, while an IPv4 network remains.
func TestBridgeIPv6(t *testing.T) {
	t.Parallel()
	w := newDualWorld(t, 3*time.Minute)
	before6 := w.snapshot6(t)
	server, err := w.lab.NewNetns(w.ctx, "server")
	if err != nil {
		t.Fatal(err)
	}
	veth, err := nstest.NewVeth(w.ctx, w.host, "172.31.241.1/24", server, "172.31.241.2/24")
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, w.ctx, "ip", "-n", w.host.Name, "addr", "add", "fd99:241::1/64", "dev", veth.NameA, "nodad")
	mustRun(t, w.ctx, "ip", "-n", server.Name, "addr", "add", "fd99:241::2/64", "dev", veth.NameB, "nodad")
	serveGreeting(t, server, "[fd99:241::2]:80", "server")

	w.mustFerryNet(t, "create", "--ipv6", "--subnet", "172.31.240.0/24", "--subnet", "fd99:240::/64", "dual")
	w.mustFerryNet(t, "create", "--ipv6", "--internal", "--subnet", "fd99:243::/64", "--subnet", "172.31.243.0/24", "closed6")
	w.mustFerryNet(t, "create", "--subnet", "172.31.247.0/24", "v4only")
	if res := w.ferryNet(t, "create", "--ipv6", "--subnet", "fd99:240:0:0:8000::/65", "clash6"); res.ExitCode == 0 {
		t.Errorf("create on an IPv6 subnet overlapping another network's succeeded")
	}
	if res := w.ferryNet(t, "create", "--subnet", "fd99:248::/64", "nov6flag"); res.ExitCode == 0 {
		t.Errorf("create with an IPv6 subnet but no --ipv6 succeeded")
	}

	a, b, c := w.container(t), w.container(t), w.container(t)
	for _, n := range []nstest.Netns{a, b, c} {
		serveGreeting(t, n, ":80", n.Name)
	}
	w.mustFerryNet(t, "connect", "dual", a.Path, "-p", "[::]:8080:80", "-p", "8081:80")
	w.mustFerryNet(t, "connect", "dual", b.Path)
	w.mustFerryNet(t, "connect", "closed6", c.Path)
	if res := w.ferryNet(t, "connect", "v4only", c.Path, "-p", "[::]:8082:80"); res.ExitCode == 0 {
		t.Errorf("an IPv6 publish on an IPv4 network succeeded")
	}
	if res := w.ferryNet(t, "connect", "dual", w.container(t).Path, "-p", "[::1]:8083:80"); res.ExitCode == 0 {
		t.Errorf("a publish on ::1 succeeded")
	}

	dual := w.inspect(t, "dual")
	if !dual.EnableIPv6 || len(dual.IPAM.Config) != 2 || dual.IPAM.Config[1].Subnet != "fd99:240::/64" || dual.IPAM.Config[1].Gateway != "fd99:240::1" {
		t.Fatalf("dual's IPAM = %+v (EnableIPv6 %v)", dual.IPAM, dual.EnableIPv6)
	}
	ipA, ipB := ip6Of(t, dual, a), ip6Of(t, dual, b)
	if ipA != "fd99:240::2" || ipB != "fd99:240::3" {
		t.Errorf("IPv6 addresses %s and %s, want fd99:240::2 and fd99:240::3", ipA, ipB)
	}
	ipC := ip6Of(t, w.inspect(t, "closed6"), c)

	// Neighbours, over IPv6 and over IPv4.
	mustRun(t, w.ctx, "ip", "netns", "exec", a.Name, "ping", "-c", "1", "-W", "3", ipB)
	mustFetch(t, w.ctx, a, "["+ipB+"]:80", b.Name+" saw "+ipA)
	mustFetch(t, w.ctx, b, "["+ipA+"]:80", a.Name+" saw "+ipB)
	mustFetch(t, w.ctx, b, ipOf(t, dual, a)+":80", a.Name+" saw "+ipOf(t, dual, b))

	// Out through the host: MASQUERADE, and none for --internal.
	mustFetch(t, w.ctx, a, "[fd99:241::2]:80", "server saw fd99:241::1")
	mustNotFetch(t, w.ctx, c, "[fd99:241::2]:80")
	mustNotFetch(t, w.ctx, a, "["+ipC+"]:80") // isolation

	// Published ports over IPv6 from beyond the host (no MASQUERADE),
	// from the host, and back to the namespace itself (hairpin).
	mustFetch(t, w.ctx, server, "[fd99:241::1]:8080", a.Name+" saw fd99:241::2")
	mustFetch(t, w.ctx, server, "[fd99:241::1]:8081", a.Name+" saw fd99:241::2")
	mustFetch(t, w.ctx, server, "172.31.241.1:8081", a.Name+" saw 172.31.241.2")
	mustNotFetch(t, w.ctx, server, "172.31.241.1:8080") // [::] only
	mustFetch(t, w.ctx, w.host, "[fd99:241::1]:8080", a.Name+" saw")
	mustFetch(t, w.ctx, a, "[fd99:241::1]:8081", a.Name+" saw")
	mustFetch(t, w.ctx, b, "[fd99:241::1]:8081", a.Name+" saw")

	if s := w.snapshot6(t); !strings.Contains(s, ":FERRY-POSTROUTING") || !strings.Contains(s, "fd99:240::/64") {
		t.Errorf("ip6tables has no ferry rules for dual:\n%s", s)
	}
	w.mustFerryNet(t, "disconnect", "dual", a.Path)
	mustNotFetch(t, w.ctx, server, "[fd99:241::1]:8080")
	w.mustFerryNet(t, "rm", "-f", "dual", "closed6")
	w.expectSnapshot6(t, before6)
	if res := w.mustFerryNet(t, "ls", "-q"); strings.TrimSpace(res.Stdout) != "v4only" {
		t.Errorf("networks left: %q", res.Stdout)
	}
}

// Two namespaces on a macvlan network over a veth parent reach each other
// (IPv4 and IPv6) and a third namespace at the other end of the parent,
// their gateway; the host gets neither a link nor a rule. Without
// --gateway a namespace gets no default route. disconnect and rm remove
// the macvlans.
func TestBridgeMacvlan(t *testing.T) {
	t.Parallel()
	w := newDualWorld(t, 3*time.Minute)
	lan, err := w.lab.NewNetns(w.ctx, "lan")
	if err != nil {
		t.Fatal(err)
	}
	veth, err := nstest.NewVeth(w.ctx, w.host, "172.31.249.1/24", lan, "172.31.244.254/24")
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, w.ctx, "ip", "-n", lan.Name, "addr", "add", "fd99:244::fe/64", "dev", veth.NameB, "nodad")
	serveGreeting(t, lan, ":80", "lan")
	parent := veth.NameA
	empty, empty6 := w.snapshot(t), w.snapshot6(t)

	w.mustFerryNet(t, "create", "-d", "macvlan", "-o", "parent="+parent, "--subnet", "172.31.244.0/24",
		"--gateway", "172.31.244.254", "--ipv6", "--subnet", "fd99:244::/64", "mvl")
	w.mustFerryNet(t, "create", "-d", "macvlan", "-o", "parent="+parent, "--subnet", "172.31.246.0/24", "nogw")
	if res := w.ferryNet(t, "create", "-d", "macvlan", "--subnet", "172.31.250.0/24", "noparent"); res.ExitCode == 0 {
		t.Errorf("a macvlan network without parent was created")
	}
	if res := w.ferryNet(t, "create", "-o", "parent="+parent, "notmacvlan"); res.ExitCode == 0 {
		t.Errorf("a bridge network with -o parent was created")
	}
	a, b, c := w.container(t), w.container(t), w.container(t)
	for _, n := range []nstest.Netns{a, b} {
		serveGreeting(t, n, ":80", n.Name)
	}
	w.mustFerryNet(t, "connect", "mvl", a.Path)
	w.mustFerryNet(t, "connect", "mvl", b.Path)
	w.mustFerryNet(t, "connect", "nogw", c.Path)
	if res := w.ferryNet(t, "connect", "mvl", w.container(t).Path, "-p", "8080:80"); res.ExitCode == 0 {
		t.Errorf("a publish on a macvlan network succeeded")
	}
	// Nothing on the host: no link, no rule, no DNS responder.
	w.expectSnapshot(t, empty)
	w.expectSnapshot6(t, empty6)
	if p := bridgeDNSProcesses(w.stateDir); len(p) > 0 {
		t.Errorf("DNS responders for macvlan networks: %v", p)
	}

	v := w.inspect(t, "mvl")
	ipA, ipB := ipOf(t, v, a), ipOf(t, v, b)
	ip6A, ip6B := ip6Of(t, v, a), ip6Of(t, v, b)
	if kind := mustRun(t, w.ctx, "ip", "-n", a.Name, "-d", "link", "show", "eth0").Stdout; !strings.Contains(kind, "macvlan mode bridge") {
		t.Errorf("a's eth0 is not a bridge-mode macvlan:\n%s", kind)
	}
	mustRun(t, w.ctx, "ip", "netns", "exec", a.Name, "ping", "-c", "1", "-W", "3", ipB)
	mustRun(t, w.ctx, "ip", "netns", "exec", b.Name, "ping", "-c", "1", "-W", "3", ip6A)
	mustFetch(t, w.ctx, a, ipB+":80", b.Name+" saw "+ipA)
	mustFetch(t, w.ctx, b, "["+ip6A+"]:80", a.Name+" saw "+ip6B)
	mustFetch(t, w.ctx, a, "172.31.244.254:80", "lan saw "+ipA)
	mustFetch(t, w.ctx, lan, ipB+":80", b.Name+" saw 172.31.244.254")
	if r := mustRun(t, w.ctx, "ip", "-n", a.Name, "route", "show", "default").Stdout; !strings.Contains(r, "via 172.31.244.254") {
		t.Errorf("a's default route = %q, want via 172.31.244.254", r)
	}
	if r := mustRun(t, w.ctx, "ip", "-n", c.Name, "route", "show", "default").Stdout; strings.TrimSpace(r) != "" {
		t.Errorf("c got a default route without --gateway: %q", r)
	}
	if r := mustRun(t, w.ctx, "ip", "-n", c.Name, "-o", "addr", "show", "dev", "eth0").Stdout; !strings.Contains(r, "172.31.246.") {
		t.Errorf("c's eth0 lacks an address of nogw: %q", r)
	}

	w.mustFerryNet(t, "disconnect", "mvl", a.Path)
	if res, _ := nstest.Exec(w.ctx, "ip", "-n", a.Name, "link", "show", "eth0"); res.ExitCode == 0 {
		t.Errorf("a's macvlan is still there after disconnect")
	}
	mustNotFetch(t, w.ctx, lan, ipA+":80")
	w.mustFerryNet(t, "rm", "-f", "mvl", "nogw")
	for _, n := range []nstest.Netns{b, c} {
		if res, _ := nstest.Exec(w.ctx, "ip", "-n", n.Name, "link", "show", "eth0"); res.ExitCode == 0 {
			t.Errorf("%s's macvlan is still there after rm", n.Name)
		}
	}
}

// ferry killed after its Nth kernel change, for every N, while creating,
// connecting to and removing a dual-stack network, and while connecting
// to and disconnecting from a macvlan network: the next call repairs both
// iptables and ip6tables, and the links.
func TestBridgeCrashSafetyV6Macvlan(t *testing.T) {
	t.Parallel()
	w := newDualWorld(t, 6*time.Minute)
	lan, err := w.lab.NewNetns(w.ctx, "lan")
	if err != nil {
		t.Fatal(err)
	}
	veth, err := nstest.NewVeth(w.ctx, w.host, "172.31.251.1/24", lan, "172.31.252.254/24")
	if err != nil {
		t.Fatal(err)
	}
	c := w.container(t)
	snap := func() string { return w.snapshot(t) + "===\n" + w.snapshot6(t) }
	// crashLoop runs setup then args with the crash hook at N = 1, 2, ...
	// until args completes; after each crash a plain `ferry net ls` must
	// leave the host as want.
	crashLoop := func(what string, setup func(), args []string, want string) {
		for n := 1; ; n++ {
			if n > 100 {
				t.Fatalf("%s: still crashing after 100 kernel changes", what)
			}
			setup()
			res := w.ferryNetEnv(t, []string{bridge.EnvCrashAfter + "=" + strconv.Itoa(n)}, args...)
			switch res.ExitCode {
			case 0:
				t.Logf("%s: completes after %d kernel changes", what, n-1)
				return
			case bridge.CrashExitCode:
			default:
				t.Fatalf("%s with crash after %d: %s", what, n, res)
			}
			w.mustFerryNet(t, "ls")
			var got string
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				if got = snap(); got == want || time.Now().After(deadline) {
					break
				}
			}
			if got != want {
				t.Fatalf("%s: not repaired after a crash after kernel change %d:\n--- want\n%s\n--- got\n%s", what, n, want, got)
			}
		}
	}
	empty := snap()
	create := []string{"create", "--ipv6", "--subnet", "172.31.253.0/24", "--subnet", "fd99:253::/64", "d"}
	connect := []string{"connect", "d", c.Path, "-p", "8080:80"}
	nothing := func() {}
	// again redoes what a crash repaired away: these calls fail when
	// there is nothing to redo.
	again := func(args ...[]string) func() {
		return func() {
			for _, a := range args {
				w.ferryNet(t, a...)
			}
		}
	}
	crashLoop("create dual", nothing, create, empty)
	created := snap()
	crashLoop("connect dual", nothing, connect, created)
	crashLoop("rm dual", again(create, connect), []string{"rm", "-f", "d"}, empty)

	w.mustFerryNet(t, "create", "-d", "macvlan", "-o", "parent="+veth.NameA, "--subnet", "172.31.252.0/24", "--gateway", "172.31.252.254", "m")
	crashLoop("connect macvlan", nothing, []string{"connect", "m", c.Path}, empty)
	w.mustFerryNet(t, "disconnect", "m", c.Path)
	if res, _ := nstest.Exec(w.ctx, "ip", "-n", c.Name, "link", "show", "eth0"); res.ExitCode == 0 {
		t.Errorf("a crashed macvlan connect left eth0 behind")
	}
	w.mustFerryNet(t, "connect", "m", c.Path)
	crashLoop("disconnect macvlan", again([]string{"connect", "m", c.Path}), []string{"disconnect", "m", c.Path}, empty)
	if res, _ := nstest.Exec(w.ctx, "ip", "-n", c.Name, "link", "show", "eth0"); res.ExitCode == 0 {
		t.Errorf("macvlan still there after disconnect")
	}
}
