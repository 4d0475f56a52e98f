package integration

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ferrynet/ferry/integration/nstest"
)

// ferryRunArgs is the command line that runs `ferry run ARGS...` as the test
// user inside the host namespace.
func (w *world) ferryRunArgs(args ...string) []string {
	u := w.lab.User
	cmd := []string{"ip", "netns", "exec", w.host.Name, "setpriv",
		"--reuid=" + strconv.Itoa(u.UID), "--regid=" + strconv.Itoa(u.GID), "--init-groups", w.lab.Ferry, "run"}
	return append(cmd, args...)
}

// ferryRun runs `ferry run ARGS...` to its end.
func (w *world) ferryRun(t *testing.T, args ...string) nstest.Result {
	t.Helper()
	res, err := nstest.Exec(w.ctx, w.ferryRunArgs(args...)...)
	if err != nil {
		t.Fatalf("ferry run: %v", err)
	}
	t.Logf("ferry run %s -> exit %d (%v)\nstdout: %q\nstderr: %q", strings.Join(args, " "), res.ExitCode,
		res.Elapsed.Round(time.Millisecond), res.Stdout, res.Stderr)
	return res
}

func TestRunCurlPrintsOnlyThePage(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	port, hits := serveHostPage(t, w)
	res := w.ferryRun(t, "--", "curl", "-s", "--max-time", "10", fmt.Sprintf("http://10.0.2.2:%d/", port))
	if res.ExitCode != 0 || res.Stdout != page {
		t.Errorf("ferry run curl: exit %d, stdout %q; want 0 and exactly %q", res.ExitCode, res.Stdout, page)
	}
	if hits.Load() != 1 {
		t.Errorf("server saw %d requests, want 1", hits.Load())
	}
}

func TestRunExitStatus(t *testing.T) {
	w := newWorld(t, time.Minute)
	if res := w.ferryRun(t, "--", "sh", "-c", "exit 7"); res.ExitCode != 7 {
		t.Errorf("ferry run -- sh -c 'exit 7' exited %d, want 7", res.ExitCode)
	}
	res := w.ferryRun(t, "--", "no-such-command-ferry")
	if res.ExitCode != 127 || !strings.Contains(res.Stderr, "no-such-command-ferry: command not found") {
		t.Errorf("missing command: exit %d, stderr %q; want 127 and \"command not found\"", res.ExitCode, res.Stderr)
	}
	if res := w.ferryRun(t); res.ExitCode == 0 || !strings.Contains(res.Stderr, "missing the command") {
		t.Errorf("no command: exit %d, stderr %q; want an error naming the missing command", res.ExitCode, res.Stderr)
	}
}

