package forward

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxDatagram is the largest UDP payload.
const maxDatagram = 65535

// udpFlow is one client of a published UDP port: a socket into the guest
// whose replies go back to that client.
type udpFlow struct {
	guest net.Conn
	last  atomic.Int64 // UnixNano of the last datagram either way
}

// serveUDP relays datagrams between p's host socket and the guest, one flow
// per client address, until ctx ends.
func (u *Userspace) serveUDP(ctx context.Context, p *published, log *slog.Logger) {
	host := p.l.(*net.UDPConn)
	dst := netip.AddrPortFrom(p.GuestAddr, p.GuestPort)
	var (
		mu    sync.Mutex
		flows = make(map[netip.AddrPort]*udpFlow)
		wg    sync.WaitGroup
	)
	defer func() {
		mu.Lock()
		for _, f := range flows {
			f.guest.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	buf := make([]byte, maxDatagram)
	for {
		n, client, err := host.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue
			}
			log.Warn("udp read", "err", err)
			continue
		}
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		mu.Lock()
		f := flows[client]
		if f == nil {
			fdst := u.dstFor(client, dst)
			g, err := u.guest.DialUDP(peerFor(client, fdst.Addr()), fdst)
			if err != nil {
				mu.Unlock()
				log.Debug("udp flow into the guest", "client", client, "err", err)
				continue
			}
			f = &udpFlow{guest: g}
			f.last.Store(time.Now().UnixNano())
			flows[client] = f
			wg.Add(1)
			u.udpFlows.Add(1)
			go func() {
				defer wg.Done()
				defer u.udpFlows.Add(-1)
				u.udpReplies(host, f, client)
				mu.Lock()
				if flows[client] == f {
					delete(flows, client)
				}
				mu.Unlock()
				f.guest.Close()
			}()
		}
		mu.Unlock()
		f.last.Store(time.Now().UnixNano())
		w, err := f.guest.Write(buf[:n])
		u.bytesIn.Add(uint64(w))
		if err != nil {
			log.Debug("udp write into the guest", "client", client, "err", err)
		}
	}
}

// udpReplies sends the guest's datagrams of flow f to client until the flow
// has been idle for the idle timeout or is closed.
func (u *Userspace) udpReplies(host *net.UDPConn, f *udpFlow, client netip.AddrPort) {
	idle := u.opts.UDPIdleTimeout
	buf := make([]byte, maxDatagram)
	for {
		f.guest.SetReadDeadline(time.Now().Add(idle))
		n, err := f.guest.Read(buf)
		if err != nil {
			if isTimeout(err) && time.Since(time.Unix(0, f.last.Load())) < idle {
				continue // the client still sends
			}
			return
		}
		f.last.Store(time.Now().UnixNano())
		w, _ := host.WriteToUDPAddrPort(buf[:n], client)
		u.bytesOut.Add(uint64(w))
	}
}

// isTimeout reports a read deadline passing (gVisor's conns report it as a
// net.Error, not os.ErrDeadlineExceeded).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
