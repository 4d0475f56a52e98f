package nsenter

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Environment variables read by the constructor in sandbox.c.
const (
	// envSandbox carries the caller's state across the re-execution; the
	// constructor only checks that it is set.
	envSandbox = "_FERRY_SANDBOX"
	// envSandboxUserns is the fd of the user namespace to enter, "new"
	// for a new one, or empty for none.
	envSandboxUserns = "_FERRY_SANDBOX_USERNS"
)

// SandboxUserns opens the user namespace a sandboxed ferry serving t enters:
// t.UsernsPath, else the one owning t's network namespace. It returns nil
// when that is ferry's own user namespace (or not below it) or t has no
// network namespace; [ExecSandboxed] then makes a new one unless ferry runs
// as root.
func SandboxUserns(t Target) (*os.File, error) {
	var ns *os.File
	switch {
	case t.UsernsPath != "":
		f, err := os.Open(t.UsernsPath)
		if err != nil {
			return nil, fmt.Errorf("sandbox: open user namespace: %w", err)
		}
		ns = f
	case t.NetnsPath != "":
		net, err := os.Open(t.NetnsPath)
		if err != nil {
			return nil, fmt.Errorf("sandbox: open network namespace: %w", err)
		}
		fd, err := unix.IoctlRetInt(int(net.Fd()), unix.NS_GET_USERNS)
		net.Close()
		if errors.Is(err, unix.EPERM) {
			return nil, nil // not below ours: nothing to join
		}
		if err != nil {
			return nil, fmt.Errorf("sandbox: find the user namespace owning %s: %w", t.NetnsPath, err)
		}
		ns = os.NewFile(uintptr(fd), "userns")
	default:
		return nil, nil
	}
	var self, other unix.Stat_t
	if err := unix.Stat("/proc/self/ns/user", &self); err != nil {
		ns.Close()
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if err := unix.Fstat(int(ns.Fd()), &other); err != nil {
		ns.Close()
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if self.Dev == other.Dev && self.Ino == other.Ino {
		ns.Close()
		return nil, nil
	}
	return ns, nil
}

// ExecSandboxed re-executes ferry in place, with the same PID and
// arguments, so that the constructor in sandbox.c confines it before its Go
// runtime starts: it enters userns (nil: a new user namespace, unless ferry
// runs as root), a new mount namespace whose root holds only /etc and /run,
// and drops every capability but CAP_NET_BIND_SERVICE. The fds in keep stay
// open across the execution, at their numbers; state is handed to
// the new image, which reads it back with [SandboxState]. ExecSandboxed
// returns only on failure.
func ExecSandboxed(state []byte, userns *os.File, keep []int) error {
	usernsVal := ""
	switch {
	case userns != nil:
		keep = append(keep, int(userns.Fd()))
		usernsVal = strconv.Itoa(int(userns.Fd()))
	case os.Geteuid() != 0:
		usernsVal = "new"
	}
	for _, fd := range keep {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("sandbox: keep fd %d open: %w", fd, err)
		}
	}
	env := append(os.Environ(), envSandbox+"="+string(state), envSandboxUserns+"="+usernsVal)
	// Lock the thread so that no other goroutine runs on it while it
	// executes; the kernel ends every other thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	err := syscall.Exec("/proc/self/exe", os.Args, env)
	runtime.KeepAlive(userns)
	return fmt.Errorf("sandbox: re-execute ferry: %w", err)
}

// SandboxState returns the state [ExecSandboxed] passed, if this process is
// the sandboxed re-execution, and removes the variables from the
// environment.
func SandboxState() ([]byte, bool) {
	v, ok := os.LookupEnv(envSandbox)
	if !ok || v == "" {
		return nil, false
	}
	os.Unsetenv(envSandbox)
	os.Unsetenv(envSandboxUserns)
	return []byte(v), true
}
