package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Addresses of the private "host" namespace and its dead-end peer (as in
// ../shared/bench/peers.sh): the host's only route leads into a namespace
// that answers nothing, so no packet can leave the machine.
const (
	hostAddr = "192.168.77.2/24"
	deadEnd  = "192.168.77.1"
)

// env is the bench's world: the unprivileged user, the private host
// namespace, a staging directory the user can read, and every process
// started so far, all removed by cleanup.
type env struct {
	user    string
	uid     int
	gid     int
	home    string
	ns      string // the private host namespace
	nsDead  string // the dead-end namespace
	stage   string // 0755 dir with the binaries the user runs
	rundir  string // the user's dir for sockets and pid files
	ferry   string // staged ferry binary
	self    string // staged bench binary
	verbose bool

	mu    sync.Mutex
	procs []*proc
	nets  []*bridgeNet   // `ferry net` networks not yet removed
	rming sync.WaitGroup // removals under way, which cleanup waits for
	done  bool
}

// bridgeNet is a `ferry net` network the bench created (as root, in the
// host namespace) with a state dir of its own.
type bridgeNet struct {
	e        *env
	name     string
	stateDir string
}

// argv is `ferry net ARGS --state-dir DIR` run as root in the host
// namespace.
func (n *bridgeNet) argv(args ...string) []string {
	return append(append([]string{"ip", "netns", "exec", n.e.ns, n.e.ferry, "net"}, args...), "--state-dir", n.stateDir)
}

// createBridge creates network name on bridgeSubnet in a fresh state dir.
// It is removed by removeBridge, or by cleanup.
func (e *env) createBridge(name, mtu string) (*bridgeNet, error) {
	dir, err := os.MkdirTemp(e.stage, "netstate-")
	if err != nil {
		return nil, err
	}
	n := &bridgeNet{e: e, name: name, stateDir: dir}
	e.mu.Lock()
	if e.done {
		e.mu.Unlock()
		os.RemoveAll(dir)
		return nil, errors.New("bench is shutting down")
	}
	e.nets = append(e.nets, n)
	e.mu.Unlock()
	if _, err := e.run("ferry net create", n.argv("create", "--subnet", bridgeSubnet, "--mtu", mtu, name), time.Minute); err != nil {
		e.removeBridge(n)
		return nil, err
	}
	return n, nil
}

// removeBridge removes n with `ferry net rm -f`, stops any DNS responder
// of its state dir still running, and deletes the state dir. A network
// that was never created is not an error.
func (e *env) removeBridge(n *bridgeNet) {
	e.mu.Lock()
	i := slices.Index(e.nets, n)
	if i >= 0 {
		e.nets = slices.Delete(e.nets, i, i+1)
		e.rming.Add(1)
	}
	e.mu.Unlock()
	if i < 0 {
		return
	}
	defer e.rming.Done()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	argv := n.argv("rm", "-f", n.name)
	if e.verbose {
		fmt.Fprintf(os.Stderr, "bench: run %s\n", strings.Join(argv, " "))
	}
	if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil &&
		!strings.Contains(string(out), "no such network") && !strings.Contains(string(out), "not found") {
		fmt.Fprintf(os.Stderr, "bench: %s: %v: %s\n", strings.Join(argv, " "), err, out)
	}
	// The DNS responder is a detached child of `ferry net create`: should
	// rm have left it, it is the process whose command line names this
	// state dir.
	for _, pid := range pidsWithArgs("serve-dns", n.stateDir) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	os.RemoveAll(n.stateDir)
}

// pidsWithArgs lists the processes whose command line holds every one of
// args as a whole argument.
func pidsWithArgs(args ...string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + ent.Name() + "/cmdline")
		if err != nil {
			continue
		}
		have := strings.Split(string(b), "\x00")
		if !slices.ContainsFunc(args, func(a string) bool { return !slices.Contains(have, a) }) {
			out = append(out, pid)
		}
	}
	return out
}

// proc is a process the bench started, killed with its descendants at
// cleanup.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	exited chan struct{}
}

// pid is the process's id: ip netns exec, setpriv, nsenter and unshare
// each exec the next program, so it is the last program's.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// alive reports whether the process has not exited yet.
func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL to the process and its descendants and waits for it.
func (p *proc) kill() {
	if !p.alive() {
		return
	}
	for _, d := range descendants(p.pid()) {
		syscall.Kill(d, syscall.SIGKILL)
	}
	syscall.Kill(p.pid(), syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		fmt.Fprintf(os.Stderr, "bench: %s (PID %d) still there 5s after SIGKILL\n", p.name, p.pid())
	}
}

// stop sends SIGTERM, then SIGKILL after a grace period.
func (p *proc) stop(grace time.Duration) {
	if !p.alive() {
		return
	}
	syscall.Kill(p.pid(), syscall.SIGTERM)
	select {
	case <-p.exited:
		for _, d := range descendants(p.pid()) {
			syscall.Kill(d, syscall.SIGKILL)
		}
	case <-time.After(grace):
		p.kill()
	}
}

