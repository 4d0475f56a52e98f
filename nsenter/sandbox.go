package nsenter

/*
// Defined in sandbox.c.
extern int ferry_sandbox_landlock(const char **note);
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	// envSandboxRW is FD:PATH, a file bound writable at PATH in the new
	// root.
	envSandboxRW = "_FERRY_SANDBOX_RW"
	// envSandboxRmdir is the fd of a directory ferry may remove files
	// from under Landlock.
	envSandboxRmdir = "_FERRY_SANDBOX_RMDIR"
	// envSandboxSignals is "1" when ferry may signal processes outside its
	// sandbox.
	envSandboxSignals = "_FERRY_SANDBOX_SIGNALS"
	// envSandboxProcs is "1" when ExecSandboxed put GOMAXPROCS=1 in the
	// new image's environment, the caller having none: the image's Go
	// runtime then starts with the one P that ferry's network runs on
	// (cmd/ferry's oneProc) instead of sizing itself to the machine and
	// being shrunk later, which stops the world. SandboxState removes both
	// variables, so that what ferry runs sees the caller's environment.
	envSandboxProcs = "_FERRY_SANDBOX_PROCS"
	// envSandboxFailed is set by the constructor, to the reason, when it
	// could not build the sandbox and executed ferry again without it.
	envSandboxFailed = "_FERRY_SANDBOX_FAILED"
	// envSandboxStrict, when "1", makes a failure to build the sandbox
	// fatal instead of a fallback.
	envSandboxStrict = "_FERRY_SANDBOX_STRICT"
)

// SandboxOpts is what [ExecSandboxed] confines ferry with.
type SandboxOpts struct {
	// Userns is the user namespace to enter (nil: a new one, unless ferry
	// runs as root).
	Userns *os.File
	// Keep are fds that stay open across the execution, at their numbers.
	Keep []int
	// Writable, when set, is a file (--pcap) bound writable at
	// WritablePath, an absolute path, in the new root; it is closed in the
	// new image.
	Writable     *os.File
	WritablePath string
	// RemoveDir, when >= 0, is an fd (kept open) of a directory ferry may
	// remove files from under Landlock (the API socket's).
	RemoveDir int
	// Strict makes a failure to build the sandbox end ferry with a
	// message; otherwise ferry runs on without it (see [Report.Failed]).
	Strict bool
	// Signals lets ferry signal processes outside its sandbox (ferry run's
	// command), which Landlock (ABI 6 and later) otherwise forbids.
	Signals bool
}

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
// runtime starts: it enters o.Userns (nil: a new user namespace, unless
// ferry runs as root), a new mount namespace whose root holds only /etc,
// /run and o.WritablePath, drops every capability but
// CAP_NET_BIND_SERVICE, and applies Landlock where the kernel offers it.
// The fds in o.Keep stay open across the execution, at their numbers; state
// is handed to the new image, which reads it back with [SandboxState].
// ExecSandboxed returns only on failure; when the constructor cannot build
// the sandbox it executes ferry again without it (see [SandboxReport]).
func ExecSandboxed(state []byte, o SandboxOpts) error {
	keep := append([]int(nil), o.Keep...)
	usernsVal := ""
	switch {
	case o.Userns != nil:
		keep = append(keep, int(o.Userns.Fd()))
		usernsVal = strconv.Itoa(int(o.Userns.Fd()))
	case os.Geteuid() != 0:
		usernsVal = "new"
	}
	env := append(os.Environ(), envSandbox+"="+string(state), envSandboxUserns+"="+usernsVal)
	if _, ok := os.LookupEnv("GOMAXPROCS"); !ok {
		env = append(env, "GOMAXPROCS=1", envSandboxProcs+"=1")
	}
	if o.Writable != nil {
		if !filepath.IsAbs(o.WritablePath) {
			return fmt.Errorf("sandbox: %q is not an absolute path", o.WritablePath)
		}
		keep = append(keep, int(o.Writable.Fd()))
		env = append(env, envSandboxRW+"="+strconv.Itoa(int(o.Writable.Fd()))+":"+o.WritablePath)
	}
	if o.RemoveDir >= 0 {
		env = append(env, envSandboxRmdir+"="+strconv.Itoa(o.RemoveDir))
	}
	if o.Strict {
		env = append(env, envSandboxStrict+"=1")
	}
	if o.Signals {
		env = append(env, envSandboxSignals+"=1")
	}
	for _, fd := range keep {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("sandbox: keep fd %d open: %w", fd, err)
		}
	}
	// Lock the thread so that no other goroutine runs on it while it
	// executes; the kernel ends every other thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	err := syscall.Exec("/proc/self/exe", os.Args, env)
	runtime.KeepAlive(o.Userns)
	runtime.KeepAlive(o.Writable)
	return fmt.Errorf("sandbox: re-execute ferry: %w", err)
}

// Report says what the constructor in sandbox.c did in this process.
type Report struct {
	// Failed, when not empty, is why the sandbox could not be built: this
	// image runs without it (no namespaces entered, no Landlock).
	Failed string
	// LandlockABI is the Landlock ABI version applied, 0 when none;
	// LandlockNote says why not.
	LandlockABI  int
	LandlockNote string
}

var report Report

// SandboxReport returns what the constructor did, once [SandboxState] has
// found the state.
func SandboxReport() Report { return report }

// SandboxState returns the state [ExecSandboxed] passed, if this process is
// the sandboxed re-execution, and removes the variables from the
// environment.
func SandboxState() ([]byte, bool) {
	v, ok := os.LookupEnv(envSandbox)
	if !ok || v == "" {
		return nil, false
	}
	var note *C.char
	report.LandlockABI = int(C.ferry_sandbox_landlock(&note))
	report.LandlockNote = C.GoString(note)
	report.Failed = os.Getenv(envSandboxFailed)
	if os.Getenv(envSandboxProcs) == "1" {
		os.Unsetenv("GOMAXPROCS")
	}
	for _, e := range []string{envSandbox, envSandboxUserns, envSandboxRW, envSandboxRmdir, envSandboxFailed, envSandboxStrict, envSandboxProcs} {
		os.Unsetenv(e)
	}
	return []byte(v), true
}
