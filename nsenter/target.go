package nsenter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Target names the namespaces ferry attaches to.
type Target struct {
	// PID is the process whose namespaces are used, or 0 when NetnsPath
	// names a bind-mounted namespace.
	PID int
	// NetnsPath is the network namespace, e.g. /proc/PID/ns/net.
	NetnsPath string
	// UsernsPath is the user namespace to join first; empty means the one
	// owning the network namespace.
	UsernsPath string
}

// PIDTarget returns the target for the namespaces of process pid, checking
// that the process exists.
func PIDTarget(pid int, usernsPath string) (Target, error) {
	if pid <= 0 {
		return Target{}, fmt.Errorf("invalid PID %d: must be a positive integer", pid)
	}
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return Target{}, fmt.Errorf("target process %d: no such process: is the container still running?", pid)
	}
	t := Target{PID: pid, NetnsPath: "/proc/" + strconv.Itoa(pid) + "/ns/net", UsernsPath: usernsPath}
	return t, t.check()
}

// PathTarget returns the target for a bind-mounted network namespace.
func PathTarget(netnsPath, usernsPath string) (Target, error) {
	t := Target{NetnsPath: netnsPath, UsernsPath: usernsPath}
	return t, t.check()
}

func (t Target) check() error {
	if _, err := os.Stat(t.NetnsPath); err != nil {
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("network namespace %s: operation not permitted: run ferry as the user who created the namespace", t.NetnsPath)
		}
		return fmt.Errorf("network namespace: %w", err)
	}
	if t.UsernsPath != "" {
		if _, err := os.Stat(t.UsernsPath); err != nil {
			return fmt.Errorf("userns path doesn't exist: %s: %w", t.UsernsPath, err)
		}
	}
	return nil
}

// WaitExit blocks until the target process exits or ctx is done. For a
// target without a PID it only waits for ctx.
func (t Target) WaitExit(ctx context.Context) error {
	if t.PID == 0 {
		<-ctx.Done()
		return ctx.Err()
	}
	fd, err := unix.PidfdOpen(t.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		return fmt.Errorf("pidfd_open %d: %w", t.PID, err)
	}
	return waitReadable(ctx, fd)
}

// WaitHangup blocks until fd reports any event (the writer closing a pipe,
// data arriving) or ctx is done. fd is left open.
func WaitHangup(ctx context.Context, fd int) error {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("exit-fd %d: %w", fd, err)
	}
	return waitReadable(ctx, dup)
}

// waitReadable polls fd (which it closes) until it is readable or has hung
// up, or until ctx is done.
func waitReadable(ctx context.Context, fd int) error {
	defer unix.Close(fd)
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	defer unix.Close(wake)
	stop := context.AfterFunc(ctx, func() {
		var one = []byte{1, 0, 0, 0, 0, 0, 0, 0}
		unix.Write(wake, one)
	})
	defer stop()
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(wake), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if fds[1].Revents != 0 {
			return ctx.Err()
		}
		if fds[0].Revents != 0 {
			return nil
		}
	}
}
