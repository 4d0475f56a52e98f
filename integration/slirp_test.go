package integration

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// The reference: Debian's slirp4netns, which .ci/run installs.
const debianSlirp = "/usr/bin/slirp4netns"

// slirpImpls returns the two implementations compared side by side: Debian's
// slirp4netns and ferry started through a symlink named slirp4netns.
func slirpImpls(t *testing.T, ferry string) map[string]string {
	t.Helper()
	if _, err := os.Stat(debianSlirp); err != nil {
		t.Fatalf("the reference %s is missing (apt-get install slirp4netns): %v", debianSlirp, err)
	}
	dir, err := os.MkdirTemp("", "ferry-slirp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	link := filepath.Join(dir, "slirp4netns")
	if err := os.Symlink(ferry, link); err != nil {
		t.Fatal(err)
	}
	return map[string]string{"debian": debianSlirp, "ferry": link}
}

// TestSlirpCommandLine compares help, version and argument errors.
func TestSlirpCommandLine(t *testing.T) {
	requireRoot(t)
	ferry := os.Getenv(nstest.EnvFerryBin)
	impls := slirpImpls(t, ferry)
	run := func(bin string, args ...string) (string, string, int) {
		cmd := exec.Command(bin, args...)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		cmd.Run()
		return out.String(), errb.String(), cmd.ProcessState.ExitCode()
	}
	opts := regexp.MustCompile(`--[a-z0-9-]+`)
	ref, _, refCode := run(impls["debian"], "--help")
	got, _, code := run(impls["ferry"], "--help")
	if code != refCode || !slices.Equal(slices.Compact(opts.FindAllString(got, -1)), slices.Compact(opts.FindAllString(ref, -1))) {
		t.Errorf("--help: exit %d, options %v; want exit %d, options %v", code, opts.FindAllString(got, -1), refCode, opts.FindAllString(ref, -1))
	}
	keys := func(s string) []string {
		var k []string
		for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
			k = append(k, strings.SplitN(l, ":", 2)[0])
		}
		return k
	}
	ref, _, _ = run(impls["debian"], "-v")
	got, _, _ = run(impls["ferry"], "-v")
	for _, k := range keys(ref) {
		if k != "slirp4netns version 1.2.0" && !slices.Contains(keys(got), k) {
			t.Errorf("-v lacks %q:\n%s", k, got)
		}
	}
	if !strings.Contains(got, "SLIRP_CONFIG_VERSION_MAX: 4") || !strings.HasPrefix(got, "slirp4netns version ") {
		t.Errorf("-v: %q", got)
	}
	// Argument errors: same exit status, same message where slirp4netns
	// prints one before its usage.
	for _, args := range [][]string{
		{"--cidr=foo", "1", "tap0"},
		{"-m", "0", "1"},
		{"-m", "70000", "1"},
		{"--macaddress=aa:bb:cc:dd:ee:ff", "1"},
		{"--userns-path=/nonexistent", "1"},
		{"abc"},
		{},
		{"--bogus", "1"},
	} {
		_, refErr, refCode := run(impls["debian"], args...)
		_, gotErr, code := run(impls["ferry"], args...)
		refErr = strings.ReplaceAll(refErr, impls["debian"], "slirp4netns")
		gotErr = strings.ReplaceAll(gotErr, impls["ferry"], "slirp4netns")
		first := strings.SplitN(strings.TrimSpace(refErr), "\n", 2)[0]
		if code != refCode || (first != "" && !strings.Contains(gotErr, first)) {
			t.Errorf("%q: exit %d stderr %q; slirp4netns: exit %d stderr %q", args, code, gotErr, refCode, refErr)
		}
	}
}

// slirpRun is one slirp4netns (either implementation) serving a guest.
type slirpRun struct {
	w     *world
	f     *nstest.Ferry
	exitW *os.File
	sock  string
}

