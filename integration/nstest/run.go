package nstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// DefaultTimeout bounds a command run without a deadline of its own.
const DefaultTimeout = 30 * time.Second

// Result is what a finished command left behind.
type Result struct {
	Args     []string
	Stdout   string
	Stderr   string
	ExitCode int // -1 when killed by a signal
	Elapsed  time.Duration
}

// String describes the command and its outcome, for error messages.
func (r Result) String() string {
	return fmt.Sprintf("%s: exit %d after %v\nstdout: %q\nstderr: %q",
		strings.Join(r.Args, " "), r.ExitCode, r.Elapsed.Round(time.Millisecond), r.Stdout, r.Stderr)
}

// Exec runs args[0] with args[1:] and waits for it, killing it when ctx is
// done (or after DefaultTimeout when ctx has no deadline). A non-zero exit is
// not an error: it is reported in Result.ExitCode. err is set only when the
// command could not be started or had to be killed.
func Exec(ctx context.Context, args ...string) (Result, error) {
	if len(args) == 0 {
		return Result{}, errors.New("exec: no command")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	// A grandchild that keeps the output pipes open must not hang us.
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	err := cmd.Run()
	res := Result{
		Args:     args,
		Stdout:   stdout.String(),
		Stderr:   stderr.String(),
		ExitCode: cmd.ProcessState.ExitCode(),
		Elapsed:  time.Since(start),
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("%s: killed: %w", strings.Join(args, " "), ctx.Err())
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return res, fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	return res, nil
}

// MustExec is Exec that also treats a non-zero exit as an error, whose text
// includes the command's output.
func MustExec(ctx context.Context, args ...string) (Result, error) {
	res, err := Exec(ctx, args...)
	if err != nil {
		return res, err
	}
	if res.ExitCode != 0 {
		return res, fmt.Errorf("command failed: %s", res)
	}
	return res, nil
}
