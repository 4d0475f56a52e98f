package stack

import (
	"context"
	"errors"
	"io"
	"log/slog"
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
// Every refusal is counted under its own cause (see Stats) and logged, at
// most every 10 s per cause, with its error.
func (st *Stack) handleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	guestAddr := netip.AddrPortFrom(addrOf(id.RemoteAddress), id.RemotePort)
	dst, ok := st.hostAddr(id.LocalAddress)
	if !ok {
		st.refuseTCP(r, DropNoDestination, "refused a guest connection to an address ferry never dials", nil,
			"guest", guestAddr, "dst", addrOf(id.LocalAddress))
		return
	}
	target := net.JoinHostPort(dst.String(), strconv.Itoa(int(id.LocalPort)))

	st.flows.Add(1)
	defer st.flows.Done()
	defer st.recoverFlow()
	if n := st.counters.tcpFlows.Add(1); n > int64(st.cfg.MaxTCPFlows) {
		st.counters.tcpFlows.Add(-1)
		st.refuseTCP(r, DropTCPLimit, "TCP flow limit reached: refusing new connections", nil,
			"guest", guestAddr, "dst", target, "limit", st.cfg.MaxTCPFlows)
		return
	}
	defer st.counters.tcpFlows.Add(-1)
	st.counters.started.Add(1)
	st.counters.tcpDialing.Add(1)
	host, err := st.dial(st.ctx, "tcp", target)
	st.counters.tcpDialing.Add(-1)
	if err != nil {
		st.refuseTCP(r, dialDropCause(err), "refused a guest connection: the host dial failed", err,
			"guest", guestAddr, "dst", target)
		return
	}
	var wq waiter.Queue
	ep, tcpErr := r.CreateEndpoint(&wq)
	if tcpErr != nil {
		host.Close()
		st.refuseTCP(r, DropHandshake, "the guest's handshake with the stack failed", errors.New(tcpErr.String()),
			"guest", guestAddr, "dst", target)
		return
	}
	r.Complete(false)
	ep.SocketOptions().SetKeepAlive(true)
	ep.SocketOptions().SetDelayOption(false) // no Nagle: the host side has none either
	guest := guestConn{gonet.NewTCPConn(&wq, ep), &wq, ep}
	// No logger With per flow: under a SYN flood its formatting costs
	// more than the refusal itself.
	debug := st.log.Enabled(st.ctx, slog.LevelDebug)
	if debug {
		st.log.Debug("flow open", "proto", "tcp", "guest", guestAddr, "dst", target)
	}
	proxyTCP(st.ctx, countedConn{guest, &st.counters.bytesIn}, countedConn{host.(*net.TCPConn), &st.counters.bytesOut})
	if debug {
		st.log.Debug("flow closed", "proto", "tcp", "guest", guestAddr, "dst", target)
	}
}

// refuseTCP answers a guest's connection attempt with a RST, counting it
// under cause and logging it (with err, when not nil) at most every 10 s
// per cause; every refusal is logged at debug level.
func (st *Stack) refuseTCP(r *tcp.ForwarderRequest, cause, msg string, err error, attrs ...any) {
	st.counters.refusals.Add(1)
	r.Complete(true)
	logNow := st.counters.drop(cause)
	if !logNow && !st.log.Enabled(st.ctx, slog.LevelDebug) {
		return
	}
	attrs = append(attrs, "cause", cause)
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	if logNow {
		st.log.Info(msg+" (logged at most every 10s)", attrs...)
	} else {
		st.log.Debug(msg, attrs...)
	}
}

// dialDropCause sorts a failed host dial into its drop cause.
func dialDropCause(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return DropDialRefused
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return DropDialNoPort
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		return DropDialUnreachable
	case errors.Is(err, syscall.ETIMEDOUT), errors.As(err, &ne) && ne.Timeout():
		return DropDialTimeout
	}
	return DropDial
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

// endpoint implements guestEndpoint.
func (g guestConn) endpoint() (tcpip.Endpoint, *waiter.Queue) { return g.ep, g.wq }

// guestEndpoint is the stack's side of a flow, whose endpoint a host socket's
// bytes are written into directly.
type guestEndpoint interface {
	endpoint() (tcpip.Endpoint, *waiter.Queue)
}

// waitReadable blocks until the endpoint has data, or has hung up or
// failed (including when it is closed).
func (g guestConn) waitReadable() error {
	waitEndpoint(g.ep, g.wq, waiter.EventIn|waiter.EventHUp|waiter.EventErr)
	return nil
}

