package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferrynet/ferry/bridge"
	"github.com/ferrynet/ferry/integration/nstest"
)

// This file runs Debian's podman 4.3 as root, with its CNI backend and runc,
// on a network whose conflist (spec 1.0.0, which podman 4.3's libcni
// understands) has a single plugin of type "ferry": the ferry binary under
// test, found through containers.conf's cni_plugin_dirs. Everything podman
// keeps (--root, --runroot, --tmpdir, --network-config-dir, the events
// file) lives in a temporary directory, and podman runs inside a test-made
// "host" network namespace entered with `ip netns exec`.
//
// Two things keep podman from working under a plain `ip netns exec HOST
// podman ...` per call, and this test works around both:
//
//   - `ip netns exec` gives every call a new mount namespace, a slave of the
//     machine's, in which /sys is replaced by a sysfs of the target
//     namespace. That hides the cgroup mounts under /sys/fs/cgroup, and runc
//     fails ("no cgroup mount found in mountinfo"). Worse, podman (as root)
//     pins each container's network namespace with a bind mount at
//     /run/netns/netns-UUID made in its own mount namespace; in a slave mount
//     namespace that mount does not propagate back, so the next `ip netns
//     exec` call (podman exec, podman rm, ...) finds only an empty file,
//     fails to join the container's namespace ("unknown FS magic") and skips
//     the CNI DEL: the bridge, the veth and the iptables rules stay behind.
//     So the test makes one `ip netns exec` session, the holder, which
//     mounts the machine's cgroup hierarchies again under its /sys/fs/cgroup
//     and replaces /etc/resolv.conf, and every podman call joins the
//     holder's mount and network namespaces with nsenter. conmon, runc, the
//     plugin and the DNS responder it starts all inherit that view.
//   - Root lacks CAP_SYS_RESOURCE on some machines (this test's VM drops it
//     from every bounding set), so no process may raise a hard limit.
//     podman asks for nofile and nproc limits of 1048576 for a root
//     container unless told otherwise, and runc then fails with "error
//     setting rlimit type 7 (RLIMIT_NOFILE; then 6, RLIMIT_NPROC):
//     operation not permitted". With podman 4.3, --ulimit nofile=-1:-1
//     and --ulimit host fail the same way (they ask for more than the hard
//     limit too). The test passes limits no higher than what runc inherits
//     instead (see podUlimits).

const (
	podNetwork    = "ferrypod"
	podSubnet     = "172.31.234.0/24"
	podGateway    = "172.31.234.1"
	podHostAddr   = "172.31.235.1" // the host namespace's end of the veth to the server
	podServerAddr = "172.31.235.2"
	podPubPort    = 8080
	podCtrPage    = "hello from the podman container"
	podServerPage = "hello from the server namespace"
)

// podWorld is a bridgeWorld in which podman runs as root.
type podWorld struct {
	*bridgeWorld
	dir       string // everything podman keeps, removed at the end
	rootfs    string
	conf      string // containers.conf
	holderPID int
}

