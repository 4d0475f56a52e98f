package integration

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// world is what most tests start from: a lab, a private host namespace and
// a guest started from it.
type world struct {
	ctx   context.Context
	lab   *nstest.Lab
	host  nstest.Netns
	guest *nstest.Guest
}

// requireRoot skips t unless the test runs as root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: ferry's end-to-end tests need root to create network namespaces and the test user (run them with `make test` or sudo)")
	}
}

// newWorld sets up a lab, a host namespace and a guest, all torn down when
// t ends; ctx expires after timeout.
func newWorld(t *testing.T, timeout time.Duration) *world {
	t.Helper()
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	lab, err := nstest.NewLab(ctx, t, "")
	if err != nil {
		t.Fatal(err)
	}
	host, err := lab.NewNetns(ctx, "host")
	if err != nil {
		t.Fatal(err)
	}
	g, err := lab.StartGuest(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	return &world{ctx: ctx, lab: lab, host: host, guest: g}
}

// attach runs `ferry attach -r 3 FLAGS... PID` and waits until it is ready.
func (w *world) attach(t *testing.T, flags ...string) *nstest.Ferry {
	t.Helper()
	f, err := w.lab.Attach(w.ctx, w.host, w.guest, flags...)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// inGuest runs a command in the guest's network namespace and fails t if
// it could not run (a non-zero exit is left to the caller).
func (w *world) inGuest(t *testing.T, args ...string) nstest.Result {
	t.Helper()
	res, err := w.guest.Exec(w.ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest$ %s -> exit %d (%v)", strings.Join(args, " "), res.ExitCode, res.Elapsed.Round(time.Millisecond))
	return res
}

// mustInGuest is inGuest that also requires exit status 0.
func (w *world) mustInGuest(t *testing.T, args ...string) nstest.Result {
	t.Helper()
	res := w.inGuest(t, args...)
	if res.ExitCode != 0 {
		t.Fatalf("command failed in guest: %s", res)
	}
	return res
}

// deadline returns ctx's deadline, or a minute from now.
func deadline(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(time.Minute)
}

// echoUDP serves a UDP echo on addr inside the namespace at nsPath until t
// ends, and returns its socket.
func echoUDP(t *testing.T, nsPath, addr string) net.PacketConn {
	t.Helper()
	pc, err := nstest.ListenPacketIn(nsPath, "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc
}

// apiSocketPath returns a path for ferry's API socket in a fresh directory
// the test user may write, removed when t ends.
func apiSocketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ferry-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	return filepath.Join(dir, "api.sock")
}

// ferryStats runs `ferry stats --api sock` as the test user in the host
// namespace and returns its JSON.
func (w *world) ferryStats(t *testing.T, sock string) string {
	t.Helper()
	res, err := nstest.MustExec(w.ctx, "ip", "netns", "exec", w.host.Name, "setpriv", "--reuid="+strconv.Itoa(w.lab.User.UID),
		"--regid="+strconv.Itoa(w.lab.User.GID), "--init-groups", w.lab.Ferry, "stats", "--api", sock)
	if err != nil {
		t.Fatalf("ferry stats: %v", err)
	}
	return res.Stdout
}
