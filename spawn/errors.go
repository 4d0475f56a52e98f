package spawn

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// explainStartError turns a failure to create the namespaces into a
// sentence naming the setting that forbids them.
func explainStartError(err error) error {
	if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.ENOSPC) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EACCES) {
		return fmt.Errorf("start the command's namespaces: %w", err)
	}
	if sysctl("kernel/unprivileged_userns_clone") == "0" {
		return errors.New("unprivileged user namespaces are disabled: kernel.unprivileged_userns_clone=0 (enable with: sysctl kernel.unprivileged_userns_clone=1)")
	}
	if sysctl("kernel/apparmor_restrict_unprivileged_userns") == "1" {
		return errors.New("unprivileged user namespaces are restricted by AppArmor: kernel.apparmor_restrict_unprivileged_userns=1 (allow ferry with an AppArmor profile, or set the sysctl to 0)")
	}
	if sysctl("user/max_user_namespaces") == "0" {
		return errors.New("user namespaces are disabled: user.max_user_namespaces=0 (raise it with sysctl)")
	}
	return fmt.Errorf("create user namespace: %w: are user namespaces enabled on this kernel?", err)
}

// sysctl reads a value under /proc/sys, or "" when it is absent.
func sysctl(name string) string {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