// newPodWorld makes the temporary directory with containers.conf, the
// plugin directory, the network's conflist and a busybox root directory,
// and starts the holder.
func newPodWorld(t *testing.T, timeout time.Duration) *podWorld {
	t.Helper()
	requireRoot(t)
	requireBinaries(t, "podman", "runc", "conmon", "busybox", "nsenter")
	w := &podWorld{bridgeWorld: newBridgeWorld(t, timeout)}
	var err error
	// Short: conmon's attach socket path holds the 64-character container
	// ID below --runroot.
	if w.dir, err = os.MkdirTemp("", "ferry-pod-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(w.dir); err != nil {
			t.Errorf("remove %s: %v", w.dir, err)
		}
	})
	for _, d := range []string{"plugins", "net", "tmp", "www"} {
		if err := os.MkdirAll(filepath.Join(w.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(w.lab.Ferry, filepath.Join(w.dir, "plugins", "ferry")); err != nil {
		t.Fatal(err)
	}
	w.conf = filepath.Join(w.dir, "containers.conf")
	conf := fmt.Sprintf("[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [%q]\nnetwork_config_dir = %q\n",
		filepath.Join(w.dir, "plugins"), filepath.Join(w.dir, "net"))
	if err := os.WriteFile(w.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	plugin := map[string]any{
		"type": "ferry", "subnet": podSubnet, "gateway": podGateway,
		"ipMasq": true, "isolate": true, "mtu": 1500, "stateDir": w.stateDir,
		"capabilities": map[string]bool{"portMappings": true},
	}
	list, err := json.MarshalIndent(map[string]any{"cniVersion": "1.0.0", "name": podNetwork, "plugins": []any{plugin}}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(w.dir, "net", podNetwork+".conflist"), list, 0o644); err != nil {
		t.Fatal(err)
	}
	// The root directory: busybox, its libraries and /www/index.html, as
	// TestPodman's (owned by the test user, which root in the container
	// does not mind).
	if err := os.WriteFile(filepath.Join(w.dir, "www", "index.html"), []byte(podCtrPage+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.rootfs = filepath.Join(w.dir, "rootfs")
	(&rtEnv{ctx: w.ctx, lab: w.lab, www: filepath.Join(w.dir, "www")}).busyboxRootfs(t, w.rootfs)
	// Names the host namespace's loopback, where nothing answers: neither
	// podman nor the network's DNS responder ever asks the machine's
	// resolver.
	resolv := filepath.Join(w.dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.startHolder(t, resolv)
	return w
}

// cgroupMounts is shell commands that mount again, in a mount namespace
// whose /sys is a fresh sysfs, the cgroup file systems mounted under
// /sys/fs/cgroup here (a tmpfs holding v1 hierarchies and a v2 one, or
// cgroup2 alone).
func cgroupMounts() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	var sh strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 {
			continue
		}
		mp, fstype := f[4], g[0]
		if mp != "/sys/fs/cgroup" && !strings.HasPrefix(mp, "/sys/fs/cgroup/") {
			continue
		}
		var opts []string
		for _, o := range strings.Split(g[2], ",") {
			if o != "rw" && o != "ro" {
				opts = append(opts, o)
			}
		}
		switch fstype {
		case "tmpfs":
			opts = []string{"mode=755"}
		case "cgroup", "cgroup2":
		default:
			continue
		}
		o := ""
		if len(opts) > 0 {
			o = " -o " + shQuote(strings.Join(opts, ","))
		}
		fmt.Fprintf(&sh, "mkdir -p %s\nmount -t %s%s %s %s\n", shQuote(mp), fstype, o, fstype, shQuote(mp))
	}
	if sh.Len() == 0 {
		return "", fmt.Errorf("no cgroup file system under /sys/fs/cgroup in /proc/self/mountinfo")
	}
	return sh.String(), nil
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// startHolder starts `ip netns exec HOST sh -c SCRIPT`: the script mounts
// the cgroup file systems, binds resolv over /etc/resolv.conf, says
// "ready PID" and waits for its stdin to close. Its mount and network
// namespaces are where every podman call runs.
func (w *podWorld) startHolder(t *testing.T, resolv string) {
	t.Helper()
	mounts, err := cgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	script := "set -e\n" + mounts + "mount --bind " + shQuote(resolv) + " /etc/resolv.conf\necho \"ready $$\"\nexec cat\n"
	cmd := exec.Command("ip", "netns", "exec", w.host.Name, "sh", "-c", script)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			t.Errorf("holder %d still running 5s after its stdin closed; killing it", cmd.Process.Pid)
			cmd.Process.Kill()
			<-exited
		}
	})
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		pid, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(line), "ready "))
		if err != nil {
			<-exited
			t.Fatalf("holder (ip netns exec %s) did not start: %q; stderr: %s", w.host.Name, line, stderr.String())
		}
		w.holderPID = pid
	case <-w.ctx.Done():
		t.Fatalf("holder not ready: %v", w.ctx.Err())
	}
}

// podman runs podman as root in the holder's namespaces with the test's
// storage, runtime and network settings, bounded by timeout.
func (w *podWorld) podman(ctx context.Context, timeout time.Duration, args ...string) (nstest.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	full := []string{"nsenter", "--target", strconv.Itoa(w.holderPID), "--mount", "--net", "--",
		"env", "CONTAINERS_CONF=" + w.conf,
		"podman",
		"--root", filepath.Join(w.dir, "root"), "--runroot", filepath.Join(w.dir, "run"),
		"--storage-driver", "vfs", "--tmpdir", filepath.Join(w.dir, "tmp"),
		"--network-config-dir", filepath.Join(w.dir, "net"), "--network-backend", "cni",
		"--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
	}
	return nstest.Exec(ctx, append(full, args...)...)
}

