package stack

import (
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// udpKey names a UDP flow by the guest's socket and the destination it
// sends to, as the guest sees them.
type udpKey struct {
	guest, dst netip.AddrPort
}

// udpFlows holds the open UDP flows whose datagrams from the guest may
// bypass the stack (see Stack.fastUDP).
type udpFlows struct {
	mu sync.RWMutex
	m  map[udpKey]*udpOut
}

func (f *udpFlows) add(k udpKey, u *udpOut) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = make(map[udpKey]*udpOut)
	}
	f.m[k] = u
}

func (f *udpFlows) remove(k udpKey, u *udpOut) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m[k] == u {
		delete(f.m, k)
	}
}

func (f *udpFlows) lookup(k udpKey) *udpOut {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.m[k]
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
	data := pkt.Data()
	var (
		k       udpKey
		udp     header.UDP
		maxUDP  int
		headLen int
	)
	switch proto {
	case header.IPv4ProtocolNumber:
		headLen = header.IPv4MinimumSize
		b, ok := data.PullUp(headLen + header.UDPMinimumSize)
		if !ok {
			return false
		}
		ip := header.IPv4(b)
		if b[0] != 0x45 || ip.Protocol() != uint8(header.UDPProtocolNumber) || ip.More() || ip.FragmentOffset() != 0 {
			return false
		}
		total := int(ip.TotalLength())
		if total < headLen+header.UDPMinimumSize || total > data.Size() || !ip.IsChecksumValid() {
			return false
		}
		maxUDP = total - headLen
		udp = header.UDP(b[headLen:])
		k.guest = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), udp.SourcePort())
		k.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[16:20])), udp.DestinationPort())
	case header.IPv6ProtocolNumber:
		headLen = header.IPv6MinimumSize
		b, ok := data.PullUp(headLen + header.UDPMinimumSize)
		if !ok {
			return false
		}
		ip := header.IPv6(b)
		if ip.NextHeader() != uint8(header.UDPProtocolNumber) {
			return false
		}
		maxUDP = int(ip.PayloadLength())
		if maxUDP < header.UDPMinimumSize || headLen+maxUDP > data.Size() {
			return false
		}
		udp = header.UDP(b[headLen:])
		k.guest = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), udp.SourcePort())
		k.dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[24:40])), udp.DestinationPort())
	default:
		return false
	}
	n := int(udp.Length())
	if n < header.UDPMinimumSize || n > maxUDP {
		return false // the stack drops it, and counts it
	}
	u := st.udpFast.lookup(k)
	if u == nil {
		return st.dropUndialable(proto, k)
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
func (st *Stack) dropUndialable(proto tcpip.NetworkProtocolNumber, k udpKey) bool {
	if _, ok := st.hostAddrOf(k.dst.Addr()); ok {
		return false
	}
	id := stack.TransportEndpointID{
		LocalPort:     k.dst.Port(),
		LocalAddress:  tcpip.AddrFromSlice(k.dst.Addr().AsSlice()),
		RemotePort:    k.guest.Port(),
		RemoteAddress: tcpip.AddrFromSlice(k.guest.Addr().AsSlice()),
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
