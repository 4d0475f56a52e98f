package nstest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
)

// DefaultUser is the test user's name unless FERRY_TEST_USER says otherwise.
const DefaultUser = "ferrytest"

// User is the unprivileged account that makes guests and runs ferry.
type User struct {
	Name string
	UID  int
	GID  int
	Home string
}

// UserName returns the test user's name: $FERRY_TEST_USER or DefaultUser.
func UserName() string {
	if n := os.Getenv("FERRY_TEST_USER"); n != "" {
		return n
	}
	return DefaultUser
}

// EnsureUser makes sure the test user exists (creating it with useradd -m),
// has subordinate ID ranges in /etc/subuid and /etc/subgid, and that
// /dev/net/tun is usable by it (mode 0666). It needs root and is idempotent.
func EnsureUser(ctx context.Context) (User, error) {
	name := UserName()
	u, err := user.Lookup(name)
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) {
		if _, err := MustExec(ctx, "useradd", "-m", "-s", "/bin/sh", name); err != nil {
			return User{}, fmt.Errorf("create test user %s: %w", name, err)
		}
		u, err = user.Lookup(name)
	}
	if err != nil {
		return User{}, fmt.Errorf("look up test user %s: %w", name, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return User{}, fmt.Errorf("test user %s: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return User{}, fmt.Errorf("test user %s: gid %q: %w", name, u.Gid, err)
	}
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		if err := ensureSubIDs(f, name); err != nil {
			return User{}, err
		}
	}
	if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
		return User{}, fmt.Errorf("make /dev/net/tun usable by %s: %w", name, err)
	}
	return User{Name: name, UID: uid, GID: gid, Home: u.HomeDir}, nil
}

// ensureSubIDs appends "name:START:65536" to path, START past every range
// already there, unless name has a range.
func ensureSubIDs(path, name string) error {
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	next := 200000
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Split(line, ":")
		if len(fields) != 3 {
			continue
		}
		if fields[0] == name {
			return nil
		}
		start, err1 := strconv.Atoi(fields[1])
		count, err2 := strconv.Atoi(fields[2])
		if err1 == nil && err2 == nil && start+count > next {
			next = start + count
		}
	}
	entry := fmt.Sprintf("%s:%d:65536\n", name, next)
	if len(data) > 0 && !strings.HasSuffix(string(data), "\n") {
		entry = "\n" + entry
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	if _, err := f.WriteString(entry); err != nil {
		f.Close()
		return fmt.Errorf("add %s to %s: %w", name, path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("add %s to %s: %w", name, path, err)
	}
	return nil
}
