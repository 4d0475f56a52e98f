package stack

import (
	"net"
	"os"
	"sync/atomic"
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
// instead of 0.8 and 3.9, and 48-80 instead of 74-118 µs of CPU (the
// bench's rr row, perf stat on ferry; the spread is the VM's).
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
// deadline), with writeRaw, and counts what it wrote in n when n is not
// nil. Its callback is made once per flow, not per write, so that a write
// allocates nothing.
type socketWriter struct {
	c     *net.TCPConn
	rc    syscall.RawConn
	n     *atomic.Uint64
	write func(fd uintptr) bool // w.writeFD, bound once
	// The write in progress, for write.
	b    []byte
	done int
	err  error
}

func newSocketWriter(c *net.TCPConn, n *atomic.Uint64) (*socketWriter, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	w := &socketWriter{c: c, rc: rc, n: n}
	w.write = w.writeFD
	return w, nil
}

func (w *socketWriter) Write(b []byte) (int, error) {
	w.b, w.done, w.err = b, 0, nil
	err := w.rc.Write(w.write)
	done, werr := w.done, w.err
	w.b, w.err = nil, nil
	if w.n != nil {
		w.n.Add(uint64(done))
	}
	if err == nil && werr != nil {
		err = os.NewSyscallError("write", werr)
	}
	if err != nil {
		return done, &net.OpError{Op: "write", Net: "tcp", Source: w.c.LocalAddr(), Addr: w.c.RemoteAddr(), Err: err}
	}
	return done, nil
}

// writeFD writes what is left of w.b to fd until the socket is full (false:
// park until writable) or all is written or the write failed (true).
func (w *socketWriter) writeFD(fd uintptr) bool {
	for w.done < len(w.b) {
		n, err := writeRaw(int(fd), w.b[w.done:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			w.err = err
			return true
		}
		w.done += n
	}
	return true
}
