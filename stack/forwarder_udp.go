package stack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
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
	if n := st.counters.udpUnanswered.Add(1); n > int64(st.cfg.MaxUnansweredUDP) {
		st.counters.udpUnanswered.Add(-1)
		if st.counters.drop(DropUDPUnanswered) {
			st.log.Warn("too many UDP flows without an answer: refusing new flows (logged at most every 10s)", "limit", st.cfg.MaxUnansweredUDP)
		}
		return false // gVisor answers ICMP port unreachable
	}
	if n := st.counters.udpFlows.Add(1); n > int64(st.cfg.MaxUDPFlows) {
		st.counters.udpFlows.Add(-1)
		st.counters.udpUnanswered.Add(-1)
		if st.counters.drop(DropUDPLimit) {
			st.log.Warn("UDP flow limit reached: refusing new flows (logged at most every 10s)", "limit", st.cfg.MaxUDPFlows)
		}
		return false
	}
	var wq waiter.Queue
	ep, err := r.CreateEndpoint(&wq)
	if err != nil {
		st.counters.udpFlows.Add(-1)
		st.counters.udpUnanswered.Add(-1)
		st.log.Debug("udp: create endpoint", "err", err)
		return true
	}
	st.counters.started.Add(1)
	target := net.JoinHostPort(dst.String(), strconv.Itoa(int(id.LocalPort)))
	st.goFlow(func() {
		defer st.counters.udpFlows.Add(-1)
		st.runUDP(&wq, ep, target, id)
	})
	return true
}

// udpDatagrams lends the buffers a datagram is copied through.
var udpDatagrams = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}

// udpOut sends a flow's datagrams from the guest to its host socket. It
// runs where the stack queues a datagram, in the TAP reader's goroutine,
// so that a datagram costs no hand-off between goroutines: it never waits,
// and a datagram the host socket cannot take at once is dropped, as a full
// queue would drop it. With a udpBatch, the datagrams of one burst of
// frames leave together, one sendmmsg per flow.
type udpOut struct {
	ep     tcpip.Endpoint
	host   syscall.RawConn
	last   *atomic.Int64
	moved  *atomic.Uint64
	fail   func()
	batch  *udpBatch
	failed atomic.Bool

	pending [][]byte // datagrams in batch's arena; guarded by batch.mu

	mu   sync.Mutex // guards send's vectors, reused
	msgs []mmsghdr
	iovs []unix.Iovec
}

// NotifyEvent implements waiter.EventListener: datagrams are queued.
func (u *udpOut) NotifyEvent(waiter.EventMask) {
	if u.batch != nil {
		u.batch.add(u)
		return
	}
	u.drain()
}

// drain sends every queued datagram at once.
func (u *udpOut) drain() {
	bp := udpDatagrams.Get().(*[]byte)
	defer udpDatagrams.Put(bp)
	for !u.failed.Load() {
		w := tcpip.SliceWriter(*bp)
		res, err := u.ep.Read(&w, tcpip.ReadOptions{})
		if err != nil {
			return // *tcpip.ErrWouldBlock: all sent; else closed
		}
		u.last.Store(time.Now().UnixNano())
		u.send([][]byte{(*bp)[:res.Count]})
	}
}

// send sends datagrams with one sendmmsg (more when the socket takes only
// part), dropping what the socket refuses without waiting.
func (u *udpOut) send(dgrams [][]byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for len(dgrams) > 0 && !u.failed.Load() {
		u.msgs = u.msgs[:0]
		u.iovs = u.iovs[:0]
		for _, d := range dgrams {
			u.iovs = append(u.iovs, unix.Iovec{Base: unsafe.SliceData(d)})
			u.iovs[len(u.iovs)-1].SetLen(len(d))
		}
		for i := range dgrams {
			var m mmsghdr
			m.hdr.Iov = &u.iovs[i]
			m.hdr.SetIovlen(1)
			u.msgs = append(u.msgs, m)
		}
		var (
			n    int
			werr error
		)
		if err := u.host.Write(func(fd uintptr) bool {
			for {
				r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, // raw: see readRaw
					uintptr(unsafe.Pointer(&u.msgs[0])), uintptr(len(u.msgs)), unix.MSG_DONTWAIT, 0, 0)
				if e == unix.EINTR {
					continue
				}
				n, werr = int(r), nil
				if e != 0 {
					n, werr = 0, e
				}
				return true
			}
		}); err != nil {
			werr = err
		}
		runtime.KeepAlive(dgrams)
		switch {
		case werr == nil:
			for _, d := range dgrams[:n] {
				u.moved.Add(uint64(len(d)))
			}
			dgrams = dgrams[n:]
		case werr == unix.EAGAIN || werr == unix.ENOBUFS:
			return // the socket is full: drop the rest
		case isTransient(werr):
			dgrams = dgrams[1:] // an ICMP error for an earlier datagram
		default:
			u.failed.Store(true)
			u.fail()
			return
		}
	}
}

