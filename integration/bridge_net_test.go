package integration

import (
	"slices"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// Two namespaces on one network reach each other by IP and by name; a
// third on a second network reaches neither, until it is connected to the
// first network too.
func TestBridgeNamesAndIsolation(t *testing.T) {
	t.Parallel()
	w := newBridgeWorld(t, 3*time.Minute)
	w.mustFerryNet(t, "create", "front")
	w.mustFerryNet(t, "create", "back")
	a, b, c := w.container(t), w.container(t), w.container(t)
	w.mustFerryNet(t, "connect", "front", a.Path, "--name", "alpha")
	w.mustFerryNet(t, "connect", "front", b.Path, "--name", "beta", "--alias", "db")
	w.mustFerryNet(t, "connect", "back", c.Path, "--name", "gamma")
	front, back := w.inspect(t, "front"), w.inspect(t, "back")
	if front.IPAM.Config[0].Subnet == back.IPAM.Config[0].Subnet {
		t.Fatalf("both networks got subnet %s", front.IPAM.Config[0].Subnet)
	}
	ipA, ipB, ipC := ipOf(t, front, a), ipOf(t, front, b), ipOf(t, back, c)
	gw := front.IPAM.Config[0].Gateway
	for _, n := range []nstest.Netns{a, b, c} {
		serveGreeting(t, n, ":80", n.Name)
	}

	if _, err := nstest.MustExec(w.ctx, "ip", "netns", "exec", a.Name, "ping", "-c", "1", "-W", "3", ipB); err != nil {
		t.Fatalf("ping from a to b: %v", err)
	}
	if _, err := nstest.MustExec(w.ctx, "ip", "netns", "exec", b.Name, "ping", "-c", "1", "-W", "3", ipA); err != nil {
		t.Fatalf("ping from b to a: %v", err)
	}
	mustFetch(t, w.ctx, a, ipB+":80", b.Name+" saw "+ipA)
	mustFetch(t, w.ctx, b, ipA+":80", a.Name+" saw "+ipB)

	for _, q := range []struct {
		from       nstest.Netns
		name, want string
	}{{a, "beta", ipB}, {a, "db", ipB}, {b, "alpha", ipA}, {b, "ALPHA.", ipA}} {
		got, err := resolve(w.ctx, q.from.Path, gw, q.name)
		if err != nil || !slices.Equal(got, []string{q.want}) {
			t.Fatalf("resolve %s from %s: %v, %v; want [%s]", q.name, q.from.Name, got, err, q.want)
		}
		mustFetch(t, w.ctx, q.from, got[0]+":80", "")
	}
	if got, err := resolve(w.ctx, c.Path, back.IPAM.Config[0].Gateway, "alpha"); err != nil || len(got) != 0 {
		t.Errorf("back's DNS answered a name of front: %v, %v", got, err)
	}

	mustNotFetch(t, w.ctx, c, ipA+":80")
	mustNotFetch(t, w.ctx, c, ipB+":80")
	mustNotFetch(t, w.ctx, a, ipC+":80")

	w.mustFerryNet(t, "connect", "front", c.Path, "--name", "gamma")
	front = w.inspect(t, "front")
	ipC2 := ipOf(t, front, c)
	if e := endpoint(t, front, c); e.Interface != "eth1" {
		t.Errorf("second network's interface = %s, want eth1", e.Interface)
	}
	mustFetch(t, w.ctx, c, ipA+":80", a.Name+" saw "+ipC2)
	mustFetch(t, w.ctx, c, ipB+":80", b.Name+" saw "+ipC2)

	w.mustFerryNet(t, "disconnect", "front", c.Path)
	mustNotFetch(t, w.ctx, c, ipA+":80")
	if res := w.ferryNet(t, "rm", "front"); res.ExitCode == 0 {
		t.Errorf("rm of a network in use succeeded; want a refusal")
	}
}

// A namespace reaches a server beyond the host, which sees the host's
// address (MASQUERADE); on an --internal network it does not.
func TestBridgeOutbound(t *testing.T) {
	t.Parallel()
	w := newBridgeWorld(t, 2*time.Minute)
	server, err := w.lab.NewNetns(w.ctx, "server")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.NewVeth(w.ctx, w.host, "172.31.220.1/24", server, "172.31.220.2/24"); err != nil {
		t.Fatal(err)
	}
	serveGreeting(t, server, "172.31.220.2:80", "server")
	w.mustFerryNet(t, "create", "out")
	w.mustFerryNet(t, "create", "--internal", "--subnet", "10.123.0.0/24", "closed")
	if s := w.inspect(t, "out").IPAM.Config[0].Subnet; s != "172.17.0.0/16" {
		t.Errorf("picked subnet %s, want 172.17.0.0/16", s)
	}
	a, b := w.container(t), w.container(t)
	w.mustFerryNet(t, "connect", "out", a.Path)
	w.mustFerryNet(t, "connect", "closed", b.Path)
	mustFetch(t, w.ctx, a, "172.31.220.2:80", "server saw 172.31.220.1")
	mustNotFetch(t, w.ctx, b, "172.31.220.2:80")

	// A subnet routed on the host is not picked, and not accepted.
	if res := w.ferryNet(t, "create", "--subnet", "172.31.220.0/25", "clash"); res.ExitCode == 0 {
		t.Errorf("create on a routed subnet succeeded")
	}
}
