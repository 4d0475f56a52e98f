package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// tool is one helper configuration under test.
type tool struct {
	Name string `json:"name"` // e.g. ferry-65520
	Kind string `json:"kind"` // ferry, slirp4netns, pasta or bridge
	MTU  int    `json:"mtu"`
}

// bridge is the kernel reference: ferry's privileged path (`ferry net`, a
// Linux bridge, a veth and iptables NAT, run as root), with no helper
// process in the data path.

var allTools = []tool{
	{"ferry-65520", "ferry", 65520},
	{"slirp4netns-65520", "slirp4netns", 65520},
	{"pasta", "pasta", 65520},
	{"bridge", "bridge", 65520},
	{"ferry-1500", "ferry", 1500},
	{"slirp4netns-1500", "slirp4netns", 1500},
}

// Ports: the host's iperf3 server and load server on the private host
// namespace's loopback, and iperf3's port inside each guest.
const (
	hostIperfPort = 5201
	loadPort      = 7777
	guestPort     = 5201
)

// The bridge tool's network: its gateway is an address of the host
// namespace, where the host's iperf3 and a load server listen for it.
const (
	bridgeSubnet = "10.77.0.0/24"
	bridgeGW     = "10.77.0.1"
)

// instance is one guest with a helper attached.
type instance struct {
	e        *env
	t        tool
	guest    *proc
	helper   *proc   // nil for bridge: no process in the data path
	others   []*proc // servers started for this instance
	gw       string  // the guest's gateway, which reaches the host's loopback
	listen   string  // the host address the host's servers listen on for this guest
	net      *bridgeNet
	hostPort int // published to guest port 5201
	ready    time.Duration
	tapMTU   int
}

// startGuest starts a rootless "container": the user's own user and
// network namespaces holding a sleep, made from inside the host namespace.
func (e *env) startGuest() (*proc, error) {
	g, err := e.start("guest", e.asUser("unshare", "-U", "-r", "-n", "sleep", "100000"), nil, nil, nil)
	if err != nil {
		return nil, err
	}
	var hostIno uint64
	if st, err := os.Stat("/run/netns/" + e.ns); err == nil {
		hostIno = st.Sys().(*syscall.Stat_t).Ino
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", g.pid()))
		st, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", g.pid()))
		if strings.TrimSpace(string(comm)) == "sleep" && err == nil && st.Sys().(*syscall.Stat_t).Ino != hostIno {
			return g, nil
		}
		if !g.alive() {
			return nil, fmt.Errorf("guest exited: %s", g.stderrString())
		}
		time.Sleep(2 * time.Millisecond)
	}
	g.kill()
	return nil, errors.New("guest not unshared after 10s")
}

// startInstance starts a guest and attaches t to it, publishing hostPort
// on the host's 127.0.0.1 to the guest's port 5201, and measures the time
// from starting the helper to its ready signal (ready-fd; pasta's pid file,
// which it writes once set up).
func (e *env) startInstance(t tool, hostPort int) (*instance, error) {
	g, err := e.startGuest()
	if err != nil {
		return nil, err
	}
	in := &instance{e: e, t: t, guest: g, hostPort: hostPort, gw: "10.0.2.2", listen: "127.0.0.1"}
	gpid := strconv.Itoa(g.pid())
	settle()
	mtu := strconv.Itoa(t.MTU)
	switch t.Kind {
	case "ferry":
		err = in.startWithReadyFD(e.ferry, "attach", "-c", "-m", mtu, "-r", "3",
			"-p", fmt.Sprintf("127.0.0.1:%d:%d", hostPort, guestPort), gpid, "tap0")
	case "slirp4netns":
		sock := filepath.Join(e.rundir, fmt.Sprintf("slirp-%d.sock", hostPort))
		err = in.startWithReadyFD("slirp4netns", "--configure", "--mtu="+mtu, "--ready-fd=3",
			"--api-socket", sock, gpid, "tap0")
		if err == nil {
			err = slirpAddHostfwd(sock, hostPort, guestPort)
		}
	case "pasta":
		err = in.startPasta(gpid)
	case "bridge":
		err = in.startBridge(gpid, mtu)
	default:
		err = fmt.Errorf("unknown tool kind %q", t.Kind)
	}
	if err != nil {
		in.close()
		return nil, fmt.Errorf("%s: %w", t.Name, err)
	}
	if in.tapMTU, err = in.guestMTU(); err != nil {
		in.close()
		return nil, fmt.Errorf("%s: %w", t.Name, err)
	}
	return in, nil
}

