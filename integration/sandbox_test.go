package integration

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ferrynet/ferry/integration/nstest"
)

// probeEnv turns on ferry's test-only seccomp probe (see package sandbox):
// just before readiness it tries denied syscalls on several threads and
// logs what each got.
var probeEnv = []string{"env", "FERRY_DEBUG_SECCOMP_PROBE=1"}

// sandboxRun is a sandboxed ferry serving a guest.
type sandboxRun struct {
	w     *world
	f     *nstest.Ferry
	exitW *os.File
}

// startSandboxed runs bin with args (ending in the guest's PID) as the test
// user with a ready pipe at fd 3 and an exit pipe at fd 4, and waits until
// ferry is ready.
func startSandboxed(t *testing.T, w *world, bin string, args ...string) *sandboxRun {
	t.Helper()
	ready, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer ready.Close()
	exitR, exitW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exitW.Close() })
	f, err := nstest.StartFerry(t, bin, w.host, w.lab.User, nstest.FerryOpts{
		Args: args, ExtraFiles: []*os.File{readyW, exitR}, Wrap: probeEnv,
	})
	readyW.Close()
	exitR.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := nstest.WaitReady(w.ctx, ready, f, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	return &sandboxRun{w: w, f: f, exitW: exitW}
}

// checkConfined checks, from the host, every thread of the process the
// test started: only CAP_NET_BIND_SERVICE (in the guest's user namespace,
// which it must have entered), seccomp filter mode when seccomp is set, a
// mount namespace of its own whose root holds only etc and run.
func checkConfined(t *testing.T, r *sandboxRun, seccomp bool) {
	t.Helper()
	pid := r.f.PID()
	select {
	case <-r.f.Done():
		t.Fatalf("ferry (PID %d) exited: %s", pid, r.f.Stderr())
	default:
	}
	proc := "/proc/" + strconv.Itoa(pid)
	userns, _ := os.Readlink(proc + "/ns/user")
	guestUserns, _ := os.Readlink(r.w.guest.UsernsPath)
	if userns == "" || userns != guestUserns {
		t.Errorf("ferry's user namespace %q, want the guest's %q", userns, guestUserns)
	}
	guestMnt, _ := os.Readlink("/proc/" + strconv.Itoa(r.w.guest.PID) + "/ns/mnt")
	selfMnt, _ := os.Readlink("/proc/self/ns/mnt")
	tasks, err := filepath.Glob(proc + "/task/*")
	if err != nil || len(tasks) < 2 {
		t.Fatalf("threads of %d: %v %v", pid, tasks, err)
	}
	wantSeccomp := "0"
	if seccomp {
		wantSeccomp = "2"
	}
	mnts := map[string]bool{}
	for _, task := range tasks {
		status, err := os.ReadFile(task + "/status")
		if err != nil {
			t.Fatal(err)
		}
		fields := map[string]string{}
		for _, l := range strings.Split(string(status), "\n") {
			k, v, _ := strings.Cut(l, ":")
			fields[k] = strings.TrimSpace(v)
		}
		for k, want := range map[string]string{
			"CapEff": "0000000000000400", "CapPrm": "0000000000000400", "CapInh": "0000000000000000",
			"CapBnd": "0000000000000400", "CapAmb": "0000000000000000", "NoNewPrivs": "1", "Seccomp": wantSeccomp,
		} {
			if fields[k] != want {
				t.Errorf("%s: %s: %q, want %q", task, k, fields[k], want)
			}
		}
		mnt, err := os.Readlink(task + "/ns/mnt")
		if err != nil {
			t.Fatal(err)
		}
		if mnt == selfMnt || mnt == guestMnt {
			t.Errorf("%s: mount namespace %s is not ferry's own (test %s, guest %s)", task, mnt, selfMnt, guestMnt)
		}
		mnts[mnt] = true
	}
	if len(mnts) != 1 {
		t.Errorf("threads in several mount namespaces: %v", mnts)
	}
	entries, err := os.ReadDir(proc + "/root")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"etc", "run"}) {
		t.Errorf("ferry's root holds %q, want only etc and run", names)
	}
}

// probeLine is one line of the seccomp probe's log.
var probeLine = regexp.MustCompile(`msg="seccomp probe" tid=(\d+) keyctl=(\S+) process_vm_readv=(\S+) unshare=(\S+)`)

// checkProbe checks the probe's lines: denied syscalls got EPERM on every
// thread (want "EPERM"), or the control without seccomp got through
// (want "ok").
func checkProbe(t *testing.T, stderr, want string) {
	t.Helper()
	lines := probeLine.FindAllStringSubmatch(stderr, -1)
	tids := map[string]bool{}
	for _, m := range lines {
		tids[m[1]] = true
		if m[3] != want {
			t.Errorf("thread %s: process_vm_readv %s, want %s", m[1], m[3], want)
		}
		if want == "EPERM" && (m[2] != "EPERM" || m[4] != "EPERM") {
			t.Errorf("thread %s: keyctl %s, unshare %s, want EPERM", m[1], m[2], m[4])
		}
	}
	if len(lines) < 8 || len(tids) < 2 {
		t.Errorf("probe ran on %d threads (%d lines), want 8 lines on several threads:\n%s", len(tids), len(lines), stderr)
	}
}