// mmsghdr is struct mmsghdr of sendmmsg(2) and recvmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// udpBatch gathers the guest's datagrams during one burst of frames from
// the TAP (see tap's SetBurstHook) so that each flow sends its share with
// one sendmmsg when the burst ends: a syscall, and a wake-up of the
// receiver, for many datagrams.
type udpBatch struct {
	mu    sync.Mutex
	arena []byte // datagrams of the burst, back to back
	used  int
	flows []*udpOut // those with pending datagrams
}

// udpArena is the size of a batch's arena: a burst's datagrams up to it are
// sent together.
const udpArena = 256 << 10

// maxBatch bounds the datagrams of one flow in one sendmmsg.
const maxBatch = 64

func newUDPBatch() *udpBatch { return &udpBatch{arena: make([]byte, udpArena)} }

// add moves u's queued datagrams into the batch.
func (b *udpBatch) add(u *udpOut) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for !u.failed.Load() {
		if len(b.arena)-b.used < maxDatagram {
			b.flushLocked()
		}
		w := tcpip.SliceWriter(b.arena[b.used : b.used+maxDatagram])
		res, err := u.ep.Read(&w, tcpip.ReadOptions{})
		if err != nil {
			return // *tcpip.ErrWouldBlock: all taken; else closed
		}
		u.last.Store(time.Now().UnixNano())
		b.pendLocked(u, res.Count)
	}
}

// pendLocked makes the n bytes at the arena's end a datagram pending for u.
func (b *udpBatch) pendLocked(u *udpOut, n int) {
	if len(u.pending) == 0 {
		b.flows = append(b.flows, u)
	}
	u.pending = append(u.pending, b.arena[b.used:b.used+n:b.used+n])
	b.used += n
	if len(u.pending) >= maxBatch {
		u.send(u.pending)
		clear(u.pending)
		u.pending = u.pending[:0]
		// u stays listed: flushLocked finds nothing pending.
	}
}

// flush sends every pending datagram: the burst is over.
func (b *udpBatch) flush() {
	b.mu.Lock()
	b.flushLocked()
	b.mu.Unlock()
}

func (b *udpBatch) flushLocked() {
	for i, u := range b.flows {
		if len(u.pending) > 0 {
			u.send(u.pending)
			clear(u.pending)
			u.pending = u.pending[:0]
		}
		b.flows[i] = nil
	}
	b.flows = b.flows[:0]
	b.used = 0
}

