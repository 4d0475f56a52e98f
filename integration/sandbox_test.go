package integration

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/ferrynet/ferry/integration/nstest"
)

// probeEnv turns on ferry's test-only sandbox probe (see package sandbox):
// just before readiness it tries denied syscalls and file accesses Landlock
// refuses on several threads and logs what each got.
var probeEnv = []string{"env", "FERRY_DEBUG_SECCOMP_PROBE=1"}

// failEnv is probeEnv that also makes the sandbox fail to build, just
// before pivot_root (a test-only hook in nsenter/sandbox.c).
var failEnv = []string{"env", "FERRY_DEBUG_SECCOMP_PROBE=1", "FERRY_DEBUG_SANDBOX_FAIL=1"}

// landlockABI is the kernel's Landlock ABI version, 0 without Landlock.
func landlockABI() int {
	v, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
	if errno != 0 {
		return 0
	}
	return int(v)
}

// sandboxRun is a sandboxed ferry serving a guest.
type sandboxRun struct {
	w     *world
	f     *nstest.Ferry
	exitW *os.File
}

// startSandboxed runs bin with args (ending in the guest's PID) as the test
// user with a ready pipe at fd 3 and an exit pipe at fd 4, and the probe
// on, and waits until ferry is ready.
func startSandboxed(t *testing.T, w *world, bin string, args ...string) *sandboxRun {
	t.Helper()
	return startWrapped(t, w, probeEnv, bin, args...)
}

// startWrapped is startSandboxed with wrap (e.g. probeEnv) before ferry.
func startWrapped(t *testing.T, w *world, wrap []string, bin string, args ...string) *sandboxRun {
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
		Args: args, ExtraFiles: []*os.File{readyW, exitR}, Wrap: wrap,
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
// mount namespace of its own whose root is a tmpfs holding only root
// (default: etc and run).
func checkConfined(t *testing.T, r *sandboxRun, seccomp bool, root ...string) {
	t.Helper()
	checkConfinedPID(t, r.f, r.w.guest.PID, seccomp, root...)
}

// checkConfinedPID is checkConfined for ferry f serving the guest process
// guestPID, whose user namespace ferry must be in.
func checkConfinedPID(t *testing.T, f *nstest.Ferry, guestPID int, seccomp bool, root ...string) {
	t.Helper()
	pid := f.PID()
	select {
	case <-f.Done():
		t.Fatalf("ferry (PID %d) exited: %s", pid, f.Stderr())
	default:
	}
	proc := "/proc/" + strconv.Itoa(pid)
	userns, _ := os.Readlink(proc + "/ns/user")
	guestUserns, _ := os.Readlink("/proc/" + strconv.Itoa(guestPID) + "/ns/user")
	if userns == "" || userns != guestUserns {
		t.Errorf("ferry's user namespace %q, want the guest's %q", userns, guestUserns)
	}
	guestMnt, _ := os.Readlink("/proc/" + strconv.Itoa(guestPID) + "/ns/mnt")
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
	if root == nil {
		root = []string{"etc", "run"}
	}
	if !slices.Equal(names, root) {
		t.Errorf("ferry's root holds %q, want only %q", names, root)
	}
	if fs := rootFS(t, pid); fs != "tmpfs" {
		t.Errorf("ferry's root is a %q, want a tmpfs", fs)
	}
}

// rootFS returns the file system type of process pid's root, from its
// mountinfo.
func rootFS(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 || f[4] != "/" {
			continue
		}
		if _, after, ok := strings.Cut(l, " - "); ok {
			return strings.Fields(after)[0]
		}
	}
	return ""
}

// checkUnconfined checks that no thread of r's process carries a seccomp
// filter (or, with seccomp, that every one does) and that its root is the
// host's.
func checkUnconfined(t *testing.T, r *sandboxRun, seccomp bool) {
	t.Helper()
	proc := "/proc/" + strconv.Itoa(r.f.PID())
	tasks, err := filepath.Glob(proc + "/task/*")
	if err != nil || len(tasks) < 2 {
		t.Fatalf("threads of %s: %v %v", proc, tasks, err)
	}
	want := "0"
	if seccomp {
		want = "2"
	}
	for _, task := range tasks {
		status, err := os.ReadFile(task + "/status")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(status), "\nSeccomp:\t"+want+"\n") {
			t.Errorf("%s: Seccomp not %s:\n%s", task, want, status)
		}
	}
	if _, err := os.Stat(proc + "/root/usr"); err != nil {
		t.Errorf("ferry's root is not the host's: %v", err)
	}
}

