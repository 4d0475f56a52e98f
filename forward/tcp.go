package forward

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/ferrynet/ferry/stack"
)

// serveTCP accepts on p's listener until ctx ends, proxying each connection
// into the guest; on return every connection it carried is closed.
func (u *Userspace) serveTCP(ctx context.Context, p *published, log *slog.Logger) {
	l := p.l.(net.Listener)
	dst := netip.AddrPortFrom(p.GuestAddr, p.GuestPort)
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			log.Warn("accept", "err", err)
			continue
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			u.proxyTCP(ctx, c.(*net.TCPConn), dst, log)
		}()
	}
}

// proxyTCP connects client to dst in the guest and copies between them. A
// refused connection is passed on to the client as a reset.
func (u *Userspace) proxyTCP(ctx context.Context, client *net.TCPConn, dst netip.AddrPort, log *slog.Logger) {
	from := client.RemoteAddr().(*net.TCPAddr).AddrPort()
	dst = u.dstFor(from, dst)
	dctx, cancel := context.WithTimeout(ctx, u.opts.DialTimeout)
	guest, err := u.guest.DialTCP(dctx, peerFor(from, dst.Addr()), dst)
	cancel()
	if err != nil {
		log.Debug("connect into the guest failed", "client", from, "err", err)
		client.SetLinger(0) // a reset, as if the guest had refused the client itself
		client.Close()
		return
	}
	u.tcpConns.Add(1)
	defer u.tcpConns.Add(-1)
	if g, ok := guest.(*net.TCPConn); ok {
		SpliceTCP(ctx, client, g, &u.bytesOut, &u.bytesIn) // kernel mode: both are kernel sockets
		return
	}
	stack.ProxyCounted(ctx, client, guest, &u.bytesOut, &u.bytesIn)
}