// startSlirp runs bin (a slirp4netns) against a new guest with -c, -r, -e
// and an API socket, plus extra flags.
func startSlirp(t *testing.T, bin string, extra ...string) *slirpRun {
	t.Helper()
	w := newWorld(t, 2*time.Minute)
	dir, err := os.MkdirTemp("", "ferry-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	r := &slirpRun{w: w, sock: filepath.Join(dir, "api.sock")}
	ready, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	exitR, exitW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.exitW = exitW
	t.Cleanup(func() { exitW.Close() })
	args := append([]string{"-c", "-r", "3", "-e", "4", "-a", r.sock}, extra...)
	args = append(args, strconv.Itoa(w.guest.PID), "tap0")
	r.f, err = nstest.StartFerry(t, bin, w.host, w.lab.User, nstest.FerryOpts{Args: args, ExtraFiles: []*os.File{readyW, exitR}})
	readyW.Close()
	exitR.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := nstest.WaitReady(w.ctx, ready, r.f, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	ready.Close()
	return r
}

// api sends one request and returns the reply bytes.
func (r *slirpRun) api(t *testing.T, req string) string {
	t.Helper()
	c, err := net.DialTimeout("unix", r.sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte(req))
	c.(*net.UnixConn).CloseWrite()
	b := make([]byte, 4096)
	var out []byte
	for {
		n, err := c.Read(b)
		out = append(out, b[:n]...)
		if err != nil {
			return string(out)
		}
	}
}

// TestSlirpSideBySide runs the same scenario against Debian's slirp4netns
// and ferry's slirp4netns mode and compares what callers can see.
func TestSlirpSideBySide(t *testing.T) {
	requireRoot(t)
	impls := slirpImpls(t, os.Getenv(nstest.EnvFerryBin))
	hostPort := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}()
	requests := []string{
		`{"execute":"list_hostfwd"}`,
		fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":%d,"guest_port":80}}`, hostPort),
		fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"proto":"udp","host_port":%d,"guest_addr":"10.0.2.100","guest_port":53}}`, hostPort),
		`{"execute":"list_hostfwd"}`,
		fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":%d,"guest_port":80}}`, hostPort),
		`{"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":1,"guest_port":80}}`,
		`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":0,"guest_port":80}}`,
		`{"execute":"remove_hostfwd","arguments":{"id":1}}`,
		`{"execute":"remove_hostfwd","arguments":{"id":1}}`,
		`{"execute":"remove_hostfwd","arguments":{}}`,
		`{"execute":"nope"}`,
		`{"foo":1}`,
		`not json`,
		`{"execute":"list_hostfwd"}`,
	}
	type outcome struct {
		bannerKeys []string
		replies    []string
		addrs      string
		routes     string
		lease      string
		exitCode   int
		stderr     string
	}
	results := map[string]outcome{}
	for name, bin := range impls {
		t.Run(name, func(t *testing.T) {
			r := startSlirp(t, bin)
			var o outcome
			for _, req := range requests {
				o.replies = append(o.replies, r.api(t, req))
			}
			o.addrs = r.w.mustInGuest(t, "ip", "-4", "-o", "addr", "show").Stdout
			o.routes = r.w.mustInGuest(t, "ip", "-4", "route").Stdout
			lease := r.w.inGuest(t, "timeout", "15", "busybox", "udhcpc", "-f", "-n", "-q", "-i", "tap0", "-s", "/bin/true", "-t", "3", "-T", "2")
			o.lease = regexp.MustCompile(`lease of .*`).FindString(lease.Stdout + lease.Stderr)
			r.exitW.Close()
			code, err := r.f.Wait(5 * time.Second)
			if err != nil {
				t.Fatalf("after exit-fd closed: %v", err)
			}
			o.exitCode, o.stderr = code, r.f.Stderr()
			// slirp4netns's stdout is a file here, so fully buffered: the
			// banner is complete only once it has exited.
			for _, l := range strings.Split(r.f.Stdout(), "\n") {
				o.bannerKeys = append(o.bannerKeys, strings.SplitN(l, ":", 2)[0])
			}
			results[name] = o
		})
	}
	ref, got := results["debian"], results["ferry"]
	if len(ref.replies) == 0 || len(got.replies) == 0 {
		t.Fatal("a side did not run")
	}
	if !slices.Equal(ref.bannerKeys, got.bannerKeys) {
		t.Errorf("banner keys differ:\nslirp4netns %q\nferry       %q", ref.bannerKeys, got.bannerKeys)
	}
	for i := range requests {
		if ref.replies[i] != got.replies[i] {
			t.Errorf("API %s:\nslirp4netns %s\nferry       %s", requests[i], ref.replies[i], got.replies[i])
		}
	}
	clean := regexp.MustCompile(`\\\s+valid_lft.*|^\d+: `)
	if clean.ReplaceAllString(ref.addrs, "") != clean.ReplaceAllString(got.addrs, "") || ref.routes != got.routes {
		t.Errorf("guest config differs:\nslirp4netns %s%s\nferry       %s%s", ref.addrs, ref.routes, got.addrs, got.routes)
	}
	if ref.lease == "" || ref.lease != got.lease {
		t.Errorf("DHCP: slirp4netns %q, ferry %q", ref.lease, got.lease)
	}
	if got.exitCode != ref.exitCode || !strings.Contains(got.stderr, "exitfd event") {
		t.Errorf("exit-fd: ferry exit %d, stderr %q; slirp4netns exit %d", got.exitCode, got.stderr, ref.exitCode)
	}
}

// TestSlirpDisableFlags compares --disable-host-loopback and --disable-dns:
// the gateway answers "network unreachable", the DNS address stays silent.
func TestSlirpDisableFlags(t *testing.T) {
	requireRoot(t)
	impls := slirpImpls(t, os.Getenv(nstest.EnvFerryBin))
	outcomes := map[string]string{}
	for name, bin := range impls {
		t.Run(name, func(t *testing.T) {
			r := startSlirp(t, bin, "--disable-host-loopback", "--disable-dns")
			l, err := nstest.ListenIn(r.w.host.Path, "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			_, dialErr := nstest.DialIn(r.w.ctx, r.w.guest.NetnsPath, "tcp", fmt.Sprintf("10.0.2.2:%d", l.Addr().(*net.TCPAddr).Port))
			dig := r.w.inGuest(t, "dig", "+time=1", "+tries=1", "@10.0.2.3", "example.test")
			digTCP := r.w.inGuest(t, "dig", "+tcp", "+time=1", "+tries=1", "@10.0.2.3", "example.test")
			outcomes[name] = fmt.Sprintf("gateway unreachable: %v; dns udp exit %d, tcp exit %d",
				errors.Is(dialErr, syscall.ENETUNREACH), dig.ExitCode, digTCP.ExitCode)
		})
	}
	t.Logf("slirp4netns: %s", outcomes["debian"])
	t.Logf("ferry:       %s", outcomes["ferry"])
	if outcomes["debian"] == "" || outcomes["debian"] != outcomes["ferry"] {
		t.Errorf("outcomes differ:\nslirp4netns %s\nferry       %s", outcomes["debian"], outcomes["ferry"])
	}
	if !strings.Contains(outcomes["ferry"], "unreachable: true") || !strings.Contains(outcomes["ferry"], "udp exit 9, tcp exit 9") {
		t.Errorf("ferry: %s; want network unreachable and dig timing out (exit 9)", outcomes["ferry"])
	}
}
