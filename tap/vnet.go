package tap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// virtio-net header (linux/virtio_net.h), which precedes every frame on a
// TAP opened with IFF_VNET_HDR.
const (
	vnetHdrLen        = 10
	vnetFlagNeedsCsum = 1
	vnetGSONone       = 0
	vnetGSOTCPv4      = 1
	vnetGSOTCPv6      = 4

	// maxFrame is the largest frame the TAP hands over: the kernel bounds a
	// GSO skb, headers included, by 64 KiB. It is also gVisor's largest
	// pooled chunk, so reads never fall back to a fresh allocation.
	maxFrame = 65536
	// gsoMaxSize is the largest segment gVisor may hand us to split.
	gsoMaxSize = 65536 - header.EthernetMinimumSize - 128
	// smallFrame is the largest frame copied out of the read buffer into a
	// chunk of its own size rather than handed over with the buffer.
	smallFrame = 16 << 10
)

// vnetEndpoint is a gVisor link endpoint on a TAP opened with IFF_VNET_HDR
// and TSO/checksum offloads: the guest kernel and ferry exchange 64 KiB TCP
// segments and skip checksums both ways, which gVisor's fdbased endpoint
// does only on sockets. One reader goroutine reads a frame per readv and,
// when the TAP is empty, parks in Go's netpoller (or in poll(2) where the fd
// cannot be polled): parked there it gives its thread straight to the
// goroutines its frames woke, with no hand-off between threads.
type vnetEndpoint struct {
	fd     int
	stopFD int // eventfd that wakes the reader to exit
	mtu    uint32
	addr   tcpip.LinkAddress

	ring *uring // reads in batches; nil: one readv per frame

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
	poller     *os.File // a dup of fd in Go's netpoller while the reader runs
	burstDone  func()   // see SetBurstHook
	wg         sync.WaitGroup
	onClose    func()
}

// maxBurst bounds the frames delivered between two calls of the burst hook.
const maxBurst = 64

// SetBurstHook makes the reader call f, in its goroutine, after each burst
// of frames it delivered: when the TAP is empty again, or every maxBurst
// frames. Whoever the frames woke can gather work across a burst (one
// sendmmsg for many datagrams) and finish it in f. Set it before the
// endpoint is attached.
func (e *vnetEndpoint) SetBurstHook(f func()) { e.burstDone = f }

var _ stack.GSOEndpoint = (*vnetEndpoint)(nil)

// newVNetEndpoint returns an endpoint on fd, a TAP queue opened with
// IFF_VNET_HDR and offloads set.
func newVNetEndpoint(fd int, mtu uint32, mac net.HardwareAddr, ring *uring) (*vnetEndpoint, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("TAP link endpoint: set nonblocking: %w", err)
	}
	stopFD, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("TAP link endpoint: eventfd: %w", err)
	}
	return &vnetEndpoint{fd: fd, stopFD: stopFD, mtu: mtu, addr: tcpip.LinkAddress(mac), ring: ring}, nil
}

// MTU implements stack.LinkEndpoint.
func (e *vnetEndpoint) MTU() uint32 { return e.mtu }

// SetMTU implements stack.LinkEndpoint.
func (e *vnetEndpoint) SetMTU(mtu uint32) { e.mtu = mtu }

// MaxHeaderLength implements stack.LinkEndpoint.
func (e *vnetEndpoint) MaxHeaderLength() uint16 { return header.EthernetMinimumSize }

// LinkAddress implements stack.LinkEndpoint.
func (e *vnetEndpoint) LinkAddress() tcpip.LinkAddress { return e.addr }

// SetLinkAddress implements stack.LinkEndpoint.
func (e *vnetEndpoint) SetLinkAddress(a tcpip.LinkAddress) { e.addr = a }

// Capabilities implements stack.LinkEndpoint. Received frames need no
// checksum check (the guest kernel's are valid or marked partial); TCP
// checksums on sent frames are left to the guest through GSO's NeedsCsum,
// while other protocols still get theirs computed by gVisor.
func (e *vnetEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityResolutionRequired | stack.CapabilityRXChecksumOffload
}

// GSOMaxSize implements stack.GSOEndpoint.
func (e *vnetEndpoint) GSOMaxSize() uint32 { return gsoMaxSize }

// SupportedGSO implements stack.GSOEndpoint.
func (e *vnetEndpoint) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }

