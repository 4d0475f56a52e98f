package nstest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

// Lab is one test's world: the test user, the ferry binary and the
// namespaces made so far. When tb tears down, after everything else is
// gone, the lab checks that no process of the user and none of its
// namespaces is left.
type Lab struct {
	TB    TB
	User  User
	Ferry string // path of the ferry binary

	mu    sync.Mutex
	netns []Netns
}

// NewLab prepares the test user and the ferry binary: ferry when not
// empty, else $FERRY_BIN, else one built from the working directory's
// module. A binary the test user could not reach is copied where it can.
func NewLab(ctx context.Context, tb TB, ferry string) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the ferry harness needs root")
	}
	u, err := EnsureUser(ctx)
	if err != nil {
		return nil, err
	}
	if err := WaitNoUserProcesses(ctx, u.Name, 2*time.Second); err != nil {
		return nil, fmt.Errorf("before starting: %w", err)
	}
	lab := &Lab{TB: tb, User: u}
	tb.Cleanup(lab.checkLeftovers)
	if ferry == "" {
		ferry = os.Getenv(EnvFerryBin)
	}
	if ferry == "" {
		lab.Ferry, err = LocateFerry(ctx, tb)
	} else {
		lab.Ferry, err = ReachableFerry(tb, ferry)
	}
	if err != nil {
		return nil, err
	}
	return lab, nil
}

func (l *Lab) checkLeftovers() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitNoUserProcesses(ctx, l.User.Name, 3*time.Second); err != nil {
		l.TB.Errorf("after teardown: %v", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := CheckNetnsGone(l.netns...); err != nil {
		l.TB.Errorf("after teardown: %v", err)
	}
}

// NewNetns creates a namespace ferry-ROLE-RANDOM, deleted at teardown.
func (l *Lab) NewNetns(ctx context.Context, role string) (Netns, error) {
	n, err := NewNetns(ctx, l.TB, role)
	if err != nil {
		return Netns{}, err
	}
	l.mu.Lock()
	l.netns = append(l.netns, n)
	l.mu.Unlock()
	return n, nil
}

// StartGuest starts a guest as the test user from inside host.
func (l *Lab) StartGuest(ctx context.Context, host Netns) (*Guest, error) {
	return StartGuest(ctx, l.TB, host, l.User)
}

// StartFerry runs ferry as the test user inside host.
func (l *Lab) StartFerry(host Netns, opts FerryOpts) (*Ferry, error) {
	return StartFerry(l.TB, l.Ferry, host, l.User, opts)
}

// Attach runs `ferry attach -r 3 FLAGS... GUESTPID` inside host and waits
// until ferry reports ready.
func (l *Lab) Attach(ctx context.Context, host Netns, g *Guest, flags ...string) (*Ferry, error) {
	ready, readyW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("ready pipe: %w", err)
	}
	defer ready.Close()
	args := append([]string{"attach", "-r", "3"}, flags...)
	args = append(args, strconv.Itoa(g.PID))
	f, err := l.StartFerry(host, FerryOpts{Args: args, ExtraFiles: []*os.File{readyW}})
	readyW.Close()
	if err != nil {
		return nil, err
	}
	if err := WaitReady(ctx, ready, f, 15*time.Second); err != nil {
		return nil, err
	}
	return f, nil
}

// WaitReady reads the ready pipe until ferry closes it and checks that it
// wrote exactly "1". It gives up after timeout.
func WaitReady(ctx context.Context, ready *os.File, f *Ferry, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := ready.SetReadDeadline(deadline); err != nil {
		return fmt.Errorf("ready fd: %w", err)
	}
	var got []byte
	buf := make([]byte, 16)
	for {
		n, err := ready.Read(buf)
		got = append(got, buf[:n]...)
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("ferry not ready after %v (read %q); stderr: %q", timeout, got, f.Stderr())
		}
		break // EOF: ferry closed its end (or exited)
	}
	if string(got) != "1" {
		code := "still running"
		select {
		case <-f.Done():
			code = fmt.Sprintf("exited with %d", f.Cmd.ProcessState.ExitCode())
		default:
		}
		return fmt.Errorf("ready fd: want %q, got %q; ferry %s; stderr: %q", "1", got, code, f.Stderr())
	}
	return nil
}
