package stack

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// packetHandler is the shape of gVisor's transport protocol handlers.
type packetHandler func(stack.TransportEndpointID, *stack.PacketBuffer) bool

// guard wraps a forwarder's packet handler: packets for the gateway, when
// the host's loopback is disabled, are answered with ICMP "network
// unreachable" as slirp4netns does, and never reach the forwarder.
func (st *Stack) guard(next packetHandler) packetHandler {
	if !st.cfg.DisableHostLoopback {
		return next
	}
	gw := tcpip.AddrFrom4(st.cfg.Network.Gateway.As4())
	return func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
		if id.LocalAddress != gw {
			return next(id, pkt)
		}
		st.sendUnreachable(pkt, header.ICMPv4NetUnreachable)
		return true
	}
}

// sendUnreachable answers pkt, an IPv4 packet from the guest, with an ICMP
// destination-unreachable message of the given code, sent from the gateway.
func (st *Stack) sendUnreachable(pkt *stack.PacketBuffer, code header.ICMPv4Code) {
	eth := header.Ethernet(pkt.LinkHeader().Slice())
	ipHdr := header.IPv4(pkt.NetworkHeader().Slice())
	payload := append(append([]byte(nil), pkt.TransportHeader().Slice()...), pkt.Data().AsRange().ToSlice()...)
	if len(eth) < header.EthernetMinimumSize || !ipHdr.IsValid(len(ipHdr)+len(payload)) {
		return
	}
	// RFC 792: the original IP header and the first 8 bytes of its payload.
	quote := append([]byte(nil), ipHdr[:ipHdr.HeaderLength()]...)
	quote = append(quote, payload[:min(8, len(payload))]...)

	msg := make([]byte, header.ICMPv4MinimumSize+len(quote))
	icmp := header.ICMPv4(msg)
	icmp.SetType(header.ICMPv4DstUnreachable)
	icmp.SetCode(code)
	copy(icmp[header.ICMPv4MinimumSize:], quote)
	st.writeIPv4(eth.SourceAddress(), st.cfg.Network.Gateway, addrOf(ipHdr.SourceAddress()), 64, msg)
}

// writeIPv4 sends the ICMP message msg (its checksum is filled in here) to
// the guest's link address, in an IPv4 packet from src to dst.
func (st *Stack) writeIPv4(guestMAC tcpip.LinkAddress, src, dst netip.Addr, ttl uint8, msg []byte) {
	header.ICMPv4(msg).SetChecksum(0)
	header.ICMPv4(msg).SetChecksum(^checksum.Checksum(msg, 0))
	totalLen := header.IPv4MinimumSize + len(msg)
	b := make([]byte, totalLen)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(totalLen),
		TTL:         ttl,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     tcpip.AddrFrom4(src.As4()),
		DstAddr:     tcpip.AddrFrom4(dst.As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[header.IPv4MinimumSize:], msg)
	if err := st.s.WritePacketToRemote(nicID, guestMAC, ipv4.ProtocolNumber, buffer.MakeWithData(b)); err != nil {
		st.log.Debug("write ICMP to the guest", "to", dst, "err", err)
	}
}
