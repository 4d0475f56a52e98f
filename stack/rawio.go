package stack

import (
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// readRaw and writeRaw are read(2) and write(2) on a nonblocking host
// socket, made without telling Go's scheduler (RawSyscall), as are the
// UDP flows' sendmmsg and recvmmsg (MSG_DONTWAIT). None of them waits. A
// call the scheduler knows of (entersyscall) wakes the runtime's sysmon
// thread when ferry comes back from idle (sysmon sleeps while ferry's one
// P is idle), and one that lasts over sysmon's 20 µs tick gets the P
// handed to another thread; at a request/response's pace that was a futex
// wake-up, a nanosleep and two more context switches per round trip.
// Without them: 0 futex calls and 2 context switches per round trip
// instead of 0.8 and 3.9, and 59-71 instead of 98-118 µs of CPU (the
// bench's rr row, perf stat on ferry).
func readRaw(fd int, b []byte) (int, error) { return rawIO(unix.SYS_READ, fd, b) }

func writeRaw(fd int, b []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, b) }

func rawIO(trap uintptr, fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(p), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// socketWriter writes to a host socket as net.TCPConn.Write does (all of
// b, parking in the poller while the socket is full, within its write
// deadline), with writeRaw.
type socketWriter struct {
	c  *net.TCPConn
	rc syscall.RawConn
}

func newSocketWriter(c *net.TCPConn) (socketWriter, error) {
	rc, err := c.SyscallConn()
	return socketWriter{c: c, rc: rc}, err
}

func (w socketWriter) Write(b []byte) (int, error) {
	var (
		done int
		werr error
	)
	err := w.rc.Write(func(fd uintptr) bool {
		for done < len(b) {
			n, err := writeRaw(int(fd), b[done:])
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return false // park until writable
			case err != nil:
				werr = err
				return true
			}
			done += n
		}
		return true
	})
	if err == nil && werr != nil {
		err = os.NewSyscallError("write", werr)
	}
	if err != nil {
		return done, &net.OpError{Op: "write", Net: "tcp", Source: w.c.LocalAddr(), Addr: w.c.RemoteAddr(), Err: err}
	}
	return done, nil
}