// start runs argv as a tracked process.
func (e *env) start(name string, argv []string, extra []*os.File, stdout io.Writer, stdin io.Reader) (*proc, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.done {
		return nil, errors.New("bench is shutting down")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + e.home, "USER=" + e.user, "LOGNAME=" + e.user, "LANG=C"}
	for _, k := range []string{"FERRY_DEBUG_PPROF", "GOMAXPROCS"} { // profiling, tuning
		if v := os.Getenv(k); v != "" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Dir = "/"
	cmd.ExtraFiles = extra
	cmd.Stdout = stdout
	cmd.Stdin = stdin
	p := &proc{name: name, cmd: cmd, stderr: new(bytes.Buffer), exited: make(chan struct{})}
	cmd.Stderr = &lockedWriter{w: p.stderr}
	if e.verbose {
		fmt.Fprintf(os.Stderr, "bench: start %s: %s\n", name, strings.Join(argv, " "))
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	e.procs = append(e.procs, p)
	return p, nil
}

// run runs argv to completion (killed at timeout) and returns its stdout.
func (e *env) run(name string, argv []string, timeout time.Duration) ([]byte, error) {
	var out bytes.Buffer
	p, err := e.start(name, argv, nil, &lockedWriter{w: &out}, nil)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
	case <-time.After(timeout):
		p.kill()
		return out.Bytes(), fmt.Errorf("%s: still running after %v; stderr: %q", name, timeout, p.stderrString())
	}
	if !p.cmd.ProcessState.Success() {
		return out.Bytes(), fmt.Errorf("%s: %v; stderr: %q", name, p.cmd.ProcessState, p.stderrString())
	}
	return out.Bytes(), nil
}

func (p *proc) stderrString() string {
	lw := p.cmd.Stderr.(*lockedWriter)
	lw.mu.Lock()
	defer lw.mu.Unlock()
	s := p.stderr.String()
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return s
}

// lockedWriter makes a buffer safe to read while a process writes to it.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// asUser is argv run as the bench user inside the private host namespace.
func (e *env) asUser(argv ...string) []string {
	return append([]string{"ip", "netns", "exec", e.ns, "setpriv",
		"--reuid=" + strconv.Itoa(e.uid), "--regid=" + strconv.Itoa(e.gid), "--init-groups"}, argv...)
}

// inGuest is argv run as the bench user inside guest g's user and network
// namespaces.
func (e *env) inGuest(g *proc, argv ...string) []string {
	return e.asUser(append([]string{"nsenter", "-t", strconv.Itoa(g.pid()), "-U", "-n", "--preserve-credentials", "--"}, argv...)...)
}

// stopping reports whether cleanup has begun (on a signal).
func (e *env) stopping() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.done
}

// cleanup kills every process the bench started, deletes its namespaces
// and its staging directory. It is idempotent.
func (e *env) cleanup() {
	e.mu.Lock()
	e.done = true
	procs := e.procs
	e.procs = nil
	e.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].kill()
	}
	e.mu.Lock()
	nets := slices.Clone(e.nets)
	e.mu.Unlock()
	for _, n := range nets {
		e.removeBridge(n) // before the host namespace holding it goes
	}
	e.rming.Wait()
	for _, ns := range []string{e.ns, e.nsDead} {
		if ns != "" {
			if _, err := os.Stat("/run/netns/" + ns); err == nil {
				if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
					fmt.Fprintf(os.Stderr, "bench: ip netns del %s: %v: %s\n", ns, err, out)
				}
			}
		}
	}
	if e.stage != "" {
		os.RemoveAll(e.stage)
	}
}

