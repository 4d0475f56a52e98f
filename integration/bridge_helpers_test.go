package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ferrynet/ferry/bridge"
	"github.com/ferrynet/ferry/integration/nstest"
)

// bridgeWorld is a private host namespace in which `ferry net` runs as
// root with its own state directory. At teardown every network is
// removed and the host namespace's iptables rules and links must equal
// the snapshot taken before the test made any, with no DNS responder left.
type bridgeWorld struct {
	ctx      context.Context
	lab      *nstest.Lab
	host     nstest.Netns
	stateDir string
}

func newBridgeWorld(t *testing.T, timeout time.Duration) *bridgeWorld {
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
	w := &bridgeWorld{ctx: ctx, lab: lab, host: host, stateDir: t.TempDir()}
	before := w.snapshot(t)
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		w.ctx = cctx
		if res := w.ferryNet(t, "ls", "-q"); res.ExitCode == 0 {
			if names := strings.Fields(res.Stdout); len(names) > 0 {
				w.ferryNet(t, append([]string{"rm", "-f"}, names...)...)
			}
		}
		w.ferryNet(t, "prune")
		w.expectSnapshot(t, before)
		if pids := bridgeDNSProcesses(w.stateDir); len(pids) > 0 {
			t.Errorf("DNS responders left running: %v", pids)
		}
	})
	return w
}

// ferryNet runs `ferry net --state-dir DIR ARGS...` as root in the host
// namespace.
func (w *bridgeWorld) ferryNet(t *testing.T, args ...string) nstest.Result {
	t.Helper()
	return w.ferryNetEnv(t, nil, args...)
}

func (w *bridgeWorld) ferryNetEnv(t *testing.T, env []string, args ...string) nstest.Result {
	t.Helper()
	cmd := []string{"ip", "netns", "exec", w.host.Name, "env"}
	cmd = append(cmd, env...)
	cmd = append(cmd, w.lab.Ferry, "net", "--state-dir", w.stateDir)
	res, err := nstest.Exec(w.ctx, append(cmd, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ferry net %s -> exit %d (%v)", strings.Join(args, " "), res.ExitCode, res.Elapsed.Round(time.Millisecond))
	return res
}

// mustFerryNet is ferryNet that requires success.
func (w *bridgeWorld) mustFerryNet(t *testing.T, args ...string) nstest.Result {
	t.Helper()
	res := w.ferryNet(t, args...)
	if res.ExitCode != 0 {
		t.Fatalf("ferry net failed: %s", res)
	}
	return res
}

// inspect returns `ferry net inspect NAME`.
func (w *bridgeWorld) inspect(t *testing.T, name string) bridge.NetworkView {
	t.Helper()
	var vs []bridge.NetworkView
	if err := json.Unmarshal([]byte(w.mustFerryNet(t, "inspect", name).Stdout), &vs); err != nil || len(vs) != 1 {
		t.Fatalf("inspect %s: %v (%d networks)", name, err, len(vs))
	}
	return vs[0]
}

// container makes a namespace standing in for a container.
func (w *bridgeWorld) container(t *testing.T) nstest.Netns {
	t.Helper()
	n, err := w.lab.NewNetns(w.ctx, "ctr")
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// endpoint finds the attachment of namespace n in network v.
func endpoint(t *testing.T, v bridge.NetworkView, n nstest.Netns) bridge.EndpointView {
	t.Helper()
	for _, e := range v.Containers {
		if e.Netns == n.Path {
			return e
		}
	}
	t.Fatalf("namespace %s is not in network %s: %+v", n.Name, v.Name, v.Containers)
	return bridge.EndpointView{}
}

// ipOf is the address of namespace n on network v, without prefix length.
func ipOf(t *testing.T, v bridge.NetworkView, n nstest.Netns) string {
	t.Helper()
	ip, _, _ := strings.Cut(endpoint(t, v, n).IPv4Address, "/")
	return ip
}

// snapshot is the host namespace's iptables rules (no counters, no
// tables holding nothing but empty built-in chains) and links.
func (w *bridgeWorld) snapshot(t *testing.T) string {
	t.Helper()
	save, err := nstest.MustExec(w.ctx, "ip", "netns", "exec", w.host.Name, "iptables-save")
	if err != nil {
		t.Fatal(err)
	}
	links, err := nstest.MustExec(w.ctx, "ip", "-n", w.host.Name, "-o", "link")
	if err != nil {
		t.Fatal(err)
	}
	return normalizeIptablesSave(save.Stdout) + "---\n" + links.Stdout
}

// expectSnapshot waits a little (namespaces are destroyed asynchronously,
// and their veths with them) for the snapshot to equal want.
func (w *bridgeWorld) expectSnapshot(t *testing.T, want string) {
	t.Helper()
	var got string
	for deadline := time.Now().Add(5 * time.Second); ; {
		if got = w.snapshot(t); got == want {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("host namespace differs from before:\n--- want\n%s\n--- got\n%s", want, got)
}

// normalizeIptablesSave drops comments, counters and tables in which
// nothing was ever added (iptables-nft makes a table on first use).
func normalizeIptablesSave(s string) string {
	var out strings.Builder
	var block []string
	keep := false
	for _, line := range strings.Split(s, "\n") {
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "*"):
			block, keep = []string{line}, false
			continue
		case line == "COMMIT":
			if keep {
				out.WriteString(strings.Join(block, "\n") + "\nCOMMIT\n")
			}
			block = nil
			continue
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line)
			line = strings.Join(f[:min(2, len(f))], " ")
			if len(f) < 2 || f[1] != "ACCEPT" {
				keep = true
			}
		default:
			keep = true
		}
		block = append(block, line)
	}
	return out.String()
}

// bridgeDNSProcesses lists processes running `ferry net serve-dns` for
// stateDir.
func bridgeDNSProcesses(stateDir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		cl := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cl, bridge.ServeDNSCommand) && strings.Contains(cl, stateDir) {
			if st, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil && !strings.Contains(string(st), ") Z") {
				out = append(out, e.Name()+": "+cl)
			}
		}
	}
	return out
}

