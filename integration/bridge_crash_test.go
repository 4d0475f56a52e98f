package integration

import (
	"strconv"
	"testing"
	"time"

	"github.com/ferrynet/ferry/bridge"
)

// ferry killed after its Nth kernel change, for every N, during create,
// connect, disconnect and rm: the next call repairs, leaving exactly what
// the interrupted call would have left had it failed cleanly (create,
// connect) or succeeded (disconnect, rm).
func TestBridgeCrashSafety(t *testing.T) {
	t.Parallel()
	w := newBridgeWorld(t, 6*time.Minute)
	c := w.container(t)
	empty := w.snapshot(t)

	// crashLoop runs setup then args with the crash hook at N = 1, 2, ...
	// until args completes; after each crash a plain `ferry net ls` must
	// leave the host as want says.
	crashLoop := func(what string, setup func(), args []string, want func() string, after func()) {
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
			w.expectSnapshot(t, want())
			if t.Failed() {
				t.Fatalf("%s: not repaired after a crash after kernel change %d", what, n)
			}
			after()
		}
	}
	noDNS := func(max int) func() {
		return func() {
			if p := bridgeDNSProcesses(w.stateDir); len(p) > max {
				t.Fatalf("%d DNS responders running, want at most %d: %v", len(p), max, p)
			}
		}
	}
	nothing := func() {}

	crashLoop("create", nothing, []string{"create", "n"}, func() string { return empty }, noDNS(0))
	w.mustFerryNet(t, "rm", "n")
	w.expectSnapshot(t, empty)

	w.mustFerryNet(t, "create", "n")
	created := w.snapshot(t)
	crashLoop("connect", nothing, []string{"connect", "n", c.Path, "-p", "8080:80"}, func() string { return created }, func() {
		if v := w.inspect(t, "n"); len(v.Containers) != 0 {
			t.Fatalf("after repair, attachments left: %+v", v.Containers)
		}
	})
	w.mustFerryNet(t, "disconnect", "n", c.Path)

	connect := func() { w.mustFerryNet(t, "connect", "n", c.Path, "-p", "8080:80") }
	crashLoop("disconnect", connect, []string{"disconnect", "n", c.Path}, func() string { return created }, nothing)
	w.expectSnapshot(t, created)

	w.mustFerryNet(t, "rm", "n")
	setup := func() {
		w.mustFerryNet(t, "create", "n")
		connect()
	}
	crashLoop("rm", setup, []string{"rm", "-f", "n"}, func() string { return empty }, noDNS(0))
	w.expectSnapshot(t, empty)
	noDNS(0)()
}