// mustPodman is podman that requires success and returns its trimmed
// stdout.
func (w *podWorld) mustPodman(t *testing.T, args ...string) string {
	t.Helper()
	res, err := w.podman(w.ctx, time.Minute, args...)
	if err == nil && res.ExitCode != 0 {
		err = fmt.Errorf("exit %d", res.ExitCode)
	}
	t.Logf("podman %s (%v)", strings.Join(args, " "), res.Elapsed.Round(time.Millisecond))
	if err != nil {
		t.Fatalf("podman %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, res.Stdout, res.Stderr)
	}
	return strings.TrimSpace(res.Stdout)
}

// processesMentioning lists the PIDs (but the holder's) whose command line
// contains s.
func processesMentioning(s string, except int) map[int]string {
	out := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == except || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		cl := strings.ReplaceAll(string(b), "\x00", " ")
		if !strings.Contains(cl, s) {
			continue
		}
		if st, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil && strings.Contains(string(st), ") Z") {
			continue
		}
		out[pid] = cl
	}
	return out
}

// cleanupPodman removes every container of the test's storage, waits for
// conmon and podman's cleanup processes to finish, kills (by PID) what
// remains and the container's process ctrPID if still alive, and removes
// what a failed removal leaves (the netns file, runc's state).
func (w *podWorld) cleanupPodman(t *testing.T, ctr *podContainer) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	if res, err := w.podman(ctx, 30*time.Second, "rm", "--all", "--force", "--time", "0"); err != nil || res.ExitCode != 0 {
		t.Errorf("cleanup: podman rm --all: %v; %s", err, res)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(processesMentioning(w.dir, w.holderPID)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	for pid, cl := range processesMentioning(w.dir, w.holderPID) {
		t.Errorf("left running after podman rm: %d %s", pid, cl)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if ctr.id == "" {
		return
	}
	if ctr.pid > 0 {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", ctr.pid)); err == nil && strings.Contains(string(b), "httpd") {
			t.Errorf("the container's process %d outlived podman rm", ctr.pid)
			syscall.Kill(ctr.pid, syscall.SIGKILL)
		}
	}
	if ctr.netns != "" {
		if _, err := os.Stat(ctr.netns); err == nil {
			t.Errorf("the container's namespace file %s is left", ctr.netns)
			syscall.Unmount(ctr.netns, syscall.MNT_DETACH)
			os.Remove(ctr.netns)
		}
	}
	if _, err := os.Stat(filepath.Join("/run/runc", ctr.id)); err == nil {
		t.Errorf("runc state of %s is left", ctr.id)
		nstest.Exec(ctx, "runc", "delete", "--force", ctr.id)
	}
}

// podUlimits returns --ulimit values for nofile and nproc that runc can set
// without CAP_SYS_RESOURCE: no higher than the hard limits runc inherits
// from podman. podman (as root) leaves the hard open-files limit as it
// finds it (it tries to raise it and keeps the old one on EPERM), and was
// seen to run with a process limit of kernel.pid_max when that is lower
// than its parent's, so the process limit is capped there too (it can
// never be reached anyway).
func podUlimits(t *testing.T) (nofile, nproc string) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	n := min(lim.Max, 1<<20)
	nofile = fmt.Sprintf("%d:%d", n, n)
	if err := unix.Getrlimit(unix.RLIMIT_NPROC, &lim); err != nil {
		t.Fatal(err)
	}
	n = min(lim.Max, 1<<20)
	if b, err := os.ReadFile("/proc/sys/kernel/pid_max"); err == nil {
		if m, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
			n = min(n, m)
		}
	}
	nproc = fmt.Sprintf("%d:%d", n, n)
	return nofile, nproc
}

