package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// These tests run real rootless runtimes, as Debian packages them
// (rootlesskit 1.1, podman 4.3 with runc), unchanged, with ferry standing in
// for slirp4netns: the runtimes are given a symlink named slirp4netns that
// points at the ferry binary under test. Each runtime runs as the test user
// inside a test-made "host" network namespace, so the published port and
// the host loopback server both live there.
//
// The container (a shell under rootlesskit; a busybox root directory under
// podman) serves rtContainerPage on port 80, fetches rtHostPage from the
// host's loopback through 10.0.2.2, and then waits until the test has
// fetched its page through the published port and created the file "done"
// in a control directory it shares with the test.

const (
	rtHostPage      = "hello from the host's loopback"
	rtContainerPage = "hello from the container"
	// rtUnreachable is what the container prints when 10.0.2.2 does not
	// answer.
	rtUnreachable = "host loopback unreachable"
)

// rtEnv is one runtime scenario's world.
type rtEnv struct {
	ctx   context.Context
	lab   *nstest.Lab
	host  nstest.Netns
	dir   string // temporary directory for everything below, removed at the end
	home  string // the user's HOME and TMPDIR parent, owned by the user
	tmp   string // the user's TMPDIR
	ctl   string // control directory shared with the container
	www   string // the container page's directory (rootlesskit)
	slirp string // symlink named slirp4netns pointing at ferry
	// resolv is the resolv.conf bind-mounted over /etc/resolv.conf for the
	// runtime: it names the host namespace's loopback, where no DNS server
	// listens, so nothing ever reaches the machine's resolver.
	resolv     string
	runtimeDir string // XDG_RUNTIME_DIR, /run/user/UID
	podmanTmp  string // podman's --tmpdir

	hostPort int // the HTTP server on the host namespace's 127.0.0.1
	pubPort  int // the port the runtime publishes (on the host namespace)
}

// requireBinaries fails t when a runtime the tests drive is not installed.
func requireBinaries(t *testing.T, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s is missing (apt-get install rootlesskit podman runc, as .ci/run does): %v", b, err)
		}
	}
}

