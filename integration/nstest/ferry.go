package nstest

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// EnvLogLevel, when set, passes --log-level with its value to every ferry
// the harness starts (e.g. FERRY_TEST_LOG_LEVEL=debug when chasing a bug).
const EnvLogLevel = "FERRY_TEST_LOG_LEVEL"

// FerryOpts says how to run ferry.
type FerryOpts struct {
	// Args follow the binary, e.g. {"attach", "-c", "-r", "3", "1234"}.
	Args []string
	// ExtraFiles become the child's fds 3, 4, ... in order.
	ExtraFiles []*os.File
	// Wrap, when set, runs as root inside the host namespace and must exec
	// its last arguments, which are the setpriv command that starts ferry
	// as the test user (e.g. sh -c '... && exec "$@"' sh).
	Wrap []string
}

// Ferry is a running (or finished) ferry process. Its PID is ferry's own:
// ip netns exec and setpriv exec the next program.
type Ferry struct {
	Cmd  *exec.Cmd
	Args []string // ferry's own arguments (FerryOpts.Args)
	// StartedAt is when the process was started.
	StartedAt time.Time

	stdout, stderr *os.File
	done           chan struct{}
	exitedAt       time.Time
}

// StartFerry runs bin as u inside host with opts. The process is stopped
// (SIGTERM, then SIGKILL) at tb's teardown, which also logs its stderr.
func StartFerry(tb TB, bin string, host Netns, u User, opts FerryOpts) (*Ferry, error) {
	f := &Ferry{Args: opts.Args, done: make(chan struct{})}
	var err error
	if f.stdout, err = os.CreateTemp("", "ferry-stdout-"); err != nil {
		return nil, fmt.Errorf("start ferry: %w", err)
	}
	if f.stderr, err = os.CreateTemp("", "ferry-stderr-"); err != nil {
		f.closeOutput()
		return nil, fmt.Errorf("start ferry: %w", err)
	}
	args := []string{"ip", "netns", "exec", host.Name}
	args = append(args, opts.Wrap...)
	args = append(args, "setpriv", "--reuid="+strconv.Itoa(u.UID), "--regid="+strconv.Itoa(u.GID), "--init-groups", bin)
	if lvl := os.Getenv(EnvLogLevel); lvl != "" {
		args = append(args, "--log-level", lvl)
	}
	args = append(args, opts.Args...)
	f.Cmd = exec.Command(args[0], args[1:]...)
	f.Cmd.Env = userEnv(u)
	f.Cmd.Dir = "/"
	f.Cmd.Stdout = f.stdout
	f.Cmd.Stderr = f.stderr
	f.Cmd.ExtraFiles = opts.ExtraFiles
	if err := f.Cmd.Start(); err != nil {
		f.closeOutput()
		return nil, fmt.Errorf("start ferry: %w", err)
	}
	f.StartedAt = time.Now()
	go func() {
		f.Cmd.Wait()
		f.exitedAt = time.Now()
		close(f.done)
	}()
	tb.Cleanup(func() {
		if err := f.Stop(2 * time.Second); err != nil {
			tb.Errorf("%v", err)
		}
		if s := f.Stderr(); s != "" {
			tb.Logf("ferry %s stderr:\n%s", strings.Join(opts.Args, " "), s)
		}
		f.closeOutput()
	})
	return f, nil
}

func (f *Ferry) closeOutput() {
	for _, file := range []*os.File{f.stdout, f.stderr} {
		if file != nil {
			file.Close()
			os.Remove(file.Name())
		}
	}
}

// PID is ferry's process ID.
func (f *Ferry) PID() int { return f.Cmd.Process.Pid }

// Done is closed once ferry has exited and been reaped.
func (f *Ferry) Done() <-chan struct{} { return f.done }

// ExitedAt is when ferry was seen to exit; zero while it runs.
func (f *Ferry) ExitedAt() time.Time {
	select {
	case <-f.done:
		return f.exitedAt
	default:
		return time.Time{}
	}
}

// Wait waits up to timeout for ferry to exit and returns its exit code
// (-1 when killed by a signal).
func (f *Ferry) Wait(timeout time.Duration) (int, error) {
	select {
	case <-f.done:
		return f.Cmd.ProcessState.ExitCode(), nil
	case <-time.After(timeout):
		return 0, fmt.Errorf("ferry (PID %d) still running after %v; stderr so far: %q", f.PID(), timeout, f.Stderr())
	}
}

// Signal sends sig to ferry unless it has exited.
func (f *Ferry) Signal(sig syscall.Signal) error {
	select {
	case <-f.done:
		return nil
	default:
	}
	if err := f.Cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal ferry: %w", err)
	}
	return nil
}

// Stop sends SIGTERM, waits up to grace, then SIGKILL and waits as long
// again. It reports an error only if ferry still would not go.
func (f *Ferry) Stop(grace time.Duration) error {
	f.Signal(syscall.SIGTERM)
	if _, err := f.Wait(grace); err == nil {
		return nil
	}
	f.Signal(syscall.SIGKILL)
	if _, err := f.Wait(grace); err != nil {
		return fmt.Errorf("stop ferry: %w", err)
	}
	return nil
}

// Stdout is what ferry has written to stdout so far.
func (f *Ferry) Stdout() string { return readAll(f.stdout) }

// Stderr is what ferry has written to stderr so far.
func (f *Ferry) Stderr() string { return readAll(f.stderr) }

func readAll(file *os.File) string {
	if file == nil {
		return ""
	}
	b, err := io.ReadAll(io.NewSectionReader(file, 0, 1<<30))
	if err != nil {
		return fmt.Sprintf("<reading %s: %v>", file.Name(), err)
	}
	return string(b)
}