// startWithReadyFD launches the helper argv (run as the bench user in the
// host namespace) with a ready-fd as fd 3 and waits for it.
func (in *instance) startWithReadyFD(argv ...string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	var t0 time.Time
	in.helper, t0, err = in.e.launch(in.t.Name, argv, []*os.File{w})
	w.Close()
	if err != nil {
		return err
	}
	r.SetReadDeadline(time.Now().Add(15 * time.Second))
	got, err := io.ReadAll(r)
	in.ready = time.Since(t0)
	if err != nil || string(got) != "1" {
		return fmt.Errorf("ready-fd: got %q, %v; stderr: %q", got, err, in.helper.stderrString())
	}
	return nil
}

func (in *instance) startPasta(gpid string) error {
	pidfile := filepath.Join(in.e.rundir, fmt.Sprintf("pasta-%d.pid", in.hostPort))
	os.Remove(pidfile)
	var (
		t0  time.Time
		err error
	)
	in.helper, t0, err = in.e.launch(in.t.Name, []string{"pasta", "--config-net", "-f", "-q", "-P", pidfile,
		"-t", fmt.Sprintf("%d:%d", in.hostPort, guestPort), "-T", "none", "-U", "none", "-u", "none", gpid}, nil)
	if err != nil {
		return err
	}
	deadline := t0.Add(15 * time.Second)
	for {
		if b, err := os.ReadFile(pidfile); err == nil && len(strings.TrimSpace(string(b))) > 0 {
			in.ready = time.Since(t0)
			break
		}
		if !in.helper.alive() || time.Now().After(deadline) {
			return fmt.Errorf("no pid file %s; stderr: %q", pidfile, in.helper.stderrString())
		}
		time.Sleep(500 * time.Microsecond)
	}
	// pasta copies the host's addresses and routes: its gateway (mapped to
	// the host's loopback) is the host namespace's default gateway.
	for {
		out, err := exec.Command("nsenter", "-t", gpid, "-n", "ip", "-4", "route", "show", "default").Output()
		if f := strings.Fields(string(out)); err == nil && len(f) >= 3 && f[1] == "via" {
			in.gw = f[2]
			return nil
		}
		if !in.helper.alive() || time.Now().After(deadline) {
			return fmt.Errorf("no default route in the guest; stderr: %q", in.helper.stderrString())
		}
		time.Sleep(time.Millisecond)
	}
}

// guestMTU reads the MTU of the guest's interface (tap0; pasta names it
// after the host's).
func (in *instance) guestMTU() (int, error) {
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(in.guest.pid()), "-n", "ip", "-o", "link", "show").Output()
	if err != nil {
		return 0, fmt.Errorf("guest links: %w", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[1] == "lo:" {
			continue
		}
		for i := range f[:len(f)-1] {
			if f[i] == "mtu" {
				return strconv.Atoi(f[i+1])
			}
		}
	}
	return 0, fmt.Errorf("no interface in the guest: %q", out)
}

// startBridge connects the guest, as root in the host namespace, to a
// fresh `ferry net` network with a state dir of its own, publishing
// hostPort on 127.0.0.1 to the guest's port 5201, and starts a load server
// on the gateway (the network reaches the host's addresses, not its
// loopback). Ready is the time `ferry net connect` took.
func (in *instance) startBridge(gpid, mtu string) error {
	e := in.e
	n, err := e.createBridge(fmt.Sprintf("fb%d", in.hostPort), mtu)
	if err != nil {
		return err
	}
	in.net = n
	t0 := time.Now()
	if _, err := e.run("ferry net connect", n.argv("connect", n.name, gpid,
		"-p", fmt.Sprintf("127.0.0.1:%d:%d", in.hostPort, guestPort)), time.Minute); err != nil {
		return err
	}
	in.ready = time.Since(t0)
	in.gw, in.listen = bridgeGW, bridgeGW
	load, err := e.start("bridge load server", e.asUser(e.self, "serve", "-addr", fmt.Sprintf("%s:%d", bridgeGW, loadPort)), nil, nil, nil)
	if err != nil {
		return err
	}
	in.others = append(in.others, load)
	return waitListening(load, loadPort)
}