// descendants lists the live descendants of pid, deepest last.
func descendants(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		p, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		if pp := ppid(p); pp > 0 {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// statFields returns the fields of /proc/PID/stat after the command name
// (field 3, the state, is index 0).
func statFields(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

func ppid(pid int) int {
	f := statFields(pid)
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// install makes sure the commands the bench runs exist, installing the
// Debian packages that provide the missing ones.
func install(ctx context.Context) error {
	need := map[string]string{"slirp4netns": "slirp4netns", "pasta": "passt", "iperf3": "iperf3",
		"ip": "iproute2", "iptables": "iptables", "setpriv": "util-linux", "nsenter": "util-linux", "unshare": "util-linux"}
	var pkgs []string
	seen := map[string]bool{}
	for cmd, pkg := range need {
		if _, err := exec.LookPath(cmd); err != nil && !seen[pkg] {
			seen[pkg] = true
			pkgs = append(pkgs, pkg)
		}
	}
	if len(pkgs) == 0 {
		return nil
	}
	fmt.Fprintf(os.Stderr, "bench: installing %s\n", strings.Join(pkgs, " "))
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("missing packages %v and no apt-get to install them: install them by hand", pkgs)
	}
	cmd := exec.CommandContext(ctx, "apt-get", "update")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("apt-get update: %w", err)
	}
	cmd = exec.CommandContext(ctx, "apt-get", append([]string{"install", "-y", "--no-install-recommends"}, pkgs...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("apt-get install %v: %w", pkgs, err)
	}
	return nil
}

// ensureUser creates the bench user when missing and makes /dev/net/tun
// usable by it.
func (e *env) ensureUser(name string) error {
	u, err := user.Lookup(name)
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) {
		if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", name).CombinedOutput(); err != nil {
			return fmt.Errorf("useradd %s: %v: %s", name, err, out)
		}
		u, err = user.Lookup(name)
	}
	if err != nil {
		return fmt.Errorf("look up user %s: %w", name, err)
	}
	e.user, e.home = name, u.HomeDir
	if e.uid, err = strconv.Atoi(u.Uid); err != nil {
		return fmt.Errorf("user %s: uid %q", name, u.Uid)
	}
	if e.gid, err = strconv.Atoi(u.Gid); err != nil {
		return fmt.Errorf("user %s: gid %q", name, u.Gid)
	}
	if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
		return fmt.Errorf("chmod 0666 /dev/net/tun: %w", err)
	}
	return nil
}

// stageBinaries copies ferry and this program into a fresh 0755 directory
// outside /root, where the user can run them, with a directory of the
// user's own for sockets and pid files.
func (e *env) stageBinaries(ferry string) error {
	dir, err := os.MkdirTemp("", "ferrybench-")
	if err != nil {
		return err
	}
	e.stage = dir
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	e.ferry, e.self = filepath.Join(dir, "ferry"), filepath.Join(dir, "bench")
	for src, dst := range map[string]string{ferry: e.ferry, self: e.self} {
		if err := copyFile(src, dst); err != nil {
			return err
		}
	}
	e.rundir = filepath.Join(dir, "run")
	if err := os.Mkdir(e.rundir, 0o700); err != nil {
		return err
	}
	return os.Chown(e.rundir, e.uid, e.gid)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("stage %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return fmt.Errorf("stage %s: %w", src, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("stage %s: %w", src, err)
	}
	return out.Close()
}

// makeHost creates the private host namespace with lo up and a veth into a
// dead-end namespace as its only route.
func (e *env) makeHost() error {
	base := fmt.Sprintf("fbench%d", os.Getpid())
	steps := [][]string{
		{"ip", "netns", "add", base},
		{"ip", "netns", "add", base + "x"},
		{"ip", "-n", base, "link", "set", "lo", "up"},
		{"ip", "-n", base, "link", "add", "d0", "type", "veth", "peer", "name", "d1", "netns", base + "x"},
		{"ip", "-n", base + "x", "link", "set", "d1", "up"},
		{"ip", "-n", base, "addr", "add", hostAddr, "dev", "d0"},
		{"ip", "-n", base, "link", "set", "d0", "up"},
		{"ip", "-n", base, "route", "add", "default", "via", deadEnd},
	}
	for i, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(s, " "), err, out)
		}
		switch i {
		case 0:
			e.ns = base
		case 1:
			e.nsDead = base + "x"
		}
	}
	return nil
}

// launchScript waits for a line on stdin, then becomes the helper.
const launchScript = `read -r _ && exec "$@"`

// launch starts argv as the bench user in the host namespace and returns
// the moment it was let go. The setup (`ip netns exec`, setpriv) is paid
// before that moment by a shell that then waits on its stdin: a start
// time measured from it is the helper's own, from its exec on.
func (e *env) launch(name string, argv []string, extra []*os.File) (*proc, time.Time, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, time.Time{}, err
	}
	defer w.Close()
	p, err := e.start(name, e.asUser(append([]string{"/bin/sh", "-c", launchScript, "launch"}, argv...)...), extra, nil, r)
	r.Close()
	if err != nil {
		return nil, time.Time{}, err
	}
	// The shell waits in read(2) on fd 0: /proc/PID/syscall names it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.pid()))
		sc, _ := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", p.pid()))
		if strings.TrimSpace(string(comm)) == "sh" && strings.HasPrefix(string(sc), "0 0x0 ") {
			break
		}
		if !p.alive() || time.Now().After(deadline) {
			p.kill()
			return nil, time.Time{}, fmt.Errorf("%s: launcher not waiting: %q", name, p.stderrString())
		}
		time.Sleep(time.Millisecond)
	}
	t0 := time.Now()
	if _, err := w.Write([]byte("\n")); err != nil {
		p.kill()
		return nil, time.Time{}, fmt.Errorf("%s: release launcher: %w", name, err)
	}
	return p, t0, nil
}