// newRTEnv sets up the test user's surroundings for a runtime: a host
// namespace with an HTTP server on its loopback, a HOME, an
// XDG_RUNTIME_DIR, the slirp4netns symlink and a control directory.
func newRTEnv(t *testing.T, timeout time.Duration) *rtEnv {
	t.Helper()
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	lab, err := nstest.NewLab(ctx, t, "")
	if err != nil {
		t.Fatal(err)
	}
	e := &rtEnv{ctx: ctx, lab: lab}
	if e.host, err = lab.NewNetns(ctx, "host"); err != nil {
		t.Fatal(err)
	}
	u := lab.User

	if e.dir, err = os.MkdirTemp("", "ferry-rt-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(e.dir); err != nil {
			t.Errorf("remove %s: %v", e.dir, err)
		}
	})
	if err := os.Chmod(e.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Anything of the user's still running once the scenario is over is a
	// leftover: podman's rootless pause process is expected (podman keeps
	// it on purpose) and is ended by its PID; anything else is reported
	// and ended by its PID too. This runs before e.dir is removed (it
	// reads pause.pid there) and before the lab's own leftover check.
	t.Cleanup(func() { e.endUserProcesses(t) })
	e.home = filepath.Join(e.dir, "home")
	e.tmp = filepath.Join(e.home, "tmp")
	e.ctl = filepath.Join(e.dir, "ctl")
	e.www = filepath.Join(e.dir, "www")
	for _, d := range []string{e.home, e.tmp, e.ctl, e.www, filepath.Join(e.dir, "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{e.home, e.tmp, e.ctl} {
		if err := os.Chown(d, u.UID, u.GID); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(e.home, 0o700)
	if err := os.WriteFile(filepath.Join(e.www, "index.html"), []byte(rtContainerPage+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.slirp = filepath.Join(e.dir, "bin", "slirp4netns")
	if err := os.Symlink(lab.Ferry, e.slirp); err != nil {
		t.Fatal(err)
	}
	e.resolv = filepath.Join(e.dir, "resolv.conf")
	if err := os.WriteFile(e.resolv, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	e.runtimeDir = "/run/user/" + strconv.Itoa(u.UID)
	if _, err := os.Stat(e.runtimeDir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(e.runtimeDir, 0o700); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(e.runtimeDir) })
	} else {
		// Only what the runtimes put there.
		t.Cleanup(func() {
			for _, d := range []string{"libpod", "containers", "podman"} {
				os.RemoveAll(filepath.Join(e.runtimeDir, d))
			}
		})
	}
	if err := os.Chown(e.runtimeDir, u.UID, u.GID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(e.runtimeDir, 0o700); err != nil {
		t.Fatal(err)
	}

	if e.hostPort, err = nstest.ServeHTTP(t, e.host.Path, "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, rtHostPage)
	})); err != nil {
		t.Fatal(err)
	}
	l, err := nstest.ListenIn(e.host.Path, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.pubPort = l.Addr().(*net.TCPAddr).Port
	l.Close()
	return e
}

// endUserProcesses ends, by PID, whatever of the test user's still runs.
func (e *rtEnv) endUserProcesses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// podman writes pause.pid into its --tmpdir (by default
	// $XDG_RUNTIME_DIR/libpod/tmp).
	pause := map[int]bool{}
	for _, f := range []string{filepath.Join(e.podmanTmp, "pause.pid"), filepath.Join(e.runtimeDir, "libpod", "tmp", "pause.pid")} {
		if b, err := os.ReadFile(f); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				pause[pid] = true
			}
		}
	}
	// Give the runtimes' own teardown (conmon, rootlesskit's child) a
	// moment before calling what is left a leftover.
	if err := nstest.WaitNoUserProcesses(ctx, e.lab.User.Name, 2*time.Second); err == nil {
		return
	}
	procs, err := nstest.UserProcesses(ctx, e.lab.User.Name)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	for _, p := range procs {
		f := strings.Fields(p)
		if len(f) == 0 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			continue
		}
		if !pause[pid] && !strings.Contains(p, "<defunct>") {
			t.Errorf("left running after the runtime exited: %s", p)
		}
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// userCommand returns a command that runs args as the test user in the host
// namespace, with /etc/resolv.conf replaced by e.resolv. It uses nsenter and
// a private mount namespace rather than `ip netns exec`, which remounts
// /sys and so hides the cgroup mounts runc needs.
func (e *rtEnv) userCommand(ctx context.Context, args ...string) *exec.Cmd {
	u := e.lab.User
	full := []string{"nsenter", "--net=" + e.host.Path, "--",
		"unshare", "--mount", "--propagation", "private", "--",
		"sh", "-c", `mount --bind "$0" /etc/resolv.conf && exec "$@"`, e.resolv,
		"setpriv", "--reuid=" + strconv.Itoa(u.UID), "--regid=" + strconv.Itoa(u.GID), "--init-groups",
		"env", "-i",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + e.home, "USER=" + u.Name, "LOGNAME=" + u.Name, "LANG=C",
		"XDG_RUNTIME_DIR=" + e.runtimeDir, "TMPDIR=" + e.tmp,
	}
	cmd := exec.CommandContext(ctx, full[0], append(full[1:], args...)...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// rtScript is the container's shell script. busybox is the only program it
// needs; www is the directory it serves and ctl the control directory, as
// the container sees them. With ipv6 it first waits for an fd00::/64
// address (SLAAC from the Router Advertisements of slirp4netns -6).
func (e *rtEnv) rtScript(www, ctl string, ipv6 bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "busybox httpd -f -p 80 -h %s & httpd=$!\n", www)
	if ipv6 {
		b.WriteString(`i=0; until busybox ip -6 addr show | busybox grep -q 'inet6 fd00:'; do i=$((i+1)); [ $i -gt 100 ] && break; busybox sleep 0.1; done` + "\n")
		b.WriteString("echo \"ipv6: $(busybox ip -6 addr show | busybox grep -o 'inet6 fd00:[^ ]*')\"\n")
	}
	fmt.Fprintf(&b, "if out=$(busybox timeout 10 busybox wget -q -O - http://10.0.2.2:%d/ 2>&1); then echo \"host loopback: $out\"; else echo \"%s: $out\"; fi\n", e.hostPort, rtUnreachable)
	b.WriteString("echo ready\n")
	fmt.Fprintf(&b, "i=0; until [ -e %s/done ]; do i=$((i+1)); [ $i -gt 600 ] && break; busybox sleep 0.1; done\n", ctl)
	b.WriteString("kill $httpd; wait $httpd 2>/dev/null; exit 0\n")
	return b.String()
}

// rtCase says what a scenario expects.
type rtCase struct {
	loopback bool // 10.0.2.2 reaches the host's loopback
	ipv6     bool // the container gets an fd00::/64 address
}

// runScenario starts cmd, fetches the container's page through the
// published port from the host namespace, lets the container finish, and
// checks what it printed.
func (e *rtEnv) runScenario(t *testing.T, cmd *exec.Cmd, want rtCase) {
	t.Helper()
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	t.Logf("$ %s", strings.Join(cmd.Args[len(cmd.Args)-countRuntimeArgs(cmd.Args):], " "))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
	// finish lets the container end, waits for the runtime and logs its
	// output.
	finish := func() error {
		os.WriteFile(filepath.Join(e.ctl, "done"), nil, 0o644)
		select {
		case <-exited:
		case <-e.ctx.Done():
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			waitErr = fmt.Errorf("still running when the test's time ran out (%v)", waitErr)
		}
		t.Logf("stdout:\n%s", stdout.String())
		if s := stderr.String(); s != "" {
			t.Logf("stderr:\n%s", s)
		}
		return waitErr
	}

	got, err := e.fetchPublished(exited)
	if err != nil {
		finish()
		t.Fatalf("published port 127.0.0.1:%d: %v", e.pubPort, err)
	}
	if strings.TrimSpace(got) != rtContainerPage {
		t.Errorf("published port served %q, want %q", got, rtContainerPage)
	}
	if err := finish(); err != nil {
		t.Fatalf("runtime: %v", err)
	}
	out := stdout.String()
	if want.loopback {
		if !strings.Contains(out, "host loopback: "+rtHostPage) {
			t.Errorf("the container did not reach the host's loopback through 10.0.2.2")
		}
	} else if !strings.Contains(out, rtUnreachable) {
		t.Errorf("the container reached the host's loopback through 10.0.2.2 although it should not")
	}
	if want.ipv6 && !strings.Contains(out, "ipv6: inet6 fd00:") {
		t.Errorf("the container got no fd00::/64 address")
	}
}

// countRuntimeArgs is how many of a userCommand's arguments are the
// runtime's own, for logging.
func countRuntimeArgs(args []string) int {
	for i, a := range args {
		if strings.HasPrefix(a, "TMPDIR=") {
			return len(args) - i - 1
		}
	}
	return len(args)
}

// fetchPublished fetches the published page from the host namespace's
// loopback, retrying until it answers, the runtime exits or ctx expires.
func (e *rtEnv) fetchPublished(exited <-chan struct{}) (string, error) {
	client := &http.Client{
		Timeout: 3 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return nstest.DialIn(ctx, e.host.Path, network, addr)
			},
		},
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", e.pubPort)
	var lastErr error
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(b), nil
			}
			err = fmt.Errorf("status %s, body %q, %v", resp.Status, b, rerr)
		}
		lastErr = err
		select {
		case <-exited:
			return "", fmt.Errorf("the runtime exited before serving; last error: %v", lastErr)
		case <-e.ctx.Done():
			return "", fmt.Errorf("%v; last error: %v", e.ctx.Err(), lastErr)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestRootlessKit runs Debian's rootlesskit with ferry as its slirp4netns.
func TestRootlessKit(t *testing.T) {
	requireRoot(t)
	requireBinaries(t, "rootlesskit")
	for _, tc := range []struct {
		name  string
		flags []string
		want  rtCase
	}{
		{"port-driver=slirp4netns", []string{"--port-driver=slirp4netns"}, rtCase{loopback: true}},
		{"port-driver=builtin", []string{"--port-driver=builtin"}, rtCase{loopback: true}},
		{"disable-host-loopback", []string{"--port-driver=builtin", "--disable-host-loopback"}, rtCase{}},
		{"ipv6", []string{"--port-driver=slirp4netns", "--ipv6"}, rtCase{loopback: true, ipv6: true}},
		{"sandbox-seccomp", []string{"--port-driver=slirp4netns", "--slirp4netns-sandbox=true", "--slirp4netns-seccomp=true"}, rtCase{loopback: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRTEnv(t, 40*time.Second)
			// --debug makes rootlesskit show slirp4netns's error messages.
			args := []string{"rootlesskit", "--debug", "--net=slirp4netns", "--slirp4netns-binary=" + e.slirp}
			args = append(args, tc.flags...)
			args = append(args, "-p", fmt.Sprintf("127.0.0.1:%d:80/tcp", e.pubPort),
				"--copy-up=/etc", "--copy-up=/run",
				"sh", "-c", e.rtScript(e.www, e.ctl, tc.want.ipv6))
			e.runScenario(t, e.userCommand(e.ctx, args...), tc.want)
		})
	}
}

// busyboxRootfs builds a container root directory at dir, owned by the
// test user (root in the container): the installed busybox (Debian's
// busybox or busybox-static) with the libraries it links against, /bin/sh,
// and e.www's page under /www.
func (e *rtEnv) busyboxRootfs(t *testing.T, dir string) {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox is missing (apt-get install busybox): %v", err)
	}
	if bb, err = filepath.EvalSymlinks(bb); err != nil {
		t.Fatal(err)
	}
	files := []string{bb}
	// A static busybox makes ldd exit 1 ("not a dynamic executable").
	res, err := nstest.Exec(e.ctx, "ldd", bb)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(res.Stdout) {
		if strings.HasPrefix(f, "/") {
			files = append(files, f)
		}
	}
	copyFile := func(src, dst string) {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(bb, filepath.Join(dir, "bin", "busybox"))
	for _, f := range files[1:] {
		copyFile(f, filepath.Join(dir, f))
	}
	copyFile(filepath.Join(e.www, "index.html"), filepath.Join(dir, "www", "index.html"))
	if err := os.Symlink("busybox", filepath.Join(dir, "bin", "sh")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"etc", "proc", "sys", "dev", "tmp", "ctl"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	u := e.lab.User
	if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, u.UID, u.GID)
	}); err != nil {
		t.Fatal(err)
	}
}

