package stack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// handleTCP NATs one guest connection attempt: it dials the destination from
// the host first and completes the guest's handshake only once that
// succeeded, so a refused or unreachable destination gives the guest a RST.
func (st *Stack) handleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	dst, ok := st.hostAddr(id.LocalAddress)
	if !ok {
		r.Complete(true)
		return
	}
	target := net.JoinHostPort(dst.String(), strconv.Itoa(int(id.LocalPort)))
	log := st.log.With("proto", "tcp", "guest", netip.AddrPortFrom(addrOf(id.RemoteAddress), id.RemotePort), "dst", target)

	st.flows.Add(1)
	defer st.flows.Done()
	defer st.recoverFlow()
	if n := st.counters.tcpFlows.Add(1); n > int64(st.cfg.MaxTCPFlows) {
		st.counters.tcpFlows.Add(-1)
		if st.counters.drop(DropTCPLimit) {
			log.Warn("TCP flow limit reached: refusing new connections (logged at most every 10s)", "limit", st.cfg.MaxTCPFlows)
		}
		r.Complete(true)
		return
	}
	defer st.counters.tcpFlows.Add(-1)
	st.counters.started.Add(1)
	host, err := st.dial(st.ctx, "tcp", target)
	if err != nil {
		st.counters.drop(DropDial)
		log.Debug("dial failed", "err", err)
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, tcpErr := r.CreateEndpoint(&wq)
	if tcpErr != nil {
		log.Debug("create endpoint", "err", tcpErr)
		r.Complete(true)
		host.Close()
		return
	}
	r.Complete(false)
	ep.SocketOptions().SetKeepAlive(true)
	ep.SocketOptions().SetDelayOption(false) // no Nagle: the host side has none either
	guest := guestConn{gonet.NewTCPConn(&wq, ep), &wq, ep}
	log.Debug("flow open")
	proxyTCP(st.ctx, countedConn{guest, &st.counters.bytesIn}, countedConn{host.(*net.TCPConn), &st.counters.bytesOut})
	log.Debug("flow closed")
}

// countedConn counts the bytes written to a connection.
type countedConn struct {
	halfCloser
	n *atomic.Uint64
}

func (c countedConn) Write(b []byte) (int, error) {
	n, err := c.halfCloser.Write(b)
	c.n.Add(uint64(n))
	return n, err
}

func (c countedConn) waitReadable() error { return waitReadable(c.halfCloser) }

// guestConn is the stack's side of a forwarded flow, with what it takes to
// wait for data without reading it.
type guestConn struct {
	*gonet.TCPConn
	wq *waiter.Queue
	ep tcpip.Endpoint
}

// waitReadable blocks until the endpoint has data, or has hung up or
// failed (including when it is closed).
func (g guestConn) waitReadable() error {
	const mask = waiter.EventIn | waiter.EventHUp | waiter.EventErr
	if g.ep.Readiness(mask) != 0 {
		return nil
	}
	e, ch := waiter.NewChannelEntry(mask)
	g.wq.EventRegister(&e)
	defer g.wq.EventUnregister(&e)
	if g.ep.Readiness(mask) == 0 {
		<-ch
	}
	return nil
}

// waitReadable blocks until src has something to read (data, EOF or an
// error), so that a copy borrows its buffer only then: idle flows hold no
// buffer. Sources it cannot wait on are read at once.
func waitReadable(src any) error {
	switch c := src.(type) {
	case interface{ waitReadable() error }:
		return c.waitReadable()
	case syscall.Conn:
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var b [1]byte
		return rc.Read(func(fd uintptr) bool {
			_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			return !errors.Is(err, unix.EAGAIN)
		})
	}
	return nil
}

// halfCloser is a connection whose write side can be shut down alone.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// proxyTCP copies bytes both ways between a and b until both directions
// have ended, carrying each half-close across. An error in either direction,
// or ctx ending, closes both connections.
func proxyTCP(ctx context.Context, a, b halfCloser) {
	stop := context.AfterFunc(ctx, func() {
		a.Close()
		b.Close()
	})
	defer stop()
	pipe := func(dst, src halfCloser) {
		if err := copyConn(dst, src); err != nil {
			a.Close()
			b.Close()
			return
		}
		dst.CloseWrite()
	}
	// One direction in a new goroutine, the other in the caller's: an idle
	// flow costs two goroutines, not three.
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(a, b)
	}()
	pipe(b, a)
	<-done
	a.Close()
	b.Close()
}

// copyBufSize is the size of the buffers bytes are copied through.
const copyBufSize = 64 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// copyConn copies from src to dst until src's EOF (nil) or an error. It
// borrows a pooled buffer only while data is ready.
func copyConn(dst io.Writer, src io.Reader) error {
	if c, ok := src.(countedConn); ok {
		src = c.halfCloser // counts what is written to it, not read
	}
	if c, ok := src.(*net.TCPConn); ok {
		return copyFromSocket(dst, c)
	}
	for {
		if err := waitReadable(src); err != nil {
			return err
		}
		bp := copyBufs.Get().(*[]byte)
		n, err := src.Read(*bp)
		if n > 0 {
			if _, werr := dst.Write((*bp)[:n]); werr != nil {
				copyBufs.Put(bp)
				return werr
			}
		}
		copyBufs.Put(bp)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// copyFromSocket is copyConn from a host socket: one nonblocking read per
// wake borrows a buffer and gives it back at once when there was nothing to
// read, so that, as with waitReadable, idle flows hold no buffer, without
// a peek costing a syscall per wake.
func copyFromSocket(dst io.Writer, src *net.TCPConn) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	for {
		var (
			bp   *[]byte
			n    int
			rerr error
		)
		err := rc.Read(func(fd uintptr) bool {
			bp = copyBufs.Get().(*[]byte)
			for {
				n, rerr = unix.Read(int(fd), *bp)
				if rerr != unix.EINTR {
					break
				}
			}
			if rerr == unix.EAGAIN {
				copyBufs.Put(bp)
				bp = nil
				return false
			}
			return true
		})
		if err != nil {
			if bp != nil {
				copyBufs.Put(bp)
			}
			return err
		}
		if rerr != nil {
			copyBufs.Put(bp)
			return &net.OpError{Op: "read", Net: "tcp", Source: src.LocalAddr(), Addr: src.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
		}
		if n == 0 {
			copyBufs.Put(bp)
			return nil // EOF
		}
		_, werr := dst.Write((*bp)[:n])
		copyBufs.Put(bp)
		if werr != nil {
			return werr
		}
	}
}