// diagnose logs what helps to understand a failure: the container's log
// and files, the host namespace's links, addresses, routes and rules, and
// the network's state.
func (w *podWorld) diagnose(t *testing.T, ctr *podContainer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if res, err := w.podman(ctx, 10*time.Second, "logs", ctr.id); err == nil {
		t.Logf("podman logs: %s%s", res.Stdout, res.Stderr)
	}
	if res, err := w.podman(ctx, 10*time.Second, "ps", "--all", "--format", "{{.ID}} {{.Status}} {{.Ports}}"); err == nil {
		t.Logf("podman ps: %s%s", res.Stdout, res.Stderr)
	}
	for _, f := range []string{"server.html", "error.txt"} {
		if b, err := os.ReadFile(filepath.Join(w.rootfs, "www", f)); err == nil {
			t.Logf("container's /www/%s: %q", f, b)
		}
	}
	for _, c := range [][]string{{"ip", "addr"}, {"ip", "route"}, {"iptables-save"}, {"cat", "/proc/sys/net/ipv4/ip_forward"}} {
		if res, err := w.host.Exec(ctx, c...); err == nil {
			t.Logf("host namespace: %s:\n%s%s", strings.Join(c, " "), res.Stdout, res.Stderr)
		}
	}
	if b, err := os.ReadFile(filepath.Join(w.stateDir, "state.json")); err == nil {
		t.Logf("state.json: %s", b)
	}
}

// podContainer is what the test learns about its container.
type podContainer struct {
	id    string
	pid   int
	netns string // podman's /run/netns/netns-UUID
}

// httpGetIn fetches url from inside the namespace at nsPath.
func httpGetIn(ctx context.Context, nsPath, url string) (string, error) {
	client := &http.Client{
		Timeout: 3 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return nstest.DialIn(ctx, nsPath, network, addr)
			},
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return strings.TrimSpace(string(b)), err
}

