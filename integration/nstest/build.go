package nstest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// EnvFerryBin names a prebuilt ferry binary to test instead of building one.
const EnvFerryBin = "FERRY_BIN"

// LocateFerry returns the ferry binary to test: $FERRY_BIN when set (see
// ReachableFerry), otherwise one freshly built by BuildFerry and removed at
// tb's teardown.
func LocateFerry(ctx context.Context, tb TB) (string, error) {
	if p := os.Getenv(EnvFerryBin); p != "" {
		return ReachableFerry(tb, p)
	}
	p, cleanup, err := BuildFerry(ctx)
	if err != nil {
		return "", err
	}
	tb.Cleanup(cleanup)
	return p, nil
}

// CheckFerry returns the absolute form of path after checking that it is a
// file anyone may execute (the test user runs it).
func CheckFerry(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("ferry binary %s: %w", path, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("ferry binary: %w", err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o001 == 0 {
		return "", fmt.Errorf("ferry binary %s: not a file others may execute (mode %v)", abs, st.Mode())
	}
	return abs, nil
}

// ReachableFerry checks path with CheckFerry and returns it when every
// directory above it lets others in; otherwise it copies the binary to a
// temporary directory the test user can reach, removed at tb's teardown.
func ReachableFerry(tb TB, path string) (string, error) {
	abs, err := CheckFerry(path)
	if err != nil {
		return "", err
	}
	if othersCanEnter(filepath.Dir(abs)) {
		return abs, nil
	}
	dir, err := os.MkdirTemp(worldTempDir(), "ferry-bin-")
	if err != nil {
		return "", fmt.Errorf("copy ferry binary: %w", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", fmt.Errorf("copy ferry binary: %w", err)
	}
	data, err := os.ReadFile(abs)
	if err != nil {
		return "", fmt.Errorf("copy ferry binary: %w", err)
	}
	dst := filepath.Join(dir, "ferry")
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		return "", fmt.Errorf("copy ferry binary: %w", err)
	}
	return dst, nil
}

// BuildFerry runs `make build BIN=DIR/ferry` in the module that
// contains the working directory, DIR being a new temporary directory that
// the test user may enter. cleanup removes DIR.
func BuildFerry(ctx context.Context) (path string, cleanup func(), err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	res, err := MustExec(ctx, "go", "env", "GOMOD")
	if err != nil {
		return "", nil, fmt.Errorf("find ferry's module: %w", err)
	}
	gomod := strings.TrimSpace(res.Stdout)
	if gomod == "" || gomod == os.DevNull {
		return "", nil, fmt.Errorf("find ferry's module: the working directory is not inside a Go module")
	}
	dir, err := os.MkdirTemp(worldTempDir(), "ferry-bin-")
	if err != nil {
		return "", nil, fmt.Errorf("build ferry: %w", err)
	}
	cleanup = func() { os.RemoveAll(dir) }
	if err := os.Chmod(dir, 0o755); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("build ferry: %w", err)
	}
	path = filepath.Join(dir, "ferry")
	// The Makefile's build target, flags and all, so that the tests run
	// the binary users get.
	build := []string{"make", "-s", "-C", filepath.Dir(gomod), "build", "BIN=" + path}
	if _, err := MustExec(ctx, build...); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("build ferry: %w", err)
	}
	if err := os.Chmod(path, 0o755); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("build ferry: %w", err)
	}
	return path, cleanup, nil
}

// worldTempDir returns os.TempDir() when others may enter it and every
// directory above, and /tmp otherwise, so the test user can reach the binary.
func worldTempDir() string {
	if dir := os.TempDir(); othersCanEnter(dir) {
		return dir
	}
	return "/tmp"
}

// othersCanEnter reports whether dir and every directory above it have the
// execute bit for others.
func othersCanEnter(dir string) bool {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}