// TestSandboxAttach runs `ferry attach --enable-sandbox --enable-seccomp`
// and checks the confinement of every thread, HTTP to the host's loopback,
// DNS to a loopback upstream, denied syscalls, and exit-fd.
func TestSandboxAttach(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	port, hits := serveHostPage(t, w)
	up := &upstream{ids: map[string][]uint16{}}
	dnsPort, err := nstest.ServeDNS(t, w.host.Path, "127.0.0.1", up)
	if err != nil {
		t.Fatal(err)
	}
	r := startSandboxed(t, w, w.lab.Ferry, "attach", "-c", "-r", "3", "-e", "4", "--enable-sandbox", "--enable-seccomp",
		"--dns-upstream", fmt.Sprintf("127.0.0.1:%d", dnsPort), strconv.Itoa(w.guest.PID))
	checkConfined(t, r, true)
	checkProbe(t, r.f.Stderr(), "EPERM")

	url := fmt.Sprintf("http://10.0.2.2:%d/", port)
	if res := w.mustInGuest(t, "curl", "-s", "--max-time", "10", url); res.Stdout != page || hits.Load() != 1 {
		t.Errorf("curl %s: %q, %d hits; want %q, 1 hit", url, res.Stdout, hits.Load(), page)
	}
	for _, transport := range []string{"+notcp", "+tcp"} {
		out, status, _ := dig(t, w, transport, dnsName, "A")
		if status != "NOERROR" || !strings.Contains(out, dnsA) {
			t.Errorf("dig %s %s: status %q, want NOERROR with %s\n%s", transport, dnsName, status, dnsA, out)
		}
	}
	// Everything still confined after serving.
	checkConfined(t, r, true)

	start := time.Now()
	r.exitW.Close()
	expectPromptExit(t, w, r.f, start, w.guest.PID)
}

// TestSandboxWithoutSeccomp is the control: --enable-sandbox alone confines
// the same way but installs no filter, and the probe's syscalls go through;
// the target's exit ends ferry.
func TestSandboxWithoutSeccomp(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	port, _ := serveHostPage(t, w)
	r := startSandboxed(t, w, w.lab.Ferry, "attach", "-c", "-r", "3", "--enable-sandbox", "--enable-seccomp=false", strconv.Itoa(w.guest.PID))
	checkConfined(t, r, false)
	checkProbe(t, r.f.Stderr(), "ok")
	w.mustInGuest(t, "curl", "-s", "--max-time", "10", fmt.Sprintf("http://10.0.2.2:%d/", port))
	start := time.Now()
	if err := w.guest.Kill(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	expectPromptExit(t, w, r.f, start)
}

// TestSandboxSlirp4netns runs ferry's slirp4netns mode as podman does
// (--enable-sandbox --enable-seccomp, an API socket, -r and -e), with DNS
// from the host namespace's resolv.conf pointing at a loopback server.
func TestSandboxSlirp4netns(t *testing.T) {
	requireRoot(t)
	slirp := slirpImpls(t, os.Getenv(nstest.EnvFerryBin))["ferry"]
	w := newWorld(t, 2*time.Minute)
	port, hits := serveHostPage(t, w)

	// ip netns exec binds /etc/netns/NAME/resolv.conf over /etc/resolv.conf:
	// ferry's only DNS upstream is then 127.0.0.1:53 in the host namespace.
	etc := filepath.Join("/etc/netns", w.host.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pc, err := nstest.ListenPacketIn(w.host.Path, "udp", "127.0.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: &upstream{ids: map[string][]uint16{}}}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })

	dir, err := os.MkdirTemp("", "ferry-sbx-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	sock := filepath.Join(dir, "api.sock")
	r := startSandboxed(t, w, slirp, "--enable-sandbox", "--enable-seccomp", "--mtu=65520", "-c", "-r", "3", "-e", "4",
		"-a", sock, strconv.Itoa(w.guest.PID), "tap0")
	checkConfined(t, r, true)
	checkProbe(t, r.f.Stderr(), "EPERM")
	if out := r.f.Stdout(); !strings.Contains(out, "Starting slirp") {
		t.Errorf("no banner on stdout: %q", out)
	}

	// The API socket, bound before the sandbox, still serves.
	api := (&slirpRun{sock: sock}).api
	hostPort := freePort(t)
	if got := api(t, fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":%d,"guest_port":80}}`, hostPort)); got != `{"return":{"id":1}}` {
		t.Errorf("add_hostfwd: %s", got)
	}
	if got := api(t, `{"execute":"list_hostfwd"}`); !strings.Contains(got, fmt.Sprintf(`"host_port":%d`, hostPort)) {
		t.Errorf("list_hostfwd: %s", got)
	}

	url := fmt.Sprintf("http://10.0.2.2:%d/", port)
	if res := w.mustInGuest(t, "curl", "-s", "--max-time", "10", url); res.Stdout != page || hits.Load() != 1 {
		t.Errorf("curl %s: %q, %d hits; want %q, 1 hit", url, res.Stdout, hits.Load(), page)
	}
	out, status, _ := dig(t, w, "+notcp", dnsName, "A")
	if status != "NOERROR" || !strings.Contains(out, dnsA) {
		t.Errorf("dig %s: status %q, want NOERROR with %s\n%s", dnsName, status, dnsA, out)
	}

	start := time.Now()
	r.exitW.Close()
	code, err := r.f.Wait(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if took := r.f.ExitedAt().Sub(start); code != 0 || took > exitBound || !strings.Contains(r.f.Stderr(), "exitfd event") {
		t.Errorf("after exit-fd: exit %d after %v, stderr %q; want 0 within %v and \"exitfd event\"", code, took, r.f.Stderr(), exitBound)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("API socket %s left after exit: %v", sock, err)
	}
}

// freePort returns a TCP port free on the test's loopback.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