// runUDP relays datagrams of one flow until it has been idle for the idle
// timeout or the stack closes: from the guest in the stack's goroutine (see
// udpOut), to the guest in this one.
func (st *Stack) runUDP(wq *waiter.Queue, ep tcpip.Endpoint, target string, id stack.TransportEndpointID) {
	src, srcPort := addrOf(id.RemoteAddress), id.RemotePort
	// The flow counts as unanswered (handleUDP) until the destination's
	// first datagram; until then it expires sooner.
	answered := false
	defer func() {
		if !answered {
			st.counters.udpUnanswered.Add(-1)
		}
	}()
	log := st.log.With("proto", "udp", "guest", netip.AddrPortFrom(src, srcPort), "dst", target)
	guest := gonet.NewUDPConn(wq, ep)
	defer guest.Close()
	c, err := st.dial(st.ctx, "udp", target)
	if err != nil {
		log.Debug("dial failed", "err", err)
		return
	}
	host := c.(*net.UDPConn)
	defer host.Close()
	rc, err := host.SyscallConn()
	if err != nil {
		return
	}
	log.Debug("flow open")
	stop := context.AfterFunc(st.ctx, func() {
		guest.Close()
		host.Close()
	})
	defer stop()

	idle := min(st.cfg.UDPIdleTimeout, unansweredUDPTimeout)
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	out := &udpOut{ep: ep, host: rc, last: &last, moved: &st.counters.bytesOut, fail: func() { host.Close() }, batch: st.udpBatch}
	entry := waiter.Entry{}
	entry.Init(out, waiter.ReadableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry) // before the closes: no send runs after
	out.drain()                      // what came before the entry
	if st.udpBatch != nil {
		// From now on the flow's datagrams may skip the stack (fastUDP).
		st.udpFast.add(id, out)
		defer st.udpFast.remove(id, out)
	}

	reply := newUDPReply(st, id)
	var in udpIn
	defer in.release()
	// The deadline is moved once per idle period, not per datagram:
	// resetting a timer for every datagram costs more than the copy.
	host.SetReadDeadline(time.Now().Add(idle))
flow:
	for {
		if err := in.read(rc); err != nil {
			if lastActive := time.Unix(0, last.Load()); isTimeout(err) && time.Since(lastActive) < idle {
				host.SetReadDeadline(lastActive.Add(idle)) // traffic since: not idle yet
				continue
			}
			if isTransient(err) {
				continue
			}
			break
		}
		now := time.Now()
		last.Store(now.UnixNano())
		if !answered {
			answered = true
			st.counters.udpUnanswered.Add(-1)
			idle = st.cfg.UDPIdleTimeout
			host.SetReadDeadline(now.Add(idle))
		}
		reply.resolve(now) // once a batch, not a datagram
		for _, d := range in.dgrams {
			if reply.write(d) {
				st.counters.bytesIn.Add(uint64(len(d)))
				continue
			}
			w, err := guest.Write(d)
			st.counters.bytesIn.Add(uint64(w))
			if err != nil && !isTransient(err) {
				break flow
			}
		}
	}
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

// bypass takes, before the stack sees it, a frame the stack need not see:
// a datagram for the fast path (fastUDP) or one to shed (shed). It is the
// guest NIC's bypassFunc: newConn says pkt is a SYN no endpoint holds.
func (st *Stack) bypass(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer, newConn bool) bool {
	return st.fastUDP(proto, pkt) || st.shed(proto, pkt, newConn)
}

// shed drops, before the stack sees it, a frame that would open a new flow
// while the limit such frames fill is full: a datagram while
// MaxUnansweredUDP flows wait for an answer, a SYN while MaxInFlightSYNs
// connections are still dialing. They are counted as the refusals they
// would have met (udp-unanswered-limit, syn-in-flight), with no ICMP error.
// Under a flood to random addresses and ports this spares the stack the
// work of looking for each destination among the addresses it holds (one
// per flow's destination), which it does by scanning them all. Frames of
// flows that exist, and to the stack's own sockets (DNS), go on: for a
// SYN, newConn says no endpoint holds it (timeWaitReuser looked it up).
func (st *Stack) shed(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer, newConn bool) bool {
	if st.counters.udpUnanswered.Load() >= int64(st.cfg.MaxUnansweredUDP) {
		id, _, ok := transportID(proto, pkt, header.UDPProtocolNumber, header.UDPMinimumSize)
		if ok && st.s.FindTransportEndpoint(proto, udp.ProtocolNumber, id, nicID) == nil {
			if st.counters.drop(DropUDPUnanswered) {
				st.log.Warn("too many UDP flows without an answer: refusing new flows (logged at most every 10s)", "limit", st.cfg.MaxUnansweredUDP)
			}
			return true
		}
	}
	if newConn && st.counters.tcpDialing.Load() >= int64(st.cfg.MaxInFlightSYNs) {
		st.counters.drop(DropSYNFlood)
		return true
	}
	return false
}
