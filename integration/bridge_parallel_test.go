package integration

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// 20 connect calls at once on one network get 20 distinct addresses; the
// namespaces that then go away release theirs on the next call.
func TestBridgeParallelConnect(t *testing.T) {
	t.Parallel()
	w := newBridgeWorld(t, 3*time.Minute)
	w.mustFerryNet(t, "create", "--subnet", "10.77.0.0/24", "many")
	const n = 20
	ctrs := make([]nstest.Netns, n)
	for i := range ctrs {
		ctrs[i] = w.container(t)
	}
	var wg sync.WaitGroup
	results := make([]nstest.Result, n)
	for i := range ctrs {
		wg.Go(func() {
			res, err := nstest.Exec(w.ctx, "ip", "netns", "exec", w.host.Name, w.lab.Ferry, "net", "--state-dir", w.stateDir,
				"connect", "many", ctrs[i].Path, "--name", "c"+strconv.Itoa(i))
			if err != nil {
				res.ExitCode, res.Stderr = -1, err.Error()
			}
			results[i] = res
		})
	}
	wg.Wait()
	for i, res := range results {
		if res.ExitCode != 0 {
			t.Fatalf("connect #%d: %s", i, res)
		}
	}
	v := w.inspect(t, "many")
	seen := map[string]bool{}
	for _, c := range ctrs {
		ip := ipOf(t, v, c)
		if seen[ip] {
			t.Fatalf("address %s handed out twice", ip)
		}
		seen[ip] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct addresses, want %d", len(seen), n)
	}

	for _, c := range ctrs[:5] {
		if err := c.Delete(); err != nil {
			t.Fatal(err)
		}
	}
	if v := w.inspect(t, "many"); len(v.Containers) != n-5 {
		t.Errorf("after 5 namespaces went away: %d attached, want %d", len(v.Containers), n-5)
	}
}

// Without CAP_NET_ADMIN, ferry net says in one line what it needs and what
// the rootless way is.
func TestBridgeNeedsRoot(t *testing.T) {
	t.Parallel()
	w := newBridgeWorld(t, 30*time.Second)
	u := w.lab.User
	res, err := nstest.Exec(w.ctx, "ip", "netns", "exec", w.host.Name,
		"setpriv", "--reuid="+strconv.Itoa(u.UID), "--regid="+strconv.Itoa(u.GID), "--init-groups",
		w.lab.Ferry, "net", "--state-dir", os.TempDir(), "create", "x")
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.TrimSpace(res.Stderr)
	if res.ExitCode == 0 || strings.Contains(msg, "\n") || !strings.Contains(msg, "needs root (CAP_NET_ADMIN)") || !strings.Contains(msg, "ferry run") {
		t.Errorf("ferry net as a user: %s", res)
	}
	t.Logf("ferry net as a user: %s", msg)
	if res := w.ferryNet(t, "inspect", "nosuch"); res.ExitCode == 0 || !strings.Contains(res.Stderr, "ferry net ls") {
		t.Errorf("inspect of an unknown network: %s", res)
	}
}
