package nstest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Guest is a process the test user started with `unshare -U -r -n`: the
// stand-in for a rootless container. PID is the process itself (a sleep),
// since ip netns exec, setpriv and unshare each exec the next.
type Guest struct {
	PID        int
	NetnsPath  string // /proc/PID/ns/net
	UsernsPath string // /proc/PID/ns/user

	cmd    *exec.Cmd
	stderr *bytes.Buffer
	done   chan struct{}
}

// StartGuest starts a guest as u from inside host (so that nothing of the
// guest ever sees the machine's own namespace) and waits until it has its
// own user and network namespaces. The guest is killed at tb's teardown.
func StartGuest(ctx context.Context, tb TB, host Netns, u User) (*Guest, error) {
	g := &Guest{stderr: new(bytes.Buffer), done: make(chan struct{})}
	g.cmd = exec.Command("ip", "netns", "exec", host.Name,
		"setpriv", "--reuid="+strconv.Itoa(u.UID), "--regid="+strconv.Itoa(u.GID), "--init-groups",
		"unshare", "-U", "-r", "-n", "sleep", "1000")
	g.cmd.Env = userEnv(u)
	g.cmd.Dir = "/"
	g.cmd.Stderr = g.stderr
	g.cmd.WaitDelay = time.Second
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start guest: %w", err)
	}
	g.PID = g.cmd.Process.Pid
	g.NetnsPath = "/proc/" + strconv.Itoa(g.PID) + "/ns/net"
	g.UsernsPath = "/proc/" + strconv.Itoa(g.PID) + "/ns/user"
	go func() {
		g.cmd.Wait()
		close(g.done)
	}()
	tb.Cleanup(func() {
		if err := g.Kill(5 * time.Second); err != nil {
			tb.Errorf("%v", err)
		}
	})
	if err := g.waitUnshared(ctx, host); err != nil {
		return nil, err
	}
	return g, nil
}

// userEnv is the environment for commands run as u.
func userEnv(u User) []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + u.Home, "USER=" + u.Name, "LOGNAME=" + u.Name, "LANG=C",
	}
}

// waitUnshared waits until the guest runs sleep in a namespace of its own.
func (g *Guest) waitUnshared(ctx context.Context, host Netns) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var hostIno uint64
	if st, err := os.Stat(host.Path); err == nil {
		hostIno = st.Sys().(*syscall.Stat_t).Ino
	}
	for {
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(g.PID) + "/comm")
		st, err := os.Stat(g.NetnsPath)
		if strings.TrimSpace(string(comm)) == "sleep" && err == nil && st.Sys().(*syscall.Stat_t).Ino != hostIno {
			return nil
		}
		select {
		case <-g.done:
			return fmt.Errorf("guest exited before it was ready: %v; stderr: %q", g.cmd.ProcessState, g.stderr.String())
		case <-ctx.Done():
			return fmt.Errorf("guest (PID %d) not ready: %w", g.PID, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Exited is closed once the guest process has exited and been reaped.
func (g *Guest) Exited() <-chan struct{} { return g.done }

// Kill sends SIGKILL to the guest and waits up to timeout for it to go.
func (g *Guest) Kill(timeout time.Duration) error {
	select {
	case <-g.done:
		return nil
	default:
	}
	g.cmd.Process.Kill()
	select {
	case <-g.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("guest PID %d still running %v after SIGKILL", g.PID, timeout)
	}
}

// Exec runs a command as root inside the guest's network namespace (and
// only that: `nsenter -t PID -n`).
func (g *Guest) Exec(ctx context.Context, args ...string) (Result, error) {
	return Exec(ctx, append([]string{"nsenter", "-t", strconv.Itoa(g.PID), "-n", "--"}, args...)...)
}