// close kills the instance's servers, helper and guest, and removes its
// bridge network.
func (in *instance) close() {
	for _, p := range in.others {
		p.kill()
	}
	if in.helper != nil {
		in.helper.stop(2 * time.Second)
	}
	in.guest.kill()
	if in.net != nil {
		in.e.removeBridge(in.net)
		in.net = nil
	}
}

// slirpAddHostfwd publishes hostPort on 127.0.0.1 through slirp4netns's API.
func slirpAddHostfwd(sock string, hostPort, guestPort int) error {
	var c net.Conn
	var err error
	for range 100 {
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req := fmt.Sprintf(`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":%d,"guest_port":%d}}`, hostPort, guestPort)
	if _, err := c.Write([]byte(req)); err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	c.(*net.UnixConn).CloseWrite()
	var resp map[string]any
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&resp); err != nil {
		return fmt.Errorf("api socket reply: %w", err)
	}
	if _, ok := resp["return"]; !ok {
		return fmt.Errorf("add_hostfwd: %v", resp)
	}
	return nil
}

// builds names the binaries under test.
func builds(ferryPath string) map[string]string {
	out := map[string]string{}
	ferry := "ferry"
	if rev, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		ferry += " " + strings.TrimSpace(string(rev))
	}
	if b, err := os.ReadFile(ferryPath); err == nil {
		sum := sha256.Sum256(b)
		ferry += " (binary sha256 " + hex.EncodeToString(sum[:6]) + ")"
	}
	out["ferry"] = ferry
	slirp := "slirp4netns"
	if b, err := exec.Command("slirp4netns", "--version").Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		slirp = lines[0]
		for _, l := range lines[1:] {
			if strings.HasPrefix(l, "libslirp:") {
				slirp += ", libslirp " + strings.TrimSpace(strings.TrimPrefix(l, "libslirp:"))
			}
		}
	}
	out["slirp4netns"] = slirp + debVersion("slirp4netns")
	pasta := "pasta"
	if b, err := exec.Command("pasta", "--version").Output(); err == nil {
		pasta = strings.SplitN(strings.TrimSpace(string(b)), "\n", 2)[0]
	}
	out["pasta"] = pasta + debVersion("passt")
	if b, err := exec.Command("iptables", "--version").Output(); err == nil {
		out["iptables"] = strings.TrimSpace(string(b)) + debVersion("iptables")
	}
	if b, err := exec.Command("iperf3", "--version").Output(); err == nil {
		out["iperf3"] = strings.SplitN(strings.TrimSpace(string(b)), "\n", 2)[0]
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		out["kernel"] = strings.TrimSpace(string(b))
	}
	return out
}

func debVersion(pkg string) string {
	b, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", pkg).Output()
	if err != nil || len(b) == 0 {
		return ""
	}
	return " (Debian package " + pkg + " " + string(b) + ")"
}

// settle waits, up to settleMax, until the CPUs have been at least 85% idle
// for settleWindow, so that the kernel's work of the run before (closing
// thousands of held connections, deleting namespaces, which it does after
// the processes are gone) does not land in the next helper's start to
// ready. Every tool's start waits the same way.
func settle() {
	deadline := time.Now().Add(settleMax)
	busy0, total0 := cpuTicks()
	for time.Now().Before(deadline) {
		time.Sleep(settleWindow)
		busy, total := cpuTicks()
		if total > total0 && float64(busy-busy0)/float64(total-total0) < 0.15 {
			return
		}
		busy0, total0 = busy, total
	}
}

const (
	settleWindow = 50 * time.Millisecond
	settleMax    = 3 * time.Second
)

// cpuTicks returns the busy and total ticks of all CPUs (/proc/stat).
func cpuTicks() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}