// ARPHardwareType implements stack.LinkEndpoint.
func (e *vnetEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// AddHeader implements stack.LinkEndpoint: the Ethernet header.
func (e *vnetEndpoint) AddHeader(pkt *stack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: pkt.EgressRoute.LocalLinkAddress,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements stack.LinkEndpoint.
func (e *vnetEndpoint) ParseHeader(pkt *stack.PacketBuffer) bool {
	_, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	return ok
}

// Attach implements stack.LinkEndpoint: it starts the reader, or stops it
// when dispatcher is nil.
func (e *vnetEndpoint) Attach(dispatcher stack.NetworkDispatcher) {
	e.mu.Lock()
	if dispatcher == nil {
		attached := e.dispatcher != nil
		e.dispatcher = nil
		poller := e.poller
		e.poller = nil
		e.mu.Unlock()
		if attached {
			if poller != nil {
				poller.Close() // wakes the reader parked in the netpoller
			} else {
				unix.Write(e.stopFD, []byte{1, 0, 0, 0, 0, 0, 0, 0})
			}
			e.wg.Wait()
		}
		return
	}
	if e.dispatcher == nil {
		rc := e.openPoller()
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			if rc != nil {
				e.pollLoop(dispatcher, rc)
			} else {
				e.readLoop(dispatcher)
			}
		}()
	}
	e.dispatcher = dispatcher
	e.mu.Unlock()
}

// IsAttached implements stack.LinkEndpoint.
func (e *vnetEndpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// Wait implements stack.LinkEndpoint.
func (e *vnetEndpoint) Wait() { e.wg.Wait() }

// Close implements stack.LinkEndpoint. The TAP fd belongs to the caller.
func (e *vnetEndpoint) Close() {
	unix.Close(e.stopFD)
	if e.ring != nil {
		e.ring.close()
	}
	if e.onClose != nil {
		e.onClose()
	}
}

// SetOnCloseAction implements stack.LinkEndpoint.
func (e *vnetEndpoint) SetOnCloseAction(f func()) { e.onClose = f }

// openPoller registers a duplicate of the TAP fd with Go's netpoller and
// returns its raw connection, or nil when the fd cannot be polled there.
// Closing e.poller wakes and ends a reader parked on it; the TAP fd itself
// stays open.
func (e *vnetEndpoint) openPoller() syscall.RawConn {
	dup, err := unix.FcntlInt(uintptr(e.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	f := os.NewFile(uintptr(dup), "tap") // nonblocking: polled
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil
	}
	// A file the poller refused is read once per Read without waiting:
	// tell it apart by a deadline, which only polled files take.
	if f.SetReadDeadline(time.Time{}) != nil {
		f.Close()
		return nil
	}
	e.poller = f
	return rc
}

// A frameSource reads what the TAP holds, a frame or a batch of them at a
// time: the frames, in order, and whether the TAP was found empty.
type frameSource interface {
	read(fd int) (frames []*buffer.View, empty bool, err error)
	release()
}

// frameReader reads one frame per readv(2) into pooled chunks.
type frameReader struct {
	hdr [vnetHdrLen]byte
	iov [2]unix.Iovec
	v   *buffer.View // kept across empty reads
	out [1]*buffer.View
}

func (r *frameReader) release() {
	if r.v != nil {
		r.v.Release()
		r.v = nil
	}
}

// read reads one frame from fd.
func (r *frameReader) read(fd int) ([]*buffer.View, bool, error) {
	if r.v == nil {
		r.v = buffer.NewViewSize(maxFrame)
	}
	r.iov[0], r.iov[1] = iovec(r.hdr[:]), iovec(r.v.AsSlice())
	n, err := readvRaw(fd, r.iov[:])
	if err == unix.EAGAIN {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	if f := takeFrame(&r.v, n); f != nil {
		r.out[0] = f
		return r.out[:], false, nil
	}
	return nil, false, nil
}

// takeFrame returns the frame that a read of n bytes (virtio-net header
// included) left in *v, or nil for a runt.
func takeFrame(v **buffer.View, n int) *buffer.View {
	if n <= vnetHdrLen+header.EthernetMinimumSize {
		return nil
	}
	if n-vnetHdrLen <= smallFrame {
		// A small frame (an ACK, a datagram) gets a chunk of its own
		// size and the big one is read into again: gVisor clears every
		// chunk it hands out, and clones a frame's chunk when a
		// forwarder shares it, so a 64 KiB chunk per small frame costs
		// far more than this copy.
		return buffer.NewViewWithData((*v).AsSlice()[:n-vnetHdrLen])
	}
	frame := *v
	frame.CapLength(n - vnetHdrLen)
	*v = nil
	return frame
}

// maxBatch bounds the reads of one batch. It is also the ring's size.
const maxBatch = 16

// batchReader reads up to a batch of frames per io_uring_enter. The batch
// grows while the TAP fills it and shrinks when it does not, so that a
// lone frame (a request and its answer) costs few empty reads, which are
// cheap anyway: done inside the one system call, they are not system calls
// of their own.
type batchReader struct {
	ring  *uring
	hdr   [vnetHdrLen]byte // every read's header lands here: none is used
	iovs  [maxBatch][2]unix.Iovec
	views [maxBatch]*buffer.View // kept across empty reads
	size  int                    // reads in the next batch
	out   []*buffer.View
	empty bool
	err   error
	done  func(tag uint64, res int32)
	// plain takes over for good should the ring ever fail.
	plain *frameReader
}

func newBatchReader(ring *uring) *batchReader {
	b := &batchReader{ring: ring, size: 2, out: make([]*buffer.View, 0, maxBatch)}
	b.done = b.complete
	return b
}

func (b *batchReader) release() {
	if b.plain != nil {
		b.plain.release()
	}
	for i, v := range b.views {
		if v != nil {
			v.Release()
			b.views[i] = nil
		}
	}
}

// read reads a batch: the frames, in the order the TAP held them.
func (b *batchReader) read(fd int) ([]*buffer.View, bool, error) {
	if b.plain != nil {
		return b.plain.read(fd)
	}
	for i := range b.size {
		if b.views[i] == nil {
			b.views[i] = buffer.NewViewSize(maxFrame)
		}
		b.iovs[i] = [2]unix.Iovec{iovec(b.hdr[:]), iovec(b.views[i].AsSlice())}
		b.ring.queueReadv(b.iovs[i][:], uint64(i))
	}
	b.out, b.empty, b.err = b.out[:0], false, nil
	if err := b.ring.submit(b.done); err != nil {
		// The ring failed (it should not): read on with readv. The
		// frames it read are still handed over.
		b.plain = &frameReader{}
	}
	switch n := len(b.out); {
	case n == b.size:
		b.size = min(2*b.size, maxBatch)
	case b.empty:
		b.size = min(max(2, 2*n), maxBatch)
	}
	return b.out, b.empty, b.err
}

// complete takes one read's result.
func (b *batchReader) complete(tag uint64, res int32) {
	switch {
	case res >= 0:
		if f := takeFrame(&b.views[tag], int(res)); f != nil {
			b.out = append(b.out, f)
		}
	case unix.Errno(-res) == unix.EAGAIN:
		b.empty = true
	case unix.Errno(-res) == unix.EINTR:
	case b.err == nil:
		b.err = unix.Errno(-res)
	}
}

// deliver hands one frame to the stack, in the calling goroutine.
func deliver(d stack.NetworkDispatcher, frame *buffer.View) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(frame)})
	eth, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	if ok {
		d.DeliverNetworkPacket(header.Ethernet(eth).Type(), pkt)
	}
	pkt.DecRef()
}

// source returns the reader of the TAP's frames: batches through the ring,
// or one readv per frame.
func (e *vnetEndpoint) source() frameSource {
	if e.ring != nil {
		return newBatchReader(e.ring)
	}
	return &frameReader{}
}

// burst delivers frames to d in order, calling the burst hook every
// maxBurst frames and, when empty says the TAP was drained, once the
// frames are in; n counts frames since the hook last ran.
func (e *vnetEndpoint) burst(d stack.NetworkDispatcher, frames []*buffer.View, empty bool, n *int) {
	for i, f := range frames {
		deliver(d, f)
		frames[i] = nil
		if *n++; *n >= maxBurst && e.burstDone != nil {
			e.burstDone()
			*n = 0
		}
	}
	if empty && *n > 0 && e.burstDone != nil {
		e.burstDone() // the burst is over
		*n = 0
	}
}

// pollLoop reads frames until the endpoint is detached (rc's file closed)
// or the TAP fails, parking in the netpoller while the TAP is empty.
func (e *vnetEndpoint) pollLoop(d stack.NetworkDispatcher, rc syscall.RawConn) {
	r := e.source()
	defer r.release()
	var (
		frames []*buffer.View
		empty  bool
		rerr   error
		n      int // frames delivered since the burst hook last ran
	)
	read := func(fd uintptr) bool {
		for {
			frames, empty, rerr = r.read(int(fd))
			if rerr == unix.EINTR {
				continue
			}
			if rerr == nil && len(frames) == 0 && empty {
				if n > 0 && e.burstDone != nil {
					e.burstDone() // the burst is over
					n = 0
				}
				return false // park until readable
			}
			return true
		}
	}
	for {
		if err := rc.Read(read); err != nil {
			return
		}
		e.burst(d, frames, empty, &n)
		if rerr != nil {
			return
		}
	}
}

// readLoop is pollLoop for a TAP fd Go cannot poll: it parks in poll(2).
func (e *vnetEndpoint) readLoop(d stack.NetworkDispatcher) {
	fds := []unix.PollFd{{Fd: int32(e.fd), Events: unix.POLLIN}, {Fd: int32(e.stopFD), Events: unix.POLLIN}}
	r := e.source()
	defer r.release()
	n := 0
	for {
		frames, empty, err := r.read(e.fd)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		e.burst(d, frames, empty, &n)
		if err != nil {
			return
		}
		if empty && len(frames) == 0 {
			if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
				return
			}
			if fds[1].Revents != 0 {
				return
			}
		}
	}
}

