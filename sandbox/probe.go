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
// which is what makes the probe a proof. It is a testing aid and does
// nothing unless asked.
func Probe(log *slog.Logger) {
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
			log.Warn("seccomp probe", "tid", unix.Gettid(),
				"keyctl", outcome(keyctl()),
				"process_vm_readv", outcome(vmRead()),
				"unshare", outcome(unix.Unshare(unix.CLONE_NEWUTS)))
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
