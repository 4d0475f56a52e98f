package tap

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// readvRaw and writevRaw are readv(2) and writev(2) on the nonblocking TAP
// fd, made without telling Go's scheduler (RawSyscall). They never wait;
// and with ferry's one P (GOMAXPROCS=1), a call the scheduler knows of
// (entersyscall) that lasts over sysmon's 20 µs tick, as a write into the
// TAP does when the guest's receive path runs in it, gets its P handed to
// another thread, woken with a futex, and the frame's goroutines then
// move between threads.
func readvRaw(fd int, iov []unix.Iovec) (int, error) { return rawIOV(unix.SYS_READV, fd, iov) }

func writevRaw(fd int, iov []unix.Iovec) (int, error) { return rawIOV(unix.SYS_WRITEV, fd, iov) }

func rawIOV(trap uintptr, fd int, iov []unix.Iovec) (int, error) {
	n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// iovec returns the iovec of b.
func iovec(b []byte) unix.Iovec {
	var v unix.Iovec
	if len(b) > 0 {
		v.Base = &b[0]
		v.SetLen(len(b))
	}
	return v
}
