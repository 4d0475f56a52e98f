package nstest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// UserProcesses lists the processes (PID and command line) running as the
// named user.
func UserProcesses(ctx context.Context, user string) ([]string, error) {
	res, err := Exec(ctx, "pgrep", "-a", "-u", user)
	if err != nil {
		return nil, fmt.Errorf("list processes of %s: %w", user, err)
	}
	switch res.ExitCode {
	case 0:
		return strings.Split(strings.TrimSpace(res.Stdout), "\n"), nil
	case 1:
		return nil, nil
	default:
		return nil, fmt.Errorf("list processes of %s: %s", user, res)
	}
}

// WaitNoUserProcesses waits up to timeout until no process runs as the
// named user, and otherwise says which are left.
func WaitNoUserProcesses(ctx context.Context, user string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		procs, err := UserProcesses(context.WithoutCancel(ctx), user)
		if err != nil {
			return err
		}
		if len(procs) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("processes of %s left after %v:\n%s", user, timeout, strings.Join(procs, "\n"))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// CheckNetnsGone reports the namespaces among ns that still exist.
func CheckNetnsGone(ns ...Netns) error {
	var left []string
	for _, n := range ns {
		if _, err := os.Stat(n.Path); err == nil {
			left = append(left, n.Name)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("network namespaces left behind: %s", strings.Join(left, ", "))
	}
	return nil
}