// startRun starts `ferry run` with args as the test user and returns it
// with a scanner of its standard output.
func startRun(t *testing.T, w *world, args ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	argv := w.ferryRunArgs(args...)
	cmd := exec.CommandContext(w.ctx, argv[0], argv[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, bufio.NewScanner(out)
}

func TestRunPassesSignals(t *testing.T) {
	w := newWorld(t, time.Minute)
	cmd, lines := startRun(t, w, "--", "sh", "-c", `trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.1; done`)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("command did not start: %q", lines.Text())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !lines.Scan() || lines.Text() != "got-term" {
		t.Errorf("command printed %q after SIGTERM to ferry, want got-term", lines.Text())
	}
	err := cmd.Wait()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 42 {
		t.Errorf("ferry run exited with %v, want the command's status 42", err)
	}
}

func TestRunNames(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	port, err := nstest.ServeDNS(t, w.host.Path, "127.0.0.1", dns.HandlerFunc(func(rw dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) == 1 && q.Question[0].Name == "svc.example.test." && q.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR("svc.example.test. 60 IN A 10.9.8.7")
			m.Answer = append(m.Answer, rr)
		} else if len(q.Question) == 1 && q.Question[0].Name != "svc.example.test." {
			m.Rcode = dns.RcodeNameError
		}
		rw.WriteMsg(m)
	}))
	if err != nil {
		t.Fatal(err)
	}
	before := hashFiles(t, "/etc/hosts", "/etc/resolv.conf")
	res := w.ferryRun(t, "--dns-upstream", fmt.Sprintf("127.0.0.1:%d", port), "--hostname", "web1",
		"--add-host", "db:10.1.2.3", "--add-host", "hostgw:host-gateway", "--dns-search", "example.test",
		"--dns-option", "ndots:1", "--",
		"sh", "-c", "getent hosts svc; getent hosts db; getent hosts hostgw; getent hosts web1; hostname; cat /etc/resolv.conf")
	if res.ExitCode != 0 {
		t.Fatalf("ferry run failed: %s", res)
	}
	for _, want := range []string{
		"10.9.8.7        svc.example.test",
		"10.1.2.3        db",
		"10.0.2.2        hostgw",
		"10.0.2.100      web1",
		"\nweb1\n",
		"nameserver 10.0.2.3\n",
		"search example.test\n",
		"options ndots:1\n",
	} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, res.Stdout)
		}
	}
	if after := hashFiles(t, "/etc/hosts", "/etc/resolv.conf"); after != before {
		t.Errorf("the host's /etc/hosts or /etc/resolv.conf changed")
	}
}

// hashFiles hashes the contents of files, to see that they did not change.
func hashFiles(t *testing.T, paths ...string) string {
	t.Helper()
	h := sha256.New()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(b)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func TestRunNetModes(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	other, err := w.lab.NewNetns(w.ctx, "peer")
	if err != nil {
		t.Fatal(err)
	}
	veth, err := nstest.NewVeth(w.ctx, w.host, "172.31.201.1/24", other, "172.31.201.2/24")
	if err != nil {
		t.Fatal(err)
	}

	res := w.ferryRun(t, "--net", "none", "--", "ip", "-o", "link")
	if res.ExitCode != 0 || strings.Count(res.Stdout, "\n") != 1 || !strings.Contains(res.Stdout, ": lo:") || !strings.Contains(res.Stdout, "UP") {
		t.Errorf("--net none: want only lo, up; got exit %d:\n%s", res.ExitCode, res.Stdout)
	}
	res = w.ferryRun(t, "--net", "host", "--", "ip", "-o", "addr")
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, veth.NameA) || !strings.Contains(res.Stdout, "172.31.201.1/24") {
		t.Errorf("--net host: want the host's %s with 172.31.201.1; got exit %d:\n%s", veth.NameA, res.ExitCode, res.Stdout)
	}

	// A first ferry run holds a network; a second joins it.
	port, hits := serveHostPage(t, w)
	args := w.ferryRunArgs("--", "sh", "-c", "echo $$; exec sleep 60")
	first := exec.CommandContext(w.ctx, args[0], args[1:]...)
	out, err := first.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Process.Signal(syscall.SIGTERM); first.Wait() })
	lines := bufio.NewScanner(out)
	if !lines.Scan() {
		t.Fatal("first ferry run printed no PID")
	}
	pid := strings.TrimSpace(lines.Text())
	res = w.ferryRun(t, "--net", "container:"+pid, "--",
		"sh", "-c", fmt.Sprintf("ip -o addr show tap0 && curl -s --max-time 10 http://10.0.2.2:%d/", port))
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "10.0.2.100/24") || !strings.HasSuffix(res.Stdout, page) {
		t.Errorf("--net container:%s: want tap0 with 10.0.2.100 and the page; got exit %d:\n%s", pid, res.ExitCode, res.Stdout)
	}
	if hits.Load() != 1 {
		t.Errorf("server saw %d requests, want 1", hits.Load())
	}
	first.Process.Signal(syscall.SIGTERM)
	waitCtx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
	defer cancel()
	go func() { <-waitCtx.Done(); first.Process.Kill() }()
	first.Wait()
	if code := first.ProcessState.ExitCode(); code != 128+int(syscall.SIGTERM) {
		t.Errorf("first ferry run exited %d after SIGTERM, want %d", code, 128+int(syscall.SIGTERM))
	}
}