// TestPodman runs Debian's podman (with runc) with ferry as its
// slirp4netns, on a root directory made of busybox since no image registry
// is reachable. Its storage lives in the test's temporary directory.
func TestPodman(t *testing.T) {
	requireRoot(t)
	requireBinaries(t, "podman", "runc")
	for _, tc := range []struct {
		name    string
		network string
		want    rtCase
	}{
		{"port_handler=slirp4netns", "slirp4netns:port_handler=slirp4netns,allow_host_loopback=true", rtCase{loopback: true}},
		{"port_handler=rootlesskit", "slirp4netns:allow_host_loopback=true", rtCase{loopback: true}},
		{"enable_ipv6", "slirp4netns:enable_ipv6=true,allow_host_loopback=true", rtCase{loopback: true, ipv6: true}},
		// podman's default: --disable-host-loopback.
		{"defaults", "slirp4netns", rtCase{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRTEnv(t, 60*time.Second)
			rootfs := filepath.Join(e.dir, "rootfs")
			e.busyboxRootfs(t, rootfs)
			store := filepath.Join(e.home, "storage")
			// podman's --tmpdir holds the API socket, whose path must fit
			// in sun_path with a 64-character container ID.
			e.podmanTmp = filepath.Join(e.dir, "p")
			if err := os.Mkdir(e.podmanTmp, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(e.podmanTmp, e.lab.User.UID, e.lab.User.GID); err != nil {
				t.Fatal(err)
			}
			args := []string{"podman",
				"--root", store, "--runroot", filepath.Join(e.tmp, "runroot"), "--storage-driver", "vfs",
				"--tmpdir", e.podmanTmp, "--events-backend", "file",
				"--runtime", "runc", "--cgroup-manager", "cgroupfs", "--network-cmd-path", e.slirp,
				"run", "--rm", "--network", tc.network,
				"-p", fmt.Sprintf("%d:80", e.pubPort),
				"-v", e.ctl + ":/ctl",
				"--rootfs", rootfs,
				"/bin/sh", "-c", e.rtScript("/www", "/ctl", tc.want.ipv6)}
			e.runScenario(t, e.userCommand(e.ctx, args...), tc.want)
		})
	}
}
