package stack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

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
	guest := gonet.NewTCPConn(&wq, ep)
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
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src halfCloser) {
		defer wg.Done()
		if err := copyConn(dst, src); err != nil {
			a.Close()
			b.Close()
			return
		}
		dst.CloseWrite()
	}
	go pipe(a, b)
	go pipe(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

// copyBufSize is the size of the buffers bytes are copied through.
const copyBufSize = 64 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// copyConn copies from src to dst until src's EOF (nil) or an error.
func copyConn(dst io.Writer, src io.Reader) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