// WritePackets implements stack.LinkEndpoint: one writev per frame, its
// virtio-net header saying how the guest kernel is to segment it and where
// to put the TCP checksum.
func (e *vnetEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	var (
		hdr     [vnetHdrLen]byte
		iovBuf  [8]unix.Iovec
		written int
	)
	for _, pkt := range pkts.AsSlice() {
		vnetHeader(hdr[:], pkt)
		iov := append(iovBuf[:0], iovec(hdr[:]))
		for _, b := range pkt.AsSlices() {
			iov = append(iov, iovec(b))
		}
		for {
			_, err := writevRaw(e.fd, iov)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.EAGAIN) {
				// The guest is not reading: its queue is full, as when a
				// NIC's ring is. Drop, as the kernel would.
				break
			}
			if err != nil {
				if written == 0 {
					return 0, &tcpip.ErrClosedForSend{}
				}
				return written, nil
			}
			break
		}
		written++
	}
	return written, nil
}

// vnetHeader fills hdr for pkt from its GSO options.
func vnetHeader(hdr []byte, pkt *stack.PacketBuffer) {
	clear(hdr)
	gso := pkt.GSOOptions
	if gso.Type == stack.GSONone || !gso.NeedsCsum {
		return
	}
	csumStart := uint16(header.EthernetMinimumSize + len(pkt.NetworkHeader().Slice()))
	hdr[0] = vnetFlagNeedsCsum
	binary.LittleEndian.PutUint16(hdr[6:], csumStart)
	binary.LittleEndian.PutUint16(hdr[8:], gso.CsumOffset)
	payload := pkt.Data().Size()
	if gso.MSS == 0 || payload <= int(gso.MSS) {
		return // fits one segment: checksum offload only
	}
	switch gso.Type {
	case stack.GSOTCPv4:
		hdr[1] = vnetGSOTCPv4
	case stack.GSOTCPv6:
		hdr[1] = vnetGSOTCPv6
	}
	binary.LittleEndian.PutUint16(hdr[2:], csumStart+uint16(len(pkt.TransportHeader().Slice())))
	binary.LittleEndian.PutUint16(hdr[4:], gso.MSS)
}

// HasVNetHeader reports whether the TAP queue fd, opened by someone else,
// carries virtio-net headers; if so it sets the header size ferry's
// endpoint expects and asks for the offloads (without them the kernel only
// sends plain frames, which the endpoint handles too).
func HasVNetHeader(fd int) bool {
	ifr, err := unix.NewIfreq("")
	if err != nil || unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr) != nil || ifr.Uint16()&unix.IFF_VNET_HDR == 0 {
		return false
	}
	if unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnetHdrLen) != nil {
		return false
	}
	_ = unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, unix.TUN_F_CSUM|unix.TUN_F_TSO4|unix.TUN_F_TSO6)
	return true
}
