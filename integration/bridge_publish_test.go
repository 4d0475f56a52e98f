package integration

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// Published ports reach a namespace from the host namespace and from a
// client beyond it; a publish on 127.0.0.1 only from the host; and the
// namespace reaches its own published ports (hairpin).
func TestBridgePublish(t *testing.T) {
	t.Parallel()
	w := newBridgeWorld(t, 2*time.Minute)
	client, err := w.lab.NewNetns(w.ctx, "client")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.NewVeth(w.ctx, w.host, "172.31.221.1/24", client, "172.31.221.2/24"); err != nil {
		t.Fatal(err)
	}
	const hostIP = "172.31.221.1"
	w.mustFerryNet(t, "create", "pub")
	a, other := w.container(t), w.container(t)
	serveGreeting(t, a, ":80", "a")
	serveUDPEcho(t, a, ":53", "a")
	w.mustFerryNet(t, "connect", "pub", a.Path, "-p", "8080:80", "-p", "80", "-p", "5353:53/udp", "-p", "127.0.0.1::80")
	w.mustFerryNet(t, "connect", "pub", other.Path)
	v := w.inspect(t, "pub")
	e := endpoint(t, v, a)
	var random, local string
	for _, p := range e.Ports {
		switch {
		case p.Proto == "tcp" && p.HostIP == "" && p.HostPort != "8080":
			random = p.HostPort
		case p.HostIP == "127.0.0.1":
			local = p.HostPort
		}
	}
	if len(e.Ports) != 4 || random == "" || local == "" {
		t.Fatalf("published ports = %+v", e.Ports)
	}
	host := w.host
	for _, from := range []nstest.Netns{host, client} {
		mustFetch(t, w.ctx, from, hostIP+":8080", "a saw")
		mustFetch(t, w.ctx, from, hostIP+":"+random, "a saw")
		if got, err := udpAsk(w.ctx, from.Path, hostIP+":5353", "ping"); err != nil || got != "a ping" {
			t.Fatalf("UDP from %s: %q, %v", from.Name, got, err)
		}
	}
	mustFetch(t, w.ctx, host, "127.0.0.1:8080", "a saw")
	mustFetch(t, w.ctx, host, "127.0.0.1:"+local, "a saw")
	if err := mustNotFetch(t, w.ctx, client, hostIP+":"+local); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("127.0.0.1 publish from the client: %v, want connection refused", err)
	}
	// Hairpin: a reaches its own published port, as does its neighbour.
	mustFetch(t, w.ctx, a, hostIP+":8080", "a saw")
	mustFetch(t, w.ctx, a, v.IPAM.Config[0].Gateway+":8080", "a saw")
	mustFetch(t, w.ctx, other, hostIP+":8080", "a saw")

	// A port already published is refused, and disconnect withdraws it.
	b := w.container(t)
	if res := w.ferryNet(t, "connect", "pub", b.Path, "-p", "8080:80"); res.ExitCode == 0 || !strings.Contains(res.Stderr, "already published") {
		t.Errorf("second publish of 8080: %s", res)
	}
	w.mustFerryNet(t, "disconnect", "pub", a.Path)
	mustNotFetch(t, w.ctx, client, hostIP+":8080")
}
