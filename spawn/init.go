package spawn

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// MaybeRunInit runs the child's init and executes the command if this
// process was started by Start; otherwise it returns at once. It never
// returns in the child.
func MaybeRunInit() {
	raw := os.Getenv(envInit)
	if raw == "" {
		return
	}
	// The parent-death signal and execve both belong to a thread: keep the
	// one that asks for the first to be the one that executes.
	runtime.LockOSThread()
	var ic initConfig
	if err := json.Unmarshal([]byte(raw), &ic); err != nil {
		fatal(1, fmt.Errorf("run: bad init config: %w", err))
	}
	// The parent sends one byte once our IDs are mapped and another once the
	// network is up; a closed pipe means it gave up.
	release := os.NewFile(initFD, "release")
	b := make([]byte, 1)
	if os.Getenv(envStage) == "" {
		if n, _ := release.Read(b); n != 1 {
			os.Exit(1)
		}
		if ic.Reexec {
			// This process started unmapped, and execve took its
			// capabilities; now mapped to root, executing again gives
			// them back.
			os.Setenv(envStage, "mapped")
			err := syscall.Exec("/proc/self/exe", os.Args, os.Environ())
			fatal(1, fmt.Errorf("run: re-execute ferry in the new user namespace: %w", err))
		}
	}
	// Executing with new credentials cleared the parent-death signal
	// Start asked for: ask again, so that the command dies with ferry even
	// when ferry is killed, and give up if ferry is already gone.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
		fatal(1, fmt.Errorf("run: set the parent-death signal: %w", err))
	}
	if os.Getppid() == 1 {
		os.Exit(1)
	}
	// Mapped: the command's view is set up now, while ferry brings the
	// network up (nothing here needs it).
	if err := prepare(ic); err != nil {
		fatal(1, err)
	}
	if n, _ := release.Read(b); n != 1 {
		os.Exit(1)
	}
	release.Close()
	execCommand(ic.Args)
}

// prepare sets up the command's view of the system inside its namespaces.
func prepare(ic initConfig) error {
	if ic.LoopbackUp {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bring lo up: %w", err)
		}
	}
	if ic.ResolvConf != "" || ic.Hosts != "" {
		// Keep our mounts out of the parent namespace's peers.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("make mounts private: %w", err)
		}
	}
	for _, m := range [][2]string{{ic.ResolvConf, "/etc/resolv.conf"}, {ic.Hosts, "/etc/hosts"}} {
		if m[0] == "" {
			continue
		}
		if err := unix.Mount(m[0], m[1], "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount the generated %s: %w", m[1], err)
		}
	}
	if ic.Dir != "" {
		// Mounted, the files need no name: this removes them while ferry
		// may no longer see them (its sandbox has a root of its own).
		os.RemoveAll(ic.Dir)
	}
	if ic.Hostname != "" {
		if err := unix.Sethostname([]byte(ic.Hostname)); err != nil {
			return fmt.Errorf("set hostname %q: %w", ic.Hostname, err)
		}
	}
	return nil
}

// execCommand replaces the init with the command, exiting as a shell would
// when it cannot: 127 for a command not found, 126 for one not executable.
func execCommand(args []string) {
	path, err := exec.LookPath(args[0])
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			fatal(127, fmt.Errorf("%s: command not found", args[0]))
		}
		fatal(126, fmt.Errorf("%s: %w", args[0], err))
	}
	env := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "_FERRY_") {
			env = append(env, kv)
		}
	}
	err = syscall.Exec(path, args, env)
	code := 126
	if errors.Is(err, os.ErrNotExist) {
		code = 127
	}
	fatal(code, fmt.Errorf("%s: %w", args[0], err))
}

func fatal(code int, err error) {
	fmt.Fprintf(os.Stderr, "ferry: %v\n", err)
	os.Exit(code)
}