// waitHTTP fetches url from namespace n until it answers 200 or ctx ends.
func waitHTTP(ctx context.Context, n nstest.Netns, url string, within time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		got, err := httpGetIn(ctx, n.Path, url)
		if err == nil {
			return got, nil
		}
		select {
		case <-ctx.Done():
			return got, fmt.Errorf("%s from %s: %v (%v)", url, n.Name, err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestCNIPodmanRoot runs a --rootfs container with podman as root on a
// ferry CNI network: the container reaches a server namespace through the
// network's masquerade and serves its published port, which answers from
// the server namespace and from the host namespace itself; after podman
// rm the host namespace's iptables rules and links are as before.
func TestCNIPodmanRoot(t *testing.T) {
	t.Parallel()
	w := newPodWorld(t, 3*time.Minute)
	server, err := w.lab.NewNetns(w.ctx, "server")
	if err != nil {
		t.Fatal(err)
	}
	veth, err := nstest.NewVeth(w.ctx, w.host, podHostAddr+"/24", server, podServerAddr+"/24")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nstest.Exec(context.Background(), "ip", "-n", w.host.Name, "link", "del", veth.NameA) })
	srvPort, err := nstest.ServeHTTP(t, server.Path, podServerAddr+":0", http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(rw, "%s; client %s\n", podServerPage, host)
	}))
	if err != nil {
		t.Fatal(err)
	}
	before := w.snapshot(t)

	ctr := &podContainer{}
	t.Cleanup(func() { w.cleanupPodman(t, ctr) })

	if got := w.mustPodman(t, "info", "--format", "{{.Host.NetworkBackend}}"); got != "cni" {
		t.Fatalf("podman's network backend is %q, want cni", got)
	}
	if got := w.mustPodman(t, "network", "ls", "--format", "{{.Name}} {{.Driver}}"); !strings.Contains(got, podNetwork+" ferry") {
		t.Fatalf("podman network ls does not show %s with driver ferry:\n%s", podNetwork, got)
	}

	// The container fetches the server's page into /www/server.html (or
	// the error it got), then serves /www on port 80. --dns names the
	// network's gateway, whose responder asks only the host namespace's
	// loopback, instead of the machine's resolvers.
	// (Debian 12's busybox wget crashes with -T, hence timeout.)
	script := fmt.Sprintf("busybox timeout 10 busybox wget -q -O /www/server.html http://%s:%d/ 2>/www/error.txt || busybox cp /www/error.txt /www/server.html\n"+
		"exec busybox httpd -f -p 80 -h /www\n", podServerAddr, srvPort)
	nofile, nproc := podUlimits(t)
	ctr.id = w.mustPodman(t, "run", "--detach", "--name", "ferrypod-web",
		"--network", podNetwork, "--publish", fmt.Sprintf("%d:80", podPubPort), "--dns", podGateway,
		"--ulimit", "nofile="+nofile, "--ulimit", "nproc="+nproc,
		"--rootfs", w.rootfs, "/bin/sh", "-c", script)
	info := w.mustPodman(t, "inspect", "--format", "{{.State.Pid}} {{.NetworkSettings.SandboxKey}} {{(index .NetworkSettings.Networks \""+podNetwork+"\").IPAddress}}", ctr.id)
	f := strings.Fields(info)
	if len(f) != 3 {
		t.Fatalf("podman inspect: %q", info)
	}
	ctr.pid, _ = strconv.Atoi(f[0])
	ctr.netns = f[1]
	ip, err := netip.ParseAddr(f[2])
	if err != nil || !netip.MustParsePrefix(podSubnet).Contains(ip) || ip.String() == podGateway {
		t.Errorf("container address %q, want one of %s but the gateway", f[2], podSubnet)
	}
	t.Logf("container %.12s: pid %d, %s, netns %s", ctr.id, ctr.pid, ip, ctr.netns)
	// ferry net inspect runs where podman does: in a mount namespace
	// without podman's bind mount of the container's namespace, its
	// reconciliation would take the attachment for one whose namespace
	// has gone (the path names no namespace there) and release it.
	res, err := nstest.Exec(w.ctx, "nsenter", "--target", strconv.Itoa(w.holderPID), "--mount", "--net", "--",
		w.lab.Ferry, "net", "--state-dir", w.stateDir, "inspect", podNetwork)
	var views []bridge.NetworkView
	if err != nil || res.ExitCode != 0 || json.Unmarshal([]byte(res.Stdout), &views) != nil || len(views) != 1 {
		t.Errorf("ferry net inspect %s: %v, %s", podNetwork, err, res)
	} else if eps := views[0].Containers; len(eps) != 1 {
		t.Errorf("ferry net inspect %s: %d attachments, want 1: %+v", podNetwork, len(eps), eps)
	}

	// The published port, from the server namespace to the host's
	// address, and from the host namespace to its own addresses.
	for _, c := range []struct {
		from nstest.Netns
		url  string
	}{
		{server, fmt.Sprintf("http://%s:%d/", podHostAddr, podPubPort)},
		{w.host, fmt.Sprintf("http://%s:%d/", podHostAddr, podPubPort)},
		{w.host, fmt.Sprintf("http://127.0.0.1:%d/", podPubPort)},
	} {
		got, err := waitHTTP(w.ctx, c.from, c.url, 30*time.Second)
		if err != nil || got != podCtrPage {
			w.diagnose(t, ctr)
			t.Fatalf("published port: %s from %s: got %q, %v; want %q", c.url, c.from.Name, got, err, podCtrPage)
		}
		t.Logf("%s from %s: %q", c.url, c.from.Name, got)
	}
	// What the container got from the server, which saw the host
	// namespace's address (ipMasq).
	want := podServerPage + "; client " + podHostAddr
	if got, err := waitHTTP(w.ctx, server, fmt.Sprintf("http://%s:%d/server.html", podHostAddr, podPubPort), 10*time.Second); err != nil || got != want {
		t.Errorf("the container's fetch of the server: got %q, %v; want %q", got, err, want)
	}

	w.mustPodman(t, "rm", "--force", "--time", "0", ctr.id)
	if got := w.mustPodman(t, "ps", "--all", "--quiet"); got != "" {
		t.Errorf("containers left after podman rm: %q", got)
	}
	if _, err := os.Stat(ctr.netns); err == nil {
		t.Errorf("podman rm left the container's namespace file %s", ctr.netns)
	}
	if res := w.mustFerryNet(t, "ls", "-q"); strings.TrimSpace(res.Stdout) != "" {
		t.Errorf("networks left after podman rm: %q", res.Stdout)
	}
	w.expectSnapshot(t, before)
	if pids := bridgeDNSProcesses(w.stateDir); len(pids) > 0 {
		t.Errorf("DNS responders left running: %v", pids)
	}
}
