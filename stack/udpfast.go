package stack

import (
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// udpFlows holds the open UDP flows whose datagrams from the guest may
// bypass the stack (see Stack.fastUDP), by their endpoint ID in the stack
// (local: the destination the guest sent to; remote: the guest's socket).
type udpFlows struct {
	mu sync.RWMutex
	m  map[stack.TransportEndpointID]*udpOut
}

func (f *udpFlows) add(id stack.TransportEndpointID, u *udpOut) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = make(map[stack.TransportEndpointID]*udpOut)
	}
	f.m[id] = u
}

func (f *udpFlows) remove(id stack.TransportEndpointID, u *udpOut) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m[id] == u {
		delete(f.m, id)
	}
}

func (f *udpFlows) lookup(id stack.TransportEndpointID) *udpOut {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.m[id]
}

// fastUDP takes a datagram from the guest to a UDP flow that is open, and
// puts it straight into the flow's batch (see udpBatch), so that it leaves
// with the burst's other datagrams without passing through the stack: the
// stack's IP and UDP layers and its endpoint's queue are about a third of
// the CPU a datagram costs. pkt starts at its IP header. Only plain
// datagrams qualify: no IPv4 options, no fragments, no IPv6 extension
// headers, lengths that agree and a valid IPv4 header checksum (the UDP
// checksum is not checked, as the stack does not check it either on this
// link: it offloads receive checksums). Everything else, and datagrams of
// flows not open yet, go through the stack as before; it reports whether
// it took pkt.
func (st *Stack) fastUDP(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) bool {
	if st.udpBatch == nil {
		return false
	}
	id, udp, ok := transportID(proto, pkt, header.UDPProtocolNumber, header.UDPMinimumSize)
	if !ok {
		return false
	}
	// transportID pulled the IP and UDP headers up: these views are free.
	data := pkt.Data()
	var headLen, maxUDP int
	switch proto {
	case header.IPv4ProtocolNumber:
		b, _ := data.PullUp(header.IPv4MinimumSize)
		ip := header.IPv4(b)
		if b[0] != 0x45 || !ip.IsChecksumValid() { // version 4, no options
			return false
		}
		headLen, maxUDP = header.IPv4MinimumSize, int(ip.TotalLength())-header.IPv4MinimumSize
	default: // IPv6, without extension headers
		b, _ := data.PullUp(header.IPv6MinimumSize)
		if b[0]>>4 != 6 {
			return false
		}
		headLen, maxUDP = header.IPv6MinimumSize, int(header.IPv6(b).PayloadLength())
	}
	n := int(header.UDP(udp).Length())
	if n < header.UDPMinimumSize || n > maxUDP || headLen+maxUDP > data.Size() {
		return false // the stack drops it, and counts it
	}
	u := st.udpFast.lookup(id)
	if u == nil {
		return st.dropUndialable(proto, id)
	}
	b, ok := data.PullUp(headLen + n)
	if !ok {
		return false
	}
	st.udpBatch.put(u, b[headLen+header.UDPMinimumSize:])
	return true
}

// dropUndialable drops a datagram that would open a flow to an address
// ferry never dials (see hostAddr: the virtual network's own addresses,
// broadcast, multicast and the like) before the stack looks for its
// destination among the addresses it holds, by scanning them all. The
// stack's UDP forwarder would drop it silently too; here it is counted
// (no-destination). Datagrams to the stack's own sockets (DNS, DHCP) go
// on. It reports whether it dropped the datagram.
func (st *Stack) dropUndialable(proto tcpip.NetworkProtocolNumber, id stack.TransportEndpointID) bool {
	if _, ok := st.hostAddr(id.LocalAddress); ok {
		return false
	}
	if st.s.FindTransportEndpoint(proto, header.UDPProtocolNumber, id, nicID) != nil {
		return false
	}
	st.counters.drop(DropNoDestination)
	return true
}

// put copies datagram d of flow u into the batch.
func (b *udpBatch) put(u *udpOut, d []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if u.failed.Load() {
		return
	}
	if len(b.arena)-b.used < len(d) {
		b.flushLocked()
	}
	copy(b.arena[b.used:], d)
	u.last.Store(time.Now().UnixNano())
	b.pendLocked(u, len(d))
}
