package sandbox

import (
	"log/slog"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// EnvProbe enables the test-only probe (see the package documentation).
const EnvProbe = "FERRY_DEBUG_SECCOMP_PROBE"

// probeThreads is how many OS threads the probe tries denied syscalls on.
const probeThreads = 8

// Probe, when EnvProbe is "1", tries syscalls the filter denies but the
// kernel would otherwise allow an unprivileged process (keyctl on its own
// user keyring, process_vm_readv of its own memory) and one it denies
// anyway (unshare), on several OS threads at once, and logs each thread's
// outcome as "seccomp probe". Without the filter the first two succeed,
// which is what makes the probe a proof. On the same threads it tries what
// Landlock refuses and the mount namespace alone would not: listing the
// root directory (landlock_root), and, with apiDir >= 0 (an fd of the API
// socket's directory, outside the new root), opening that directory's
// parent through it (landlock_escape, "-" without apiDir); and what
// Landlock allows: listing /etc (landlock_etc). It is a testing aid and
// does nothing unless asked.
func Probe(log *slog.Logger, apiDir int) {
	if os.Getenv(EnvProbe) != "1" {
		return
	}
	var wg sync.WaitGroup
	var start sync.WaitGroup
	start.Add(probeThreads)
	for range probeThreads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Lock each goroutine to its own thread and keep every one
			// busy until all are, so that they run on distinct threads.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			start.Done()
			start.Wait()
			escape := "-"
			if apiDir >= 0 {
				escape = outcome(listDir(apiDir, ".."))
			}
			log.Warn("seccomp probe", "tid", unix.Gettid(),
				"keyctl", outcome(keyctl()),
				"process_vm_readv", outcome(vmRead()),
				"unshare", outcome(unix.Unshare(unix.CLONE_NEWUTS)),
				"landlock_root", outcome(listDir(unix.AT_FDCWD, "/")),
				"landlock_escape", escape,
				"landlock_etc", outcome(listDir(unix.AT_FDCWD, "/etc")))
		}()
	}
	wg.Wait()
}

func outcome(err error) string {
	if err == nil {
		return "ok"
	}
	if errno, ok := err.(unix.Errno); ok {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

func keyctl() error {
	_, err := unix.KeyctlInt(unix.KEYCTL_GET_KEYRING_ID, unix.KEY_SPEC_USER_KEYRING, 0, 0, 0)
	return err
}

func vmRead() error {
	var src, dst [8]byte
	src[0] = 1
	local := []unix.Iovec{{Base: &dst[0], Len: 8}}
	remote := []unix.RemoteIovec{{Base: uintptr(unsafe.Pointer(&src[0])), Len: 8}}
	_, err := unix.ProcessVMReadv(os.Getpid(), local, remote, 0)
	runtime.KeepAlive(&src)
	return err
}

// listDir opens path (relative to the directory open at dir) and reads
// its entries.
func listDir(dir int, path string) error {
	fd, err := unix.Openat(dir, path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var buf [4096]byte
	_, err = unix.Getdents(fd, buf[:])
	return err
}
