package stack

import (
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// packetHandler is the shape of gVisor's transport protocol handlers.
type packetHandler func(stack.TransportEndpointID, *stack.PacketBuffer) bool

// sendUnreachable answers pkt, a packet from the guest, with a
// destination-unreachable message of code4 (IPv4) or code6 (IPv6) from the
// address it was sent to.
func (st *Stack) sendUnreachable(pkt *stack.PacketBuffer, code4 header.ICMPv4Code, code6 header.ICMPv6Code) {
	eth := header.Ethernet(pkt.LinkHeader().Slice())
	if len(eth) < header.EthernetMinimumSize {
		return
	}
	netHdr := pkt.NetworkHeader().Slice()
	payload := append(append([]byte(nil), pkt.TransportHeader().Slice()...), pkt.Data().AsRange().ToSlice()...)
	var msg []byte
	var net header.Network
	if ip4 := header.IPv4(netHdr); len(netHdr) >= header.IPv4MinimumSize && ip4.IsValid(len(netHdr)+len(payload)) {
		// RFC 792: the original IP header and the first 8 bytes of its payload.
		quote := append(append([]byte(nil), ip4[:ip4.HeaderLength()]...), payload[:min(8, len(payload))]...)
		msg = make([]byte, header.ICMPv4MinimumSize+len(quote))
		h := header.ICMPv4(msg)
		h.SetType(header.ICMPv4DstUnreachable)
		h.SetCode(code4)
		copy(msg[header.ICMPv4MinimumSize:], quote)
		net = ip4
	} else if ip6 := header.IPv6(netHdr); len(netHdr) >= header.IPv6MinimumSize && ip6.IsValid(len(netHdr)+len(payload)) {
		// RFC 4443: as much of the packet as fits in the minimum MTU.
		quote := append(append([]byte(nil), netHdr...), payload...)
		quote = quote[:min(len(quote), header.IPv6MinimumMTU-header.IPv6MinimumSize-header.ICMPv6DstUnreachableMinimumSize)]
		msg = make([]byte, header.ICMPv6DstUnreachableMinimumSize+len(quote))
		h := header.ICMPv6(msg)
		h.SetType(header.ICMPv6DstUnreachable)
		h.SetCode(code6)
		copy(msg[header.ICMPv6DstUnreachableMinimumSize:], quote)
		net = ip6
	} else {
		return
	}
	st.writeICMP(eth.SourceAddress(), addrOf(net.DestinationAddress()), addrOf(net.SourceAddress()), 64, msg)
}