// serveGreeting serves TCP on addr in namespace n: each connection gets
// "NAME saw REMOTEIP\n" and is closed.
func serveGreeting(t *testing.T, n nstest.Netns, addr, name string) {
	t.Helper()
	l, err := nstest.ListenIn(n.Path, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "%s saw %s\n", name, host)
			c.Close()
		}
	}()
}

// serveUDPEcho echoes UDP datagrams on addr in namespace n, prefixed by name.
func serveUDPEcho(t *testing.T, n nstest.Netns, addr, name string) {
	t.Helper()
	pc, err := nstest.ListenPacketIn(n.Path, "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte(name+" "), buf[:k]...), from)
		}
	}()
}

// fetch connects from namespace nsPath to addr over TCP within timeout
// and returns what the server wrote.
func fetch(ctx context.Context, nsPath, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := nstest.DialIn(ctx, nsPath, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	return strings.TrimSpace(string(b)), err
}

// mustFetch is fetch that must get a greeting starting with want.
func mustFetch(t *testing.T, ctx context.Context, from nstest.Netns, addr, want string) string {
	t.Helper()
	got, err := fetch(ctx, from.Path, addr, 5*time.Second)
	if err != nil || !strings.HasPrefix(got, want) {
		t.Fatalf("from %s to %s: got %q, %v; want %q...", from.Name, addr, got, err, want)
	}
	return got
}

// mustNotFetch requires that no connection from `from` to addr works.
func mustNotFetch(t *testing.T, ctx context.Context, from nstest.Netns, addr string) error {
	t.Helper()
	got, err := fetch(ctx, from.Path, addr, 1500*time.Millisecond)
	if err == nil && got != "" {
		t.Fatalf("from %s to %s: got %q, want no connection", from.Name, addr, got)
	}
	if err == nil {
		err = errors.New("empty reply")
	}
	return err
}

// udpAsk sends msg from namespace nsPath to addr and returns the reply.
func udpAsk(ctx context.Context, nsPath, addr, msg string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := nstest.DialIn(ctx, nsPath, "udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	buf := make([]byte, 1500)
	for range 5 {
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(time.Second))
		k, err := c.Read(buf)
		if err == nil {
			return string(buf[:k]), nil
		}
	}
	return "", fmt.Errorf("no UDP reply from %s", addr)
}

// resolve asks the DNS server at server:53 for name's A records from
// namespace nsPath.
func resolve(ctx context.Context, nsPath, server, name string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := nstest.DialIn(ctx, nsPath, "udp", net.JoinHostPort(server, "53"))
	if err != nil {
		return nil, err
	}
	dc := &dns.Conn{Conn: c}
	defer dc.Close()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if err := dc.WriteMsg(q); err != nil {
		return nil, err
	}
	r, err := dc.ReadMsg()
	if err != nil {
		return nil, fmt.Errorf("resolve %s at %s: %w", name, server, err)
	}
	var ips []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			ips = append(ips, a.A.String())
		}
	}
	slices.Sort(ips)
	return ips, nil
}
