package integration

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// expectFerryError runs ferry with opts and checks it fails the way the CLI
// contract says: exit 1, nothing on stdout, one line on stderr starting
// "ferry: " and containing want, and no sign of a panic.
func expectFerryError(t *testing.T, w *world, opts nstest.FerryOpts, want string) {
	t.Helper()
	f, err := w.lab.StartFerry(w.host, opts)
	if err != nil {
		t.Fatal(err)
	}
	code, err := f.Wait(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	stderr, stdout := f.Stderr(), f.Stdout()
	t.Logf("ferry exited %d after %v", code, f.ExitedAt().Sub(f.StartedAt).Round(time.Millisecond))
	if code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	if stdout != "" {
		t.Errorf("stdout not empty: %q", stdout)
	}
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) != 1 {
		t.Errorf("stderr has %d lines, want 1: %q", len(lines), stderr)
	}
	if !strings.HasPrefix(stderr, "ferry: ") {
		t.Errorf("stderr does not start with %q: %q", "ferry: ", stderr)
	}
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q: %q", want, stderr)
	}
	for _, bad := range []string{"panic", "goroutine"} {
		if strings.Contains(stderr+stdout, bad) {
			t.Errorf("output mentions %q:\n%s%s", bad, stdout, stderr)
		}
	}
}

// freePID returns a PID no process has.
func freePID(t *testing.T) int {
	t.Helper()
	max := 32768
	if b, err := os.ReadFile("/proc/sys/kernel/pid_max"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			max = n
		}
	}
	for pid := max - 1; pid > 1; pid-- {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			return pid
		}
	}
	t.Fatal("no free PID")
	return 0
}

// attachArgs is "attach ARGS... PID" for the world's guest.
func attachArgs(w *world, args ...string) nstest.FerryOpts {
	return nstest.FerryOpts{Args: append(append([]string{"attach"}, args...), strconv.Itoa(w.guest.PID))}
}

func TestErrors(t *testing.T) {
	requireRoot(t)
	for _, c := range []struct {
		name string
		want string
		opts func(t *testing.T, w *world) nstest.FerryOpts
	}{
		{"no such PID", "no such process", func(t *testing.T, w *world) nstest.FerryOpts {
			return nstest.FerryOpts{Args: []string{"attach", strconv.Itoa(freePID(t))}}
		}},
		{"no such path", "no such file or directory", func(t *testing.T, w *world) nstest.FerryOpts {
			return nstest.FerryOpts{Args: []string{"attach", "--netns-type=path", "/run/netns/ferry-absent-" + strconv.Itoa(freePID(t))}}
		}},
		{"root's netns path", "not permitted", func(t *testing.T, w *world) nstest.FerryOpts {
			// The host namespace is root's: the test user may not enter it.
			return nstest.FerryOpts{Args: []string{"attach", "--netns-type=path", w.host.Path}}
		}},
		{"PID 1", "not permitted", func(t *testing.T, w *world) nstest.FerryOpts {
			return nstest.FerryOpts{Args: []string{"attach", "1"}}
		}},
		{"tun hidden by tmpfs", "/dev/net/tun", func(t *testing.T, w *world) nstest.FerryOpts {
			o := attachArgs(w)
			o.Wrap = []string{"unshare", "-m", "--propagation", "private",
				"sh", "-c", `mount -t tmpfs tmpfs /dev/net && exec "$@"`, "sh"}
			return o
		}},
		{"tun replaced by root's file", "/dev/net/tun", func(t *testing.T, w *world) nstest.FerryOpts {
			f, err := os.CreateTemp("", "ferry-fake-tun-")
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
			t.Cleanup(func() { os.Remove(f.Name()) })
			if err := os.Chmod(f.Name(), 0o600); err != nil {
				t.Fatal(err)
			}
			o := attachArgs(w)
			o.Wrap = []string{"unshare", "-m", "--propagation", "private",
				"sh", "-c", `mount --bind "$0" /dev/net/tun && exec "$@"`, f.Name()}
			return o
		}},
		{"veth named tap0", "already exists", func(t *testing.T, w *world) nstest.FerryOpts {
			w.mustInGuest(t, "ip", "link", "add", "tap0", "type", "veth", "peer", "name", "tap0peer")
			return attachArgs(w)
		}},
		{"second ferry", "already", func(t *testing.T, w *world) nstest.FerryOpts {
			w.attach(t)
			return attachArgs(w)
		}},
		{"CIDR host bits", "network address", func(t *testing.T, w *world) nstest.FerryOpts {
			return attachArgs(w, "--cidr", "10.0.2.1/24")
		}},
		{"CIDR too small", "prefix length needs to be 1-25", func(t *testing.T, w *world) nstest.FerryOpts {
			return attachArgs(w, "--cidr", "10.0.0.0/26")
		}},
		{"CIDR garbage", "invalid CIDR", func(t *testing.T, w *world) nstest.FerryOpts {
			return attachArgs(w, "--cidr", "foo")
		}},
		{"MTU 0", "MTU", func(t *testing.T, w *world) nstest.FerryOpts {
			return attachArgs(w, "-m", "0")
		}},
		{"MTU 70000", "MTU", func(t *testing.T, w *world) nstest.FerryOpts {
			return attachArgs(w, "-m", "70000")
		}},
		{"MAC without configure", "--macaddr cannot be specified when --configure or -c is not specified", func(t *testing.T, w *world) nstest.FerryOpts {
			return attachArgs(w, "--macaddress", "02:42:ac:11:00:99")
		}},
		{"outbound address garbage", `invalid --outbound-addr "no-such-if0"`, func(t *testing.T, w *world) nstest.FerryOpts {
			return attachArgs(w, "--outbound-addr", "no-such-if0")
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t, time.Minute)
			expectFerryError(t, w, c.opts(t, w), c.want)
		})
	}
}
