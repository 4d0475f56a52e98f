package stack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// maxDatagram is the largest UDP payload over IPv4.
const maxDatagram = 65535

// handleUDP opens a flow for the first datagram between a guest socket and
// a destination: a connected endpoint in the stack paired with a host UDP
// socket connected to the destination. It runs on the packet path, so the
// flow itself runs in its own goroutine.
func (st *Stack) handleUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	dst, ok := st.hostAddr(id.LocalAddress)
	if !ok {
		return true // dropped silently: broadcast, multicast and the like
	}
	if n := st.counters.udpFlows.Add(1); n > int64(st.cfg.MaxUDPFlows) {
		st.counters.udpFlows.Add(-1)
		if st.counters.drop(DropUDPLimit) {
			st.log.Warn("UDP flow limit reached: refusing new flows (logged at most every 10s)", "limit", st.cfg.MaxUDPFlows)
		}
		return false // gVisor answers ICMP port unreachable
	}
	var wq waiter.Queue
	ep, err := r.CreateEndpoint(&wq)
	if err != nil {
		st.counters.udpFlows.Add(-1)
		st.log.Debug("udp: create endpoint", "err", err)
		return true
	}
	st.counters.started.Add(1)
	guest := gonet.NewUDPConn(&wq, ep)
	target := net.JoinHostPort(dst.String(), strconv.Itoa(int(id.LocalPort)))
	st.goFlow(func() {
		defer st.counters.udpFlows.Add(-1)
		st.runUDP(guest, target, addrOf(id.RemoteAddress), id.RemotePort)
	})
	return true
}

// runUDP relays datagrams of one flow until it has been idle for the idle
// timeout or the stack closes.
func (st *Stack) runUDP(guest *gonet.UDPConn, target string, src netip.Addr, srcPort uint16) {
	log := st.log.With("proto", "udp", "guest", netip.AddrPortFrom(src, srcPort), "dst", target)
	defer guest.Close()
	host, err := st.dial(st.ctx, "udp", target)
	if err != nil {
		log.Debug("dial failed", "err", err)
		return
	}
	defer host.Close()
	log.Debug("flow open")
	stop := context.AfterFunc(st.ctx, func() {
		guest.Close()
		host.Close()
	})
	defer stop()

	idle := st.cfg.UDPIdleTimeout
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	done := make(chan struct{}, 2)
	relay := func(dst, src net.Conn, moved *atomic.Uint64) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, maxDatagram)
		// The deadline is moved once per idle period, not per datagram:
		// resetting a timer for every datagram costs more than the copy.
		src.SetReadDeadline(time.Now().Add(idle))
		for {
			n, err := src.Read(buf)
			if err != nil {
				if lastActive := time.Unix(0, last.Load()); isTimeout(err) && time.Since(lastActive) < idle {
					src.SetReadDeadline(lastActive.Add(idle)) // traffic since: not idle yet
					continue
				}
				if isTransient(err) {
					continue
				}
				return
			}
			last.Store(time.Now().UnixNano())
			w, err := dst.Write(buf[:n])
			moved.Add(uint64(w))
			if err != nil && !isTransient(err) {
				return
			}
		}
	}
	go relay(host, guest, &st.counters.bytesOut)
	go relay(guest, host, &st.counters.bytesIn)
	<-done
	guest.Close()
	host.Close()
	<-done
	log.Debug("flow closed")
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// isTransient reports errors after which a UDP flow goes on, such as an ICMP
// port unreachable from the destination surfacing as ECONNREFUSED.
func isTransient(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}

// addrOf converts a gVisor address to a netip.Addr.
func addrOf(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}