func TestRunErrors(t *testing.T) {
	w := newWorld(t, time.Minute)
	u := w.lab.User
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no user namespaces", []string{"ip", "netns", "exec", w.host.Name, "setpriv", "--reuid=" + strconv.Itoa(u.UID),
			"--regid=" + strconv.Itoa(u.GID), "--init-groups", "unshare", "-U", "-r", "sh", "-c",
			`echo 0 >/proc/sys/user/max_user_namespaces && exec "$0" run -- true`, w.lab.Ferry},
			"user namespaces are disabled: user.max_user_namespaces=0"},
		{"bad net mode", w.ferryRunArgs("--net", "bogus", "--", "true"), `invalid --net "bogus"`},
		{"container gone", w.ferryRunArgs("--net", "container:999999", "--", "true"), "no such process"},
		{"bad add-host", w.ferryRunArgs("--add-host", "db", "--", "true"), `invalid --add-host "db"`},
		{"bad dns", w.ferryRunArgs("--dns", "x.y", "--", "true"), `invalid --dns "x.y"`},
		{"bad mtu", w.ferryRunArgs("--mtu", "10", "--", "true"), "MTU"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := nstest.Exec(w.ctx, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			stderr := strings.TrimSpace(res.Stderr)
			if res.ExitCode != 1 || !strings.HasPrefix(stderr, "ferry: ") || strings.Contains(stderr, "\n") || !strings.Contains(stderr, tc.want) {
				t.Errorf("got exit %d, stderr %q; want exit 1 and one line containing %q", res.ExitCode, stderr, tc.want)
			}
		})
	}
}

// TestRunSeccomp checks that ferry run filters its own syscalls once the
// command runs, unless --no-sandbox, and that the command is not filtered.
func TestRunSeccomp(t *testing.T) {
	w := newWorld(t, time.Minute)
	script := `sleep 1; grep Seccomp: /proc/$PPID/status; grep Seccomp: /proc/self/status`
	res := w.ferryRun(t, "--", "sh", "-c", script)
	if res.ExitCode != 0 || !strings.HasPrefix(res.Stdout, "Seccomp:\t2\nSeccomp:\t0\n") {
		t.Errorf("ferry run: want ferry filtered (2) and the command not (0), got %q", res.Stdout)
	}
	res = w.ferryRun(t, "--no-sandbox", "--", "sh", "-c", script)
	if res.ExitCode != 0 || !strings.HasPrefix(res.Stdout, "Seccomp:\t0\nSeccomp:\t0\n") {
		t.Errorf("ferry run --no-sandbox: want no filter anywhere, got %q", res.Stdout)
	}
}

// TestRunKilled kills ferry run with SIGKILL, in both sandbox modes: its
// command must die with it (the parent-death signal), not live on as an
// orphan.
func TestRunKilled(t *testing.T) {
	w := newWorld(t, time.Minute)
	for _, mode := range [][]string{nil, {"--no-sandbox"}} {
		cmd, lines := startRun(t, w, append(mode, "--", "sh", "-c", `echo $$; while :; do sleep 0.1; done`)...)
		if !lines.Scan() {
			t.Fatalf("%v: command did not start", mode)
		}
		pid, err := strconv.Atoi(lines.Text())
		if err != nil {
			t.Fatalf("%v: command printed %q, want its PID", mode, lines.Text())
		}
		cmd.Process.Kill()
		cmd.Wait()
		gone := false
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err != nil || strings.Contains(string(st), ") Z ") {
				gone = true
				break
			}
		}
		if !gone {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("%v: the command (PID %d) outlived ferry run killed by SIGKILL", mode, pid)
		}
	}
}
