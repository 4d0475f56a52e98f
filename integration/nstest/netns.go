package nstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"time"
)

// NetnsPrefix starts the name of every namespace the harness creates.
const NetnsPrefix = "ferry-"

// Netns is a named network namespace made with `ip netns add`.
type Netns struct {
	Name string
	Path string // /run/netns/NAME
}

// randomSuffix returns n random bytes in hex.
func randomSuffix(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// NewNetns creates the namespace ferry-ROLE-RANDOM with lo up, deleted at
// tb's teardown.
func NewNetns(ctx context.Context, tb TB, role string) (Netns, error) {
	n := Netns{Name: NetnsPrefix + role + "-" + randomSuffix(4)}
	n.Path = "/run/netns/" + n.Name
	if _, err := MustExec(ctx, "ip", "netns", "add", n.Name); err != nil {
		return Netns{}, fmt.Errorf("create %s namespace: %w", role, err)
	}
	tb.Cleanup(func() {
		if err := n.Delete(); err != nil {
			tb.Errorf("%v", err)
		}
	})
	if _, err := MustExec(ctx, "ip", "-n", n.Name, "link", "set", "lo", "up"); err != nil {
		return Netns{}, fmt.Errorf("bring lo up in %s: %w", n.Name, err)
	}
	return n, nil
}

// Delete removes the namespace; deleting one already gone is not an error.
func (n Netns) Delete() error {
	if _, err := os.Stat(n.Path); os.IsNotExist(err) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := MustExec(ctx, "ip", "netns", "delete", n.Name); err != nil {
		return fmt.Errorf("delete namespace %s: %w", n.Name, err)
	}
	return nil
}

// Exec runs a command as root inside the namespace (`ip netns exec`).
func (n Netns) Exec(ctx context.Context, args ...string) (Result, error) {
	return Exec(ctx, append([]string{"ip", "netns", "exec", n.Name}, args...)...)
}

// ListNetns returns the names of all named namespaces the harness could
// have made (those starting with NetnsPrefix).
func ListNetns(ctx context.Context) ([]string, error) {
	res, err := MustExec(ctx, "ip", "netns", "list")
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var names []string
	for _, line := range strings.Split(res.Stdout, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], NetnsPrefix) {
			names = append(names, f[0])
		}
	}
	return names, nil
}