// probeLine is one line of the sandbox probe's log.
var probeLine = regexp.MustCompile(`msg="seccomp probe" tid=(\d+) keyctl=(\S+) process_vm_readv=(\S+) unshare=(\S+) landlock_root=(\S+) landlock_escape=(\S+) landlock_etc=(\S+)`)

// probeWant is what every thread of the probe must report: seccomp
// "EPERM" (denied syscalls refused) or "ok" (no filter: they go through);
// landlock "EACCES" (the root directory, and with escape the API socket
// directory's parent, refused) or "ok" (no Landlock), "" not to check.
type probeWant struct {
	seccomp, landlock string
	escape            bool
}

// checkProbe checks the probe's lines against want, on every thread.
func checkProbe(t *testing.T, stderr string, want probeWant) {
	t.Helper()
	lines := probeLine.FindAllStringSubmatch(stderr, -1)
	tids := map[string]bool{}
	for _, m := range lines {
		tids[m[1]] = true
		if m[3] != want.seccomp {
			t.Errorf("thread %s: process_vm_readv %s, want %s", m[1], m[3], want.seccomp)
		}
		if want.seccomp == "EPERM" && (m[2] != "EPERM" || m[4] != "EPERM") {
			t.Errorf("thread %s: keyctl %s, unshare %s, want EPERM", m[1], m[2], m[4])
		}
		if want.landlock != "" && m[5] != want.landlock {
			t.Errorf("thread %s: listing / got %s, want %s", m[1], m[5], want.landlock)
		}
		if want.landlock != "" && want.escape && m[6] != want.landlock {
			t.Errorf("thread %s: opening the API socket directory's parent got %s, want %s", m[1], m[6], want.landlock)
		}
		if m[7] != "ok" {
			t.Errorf("thread %s: listing /etc got %s, want ok", m[1], m[7])
		}
	}
	if len(lines) < 8 || len(tids) < 2 {
		t.Errorf("probe ran on %d threads (%d lines), want 8 lines on several threads:\n%s", len(tids), len(lines), stderr)
	}
}

// landlockWant is what the probe sees of Landlock in a sandboxed ferry:
// refusals when the kernel offers it.
func landlockWant() string {
	if landlockABI() > 0 {
		return "EACCES"
	}
	return "ok"
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
	checkProbe(t, r.f.Stderr(), probeWant{seccomp: "EPERM", landlock: landlockWant()})

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
	checkProbe(t, r.f.Stderr(), probeWant{seccomp: "ok", landlock: landlockWant()})
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
	checkProbe(t, r.f.Stderr(), probeWant{seccomp: "EPERM", landlock: landlockWant(), escape: true})
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

// TestSandboxDefault runs `ferry attach` without any sandbox flag and
// checks that it is confined (every thread: seccomp, capabilities, the
// guest's user namespace, a private tmpfs root; Landlock refusing what lies
// outside its rules) and that everything attach does still works under
// it: a port published at start and one added at run time through the API
// socket, ferry port and ferry stats on that socket, --pcap, outbound
// traffic, and exit-fd, after which the socket is gone.
func TestSandboxDefault(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	serveGuestPeer(t, w, 80)
	port, hits := serveHostPage(t, w)
	dir := apiDir(t, w) // below /tmp
	sock := filepath.Join(dir, "api.sock")
	pcap := filepath.Join(dir, "guest.pcap")
	r := startSandboxed(t, w, w.lab.Ferry, "attach", "-c", "-r", "3", "-e", "4", "-a", sock, "--pcap", pcap,
		"-p", "127.0.0.1:8080:80", strconv.Itoa(w.guest.PID))
	checkConfined(t, r, true, "etc", "run", "tmp") // tmp: the pcap file's directories
	checkProbe(t, r.f.Stderr(), probeWant{seccomp: "EPERM", landlock: landlockWant(), escape: true})
	// The TAP is read through io_uring, made before the filter, unless the
	// kernel has io_uring off.
	if want := fmt.Sprintf("sandbox=true landlock=%d seccomp=true tap_reads=%s", landlockABI(), wantTAPReads(t)); !strings.Contains(r.f.Stderr(), want) {
		t.Errorf("no %q in the log:\n%s", want, r.f.Stderr())
	}

	url := fmt.Sprintf("http://10.0.2.2:%d/", port)
	if res := w.mustInGuest(t, "curl", "-s", "--max-time", "10", url); res.Stdout != page || hits.Load() != 1 {
		t.Errorf("curl %s: %q, %d hits; want %q, 1 hit", url, res.Stdout, hits.Load(), page)
	}
	if got := curl(t, w, w.host, "http://127.0.0.1:8080/"); !strings.HasPrefix(got, "10.0.2.") {
		t.Errorf("published port 8080: the guest saw %q", got)
	}
	if got := apiCall(t, sock, `{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":8081,"guest_port":80}}`); !strings.HasPrefix(got, `{"return":{"id":`) {
		t.Errorf("add_hostfwd: %s", got)
	}
	if got := curl(t, w, w.host, "http://127.0.0.1:8081/"); !strings.HasPrefix(got, "10.0.2.") {
		t.Errorf("port 8081 added at run time: the guest saw %q", got)
	}
	if res := ferryPort(t, w, "ls", "--api", sock); !strings.Contains(res.Stdout, "80/tcp -> 127.0.0.1:8081") {
		t.Errorf("ferry port ls: %q", res.Stdout)
	}
	res, err := nstest.Exec(w.ctx, w.lab.Ferry, "stats", "--api", sock)
	if err != nil || res.ExitCode != 0 || !strings.Contains(res.Stdout, `"tcp_flows"`) {
		t.Errorf("ferry stats: %v %s", err, res)
	}
	b, err := os.ReadFile(pcap)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 24+16+54 || binary.LittleEndian.Uint32(b) != 0xa1b2c3d4 {
		t.Errorf("--pcap file: %d bytes, magic %x; want a pcap with frames", len(b), b[:min(4, len(b))])
	}
	checkConfined(t, r, true, "etc", "run", "tmp")

	start := time.Now()
	r.exitW.Close()
	expectPromptExit(t, w, r.f, start, w.guest.PID)
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("API socket %s left after exit: %v", sock, err)
	}
}