// waitEndpoint blocks until ep is ready for one of the events in mask.
func waitEndpoint(ep tcpip.Endpoint, wq *waiter.Queue, mask waiter.EventMask) {
	if ep.Readiness(mask) != 0 {
		return
	}
	e, ch := waiter.NewChannelEntry(mask)
	wq.EventRegister(&e)
	defer wq.EventUnregister(&e)
	if ep.Readiness(mask) == 0 {
		<-ch
	}
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
	rawDst, counter := dst, (*atomic.Uint64)(nil)
	if c, ok := dst.(countedConn); ok {
		rawDst, counter = c.halfCloser, c.n
	}
	if c, ok := src.(*net.TCPConn); ok {
		if g, ok := rawDst.(guestEndpoint); ok {
			ep, wq := g.endpoint()
			return copySocketToEndpoint(ep, wq, c, counter)
		}
		return copyFromSocket(dst, c)
	}
	if c, ok := rawDst.(*net.TCPConn); ok {
		w, err := newSocketWriter(c, counter) // counts in place of countedConn
		if err != nil {
			return err
		}
		dst = w
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
				n, rerr = readRaw(int(fd), *bp)
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

// copySocketToEndpoint is copyConn from a host socket into the stack: the
// endpoint reads the socket itself into its send buffer (socketPayload), one
// copy instead of two through a buffer of ours, and idle flows hold no
// buffer. counter, when not nil, counts the bytes moved.
//
// The copy reads the socket until it is empty (EAGAIN) or closed before it
// parks, as the poller's edge-triggered readiness needs; the read that
// finds it empty comes after the bytes went to the endpoint, off their
// path. A small message so leaves after one read (fill), where counting
// the bytes first (SIOCINQ) took two. It waits for room in the endpoint
// outside rc.Read: closing the socket waits for an rc.Read callback to
// return, and the other direction closes the socket before the endpoint.
func copySocketToEndpoint(ep tcpip.Endpoint, wq *waiter.Queue, src *net.TCPConn, counter *atomic.Uint64) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	var (
		p    socketPayload
		werr tcpip.Error
		full bool // the endpoint's send buffer is full
	)
	defer p.release()
	copyReady := func(fd uintptr) bool {
		p.fd = int(fd)
		for {
			if !p.fill() {
				return false // empty: park until readable
			}
			if p.eof || p.err != nil {
				return true
			}
			n, e := ep.Write(&p, tcpip.WriteOptions{})
			if counter != nil && n > 0 {
				counter.Add(uint64(n))
			}
			switch e.(type) {
			case nil:
				// Written, all or some: fill reads again once all is.
			case *tcpip.ErrWouldBlock:
				full = true
				return true
			default:
				werr = e
				return true
			}
		}
	}
	for {
		full = false
		err := rc.Read(copyReady)
		switch {
		case err != nil:
			return err
		case p.err != nil:
			return &net.OpError{Op: "read", Net: "tcp", Source: src.LocalAddr(), Addr: src.RemoteAddr(), Err: os.NewSyscallError("read", p.err)}
		case werr != nil:
			return errors.New(werr.String())
		case !full:
			return nil // EOF
		}
		// Wait for room, a hang-up or an error.
		waitEndpoint(ep, wq, waiter.WritableEvents|waiter.EventHUp|waiter.EventErr)
	}
}

// headSize is how much socketPayload reads before it knows how many bytes
// wait: a small message (a request, an answer) whole in one read, where
// asking the socket for its count (SIOCINQ) first would take two.
const headSize = 2 << 10

var headBufs = sync.Pool{New: func() any { b := make([]byte, headSize); return &b }}

// socketPayload is a tcpip.Payloader reading a host socket: the bytes it
// read ahead (head), then those it knows wait in the socket (left), read
// straight into the endpoint's buffer.
type socketPayload struct {
	fd      int
	head    []byte  // bytes read ahead, served first
	headBuf *[]byte // head's pooled buffer, while it holds one
	left    int     // bytes known to wait in the socket after head
	eof     bool    // the peer closed its side
	err     error   // the socket failed
}

// fill reads ahead what waits in the socket, without waiting, unless
// bytes are still known to wait: up to headSize into a pooled buffer and,
// when that fills, counts the rest (SIOCINQ). It reports whether there is
// something to act on (bytes, EOF or an error); false means the socket was
// empty.
func (p *socketPayload) fill() bool {
	if p.eof || p.err != nil || p.Len() > 0 {
		return true
	}
	bp := headBufs.Get().(*[]byte)
	for {
		n, err := readRaw(p.fd, *bp)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			headBufs.Put(bp)
			return false
		case err != nil:
			p.err = err
		case n == 0:
			p.eof = true
		default:
			p.head, p.headBuf = (*bp)[:n], bp
			if n == len(*bp) {
				p.count()
			}
			return true
		}
		headBufs.Put(bp)
		return true
	}
}

// count learns how many bytes wait in the socket. A failure leaves left
// at zero: the next read meets the error again.
func (p *socketPayload) count() {
	for {
		n, err := unix.IoctlGetInt(p.fd, unix.SIOCINQ)
		if err == unix.EINTR {
			continue
		}
		if err == nil {
			p.left = n
		}
		return
	}
}

// release returns the head buffer, if one is held.
func (p *socketPayload) release() {
	if p.headBuf != nil {
		headBufs.Put(p.headBuf)
		p.head, p.headBuf = nil, nil
	}
}

// Len implements tcpip.Payloader.
func (p *socketPayload) Len() int { return len(p.head) + p.left }

// Read implements io.Reader for the endpoint: the bytes read ahead, then at
// most the bytes known to wait, so that it never blocks; io.EOF once they
// are read.
func (p *socketPayload) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if len(p.head) > 0 {
		n := copy(b, p.head)
		p.head = p.head[n:]
		if len(p.head) == 0 {
			p.release()
		}
		return n, nil
	}
	if p.left <= 0 {
		return 0, io.EOF
	}
	for {
		n, err := readRaw(p.fd, b[:min(len(b), p.left)])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			p.left = 0
			return 0, io.EOF
		case err != nil:
			p.err = err
			p.left = 0
			return 0, err
		case n == 0:
			p.eof = true
			p.left = 0
			return 0, io.EOF
		}
		p.left -= n
		return n, nil
	}
}