// TestSandboxOptOut checks that --no-sandbox leaves ferry unconfined: no
// seccomp filter on any thread, the host's root, no Landlock, ferry's own
// user namespace; the probe's syscalls and file accesses go through.
func TestSandboxOptOut(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	port, _ := serveHostPage(t, w)
	sock := filepath.Join(apiDir(t, w), "api.sock")
	r := startSandboxed(t, w, w.lab.Ferry, "attach", "-c", "-r", "3", "-e", "4", "-a", sock, "--no-sandbox", strconv.Itoa(w.guest.PID))
	checkUnconfined(t, r, false)
	checkProbe(t, r.f.Stderr(), probeWant{seccomp: "ok", landlock: "ok"})
	userns, _ := os.Readlink("/proc/" + strconv.Itoa(r.f.PID()) + "/ns/user")
	self, _ := os.Readlink("/proc/self/ns/user")
	if userns != self {
		t.Errorf("ferry --no-sandbox in user namespace %s, want the host's %s", userns, self)
	}
	w.mustInGuest(t, "curl", "-s", "--max-time", "10", fmt.Sprintf("http://10.0.2.2:%d/", port))
	start := time.Now()
	r.exitW.Close()
	expectPromptExit(t, w, r.f, start, w.guest.PID)
}

// TestSandboxFallback forces the sandbox to fail just before pivot_root
// (a test hook): by default ferry warns once and serves without it, seccomp
// still on every thread and the --pcap file (below /tmp, which the
// abandoned sandbox had covered with its tmpfs) written where asked; with
// --enable-sandbox given explicitly the same failure ends ferry.
func TestSandboxFallback(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	port, _ := serveHostPage(t, w)
	dir := apiDir(t, w)
	pcap := filepath.Join(dir, "guest.pcap")
	r := startWrapped(t, w, failEnv, w.lab.Ferry, "attach", "-c", "-r", "3", "-e", "4", "--pcap", pcap, strconv.Itoa(w.guest.PID))
	checkUnconfined(t, r, true)
	checkProbe(t, r.f.Stderr(), probeWant{seccomp: "EPERM", landlock: "ok"})
	stderr := r.f.Stderr()
	if n := strings.Count(stderr, "level=WARN msg=\"running without the sandbox"); n != 1 || !strings.Contains(stderr, "FERRY_DEBUG_SANDBOX_FAIL") {
		t.Errorf("%d warnings naming the cause, want 1:\n%s", n, stderr)
	}
	if !strings.Contains(stderr, "sandbox=false landlock=0 seccomp=true") {
		t.Errorf("the log does not say the sandbox is off:\n%s", stderr)
	}
	w.mustInGuest(t, "curl", "-s", "--max-time", "10", fmt.Sprintf("http://10.0.2.2:%d/", port))
	if st, err := os.Stat(pcap); err != nil || st.Size() < 24+16+54 {
		t.Errorf("--pcap file %s: %v, %v; want frames in it", pcap, st, err)
	}
	start := time.Now()
	r.exitW.Close()
	expectPromptExit(t, w, r.f, start, w.guest.PID)

	f, err := nstest.StartFerry(t, w.lab.Ferry, w.host, w.lab.User, nstest.FerryOpts{
		Args: []string{"attach", "--enable-sandbox", strconv.Itoa(w.guest.PID)}, Wrap: failEnv,
	})
	if err != nil {
		t.Fatal(err)
	}
	code, err := f.Wait(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if want := "ferry: sandbox: pivot_root (failure forced by FERRY_DEBUG_SANDBOX_FAIL): operation not permitted"; code == 0 || !strings.Contains(strings.ToLower(f.Stderr()), strings.ToLower(want)) {
		t.Errorf("explicit --enable-sandbox that cannot be built: exit %d, stderr %q; want an error %q", code, f.Stderr(), want)
	}
}

// TestSandboxRun checks that `ferry run` confines itself as attach does, by
// default: every thread of ferry in the command's user namespace with only
// CAP_NET_BIND_SERVICE, in seccomp filter mode, with a tmpfs root of its
// own, and the probe's syscalls and file accesses refused on every thread;
// the command still reaches the host's loopback, ferry passes a signal on
// and exits with the command's status, and leaves nothing behind.
func TestSandboxRun(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	port, hits := serveHostPage(t, w)
	dir, err := os.MkdirTemp("", "ferry-sandbox-run-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	before, _ := filepath.Glob("/tmp/ferry-run-*") // the generated files' directories
	script := fmt.Sprintf(`curl -s --max-time 10 http://10.0.2.2:%d/ > %s/page; touch %s/ready; exec sleep 60`, port, dir, dir)
	f, err := nstest.StartFerry(t, w.lab.Ferry, w.host, w.lab.User, nstest.FerryOpts{
		Args: []string{"run", "--", "sh", "-c", script}, Wrap: probeEnv,
	})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
			break
		}
		select {
		case <-f.Done():
			t.Fatalf("ferry run exited before its command was ready: %s", f.Stderr())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the command never got ready: %s", f.Stderr())
		}
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "page")); string(got) != page || hits.Load() != 1 {
		t.Errorf("curl from the command: %q, %d hits; want %q, 1 hit", got, hits.Load(), page)
	}
	kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", f.PID(), f.PID()))
	if err != nil {
		t.Fatal(err)
	}
	cmdPID, err := strconv.Atoi(strings.TrimSpace(string(kids)))
	if err != nil {
		t.Fatalf("ferry's children: %q, want the command's PID only", kids)
	}
	checkConfinedPID(t, f, cmdPID, true)
	checkProbe(t, f.Stderr(), probeWant{seccomp: "EPERM", landlock: landlockWant()})

	if err := f.Signal(syscall.SIGTERM); err != nil { // passed on to the command
		t.Fatal(err)
	}
	code, err := f.Wait(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code != 128+int(syscall.SIGTERM) {
		t.Errorf("ferry run exited %d, want %d (the command's, killed by SIGTERM)", code, 128+int(syscall.SIGTERM))
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", cmdPID)); err == nil {
		t.Errorf("the command (PID %d) outlived ferry run", cmdPID)
	}
	if left, _ := filepath.Glob("/tmp/ferry-run-*"); !slices.Equal(left, before) {
		t.Errorf("left behind: %q (before: %q)", left, before)
	}
}

// wantTAPReads is how ferry reads the TAP here: through io_uring unless
// kernel.io_uring_disabled turns it off for unprivileged users.
func wantTAPReads(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/kernel/io_uring_disabled")
	if err != nil || strings.TrimSpace(string(b)) == "0" {
		return "io_uring"
	}
	return "readv"
}
