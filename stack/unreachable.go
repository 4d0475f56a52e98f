package stack

import (
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

	icmpLen := header.ICMPv4MinimumSize + len(quote)
	totalLen := header.IPv4MinimumSize + icmpLen
	b := make([]byte, totalLen)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(totalLen),
		TTL:         64,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     tcpip.AddrFrom4(st.cfg.Network.Gateway.As4()),
		DstAddr:     ipHdr.SourceAddress(),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	icmp := header.ICMPv4(b[header.IPv4MinimumSize:])
	icmp.SetType(header.ICMPv4DstUnreachable)
	icmp.SetCode(code)
	copy(icmp[header.ICMPv4MinimumSize:], quote)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))

	if err := st.s.WritePacketToRemote(nicID, eth.SourceAddress(), ipv4.ProtocolNumber, buffer.MakeWithData(b)); err != nil {
		st.log.Debug("send ICMP unreachable", "to", ipHdr.SourceAddress(), "err", err)
	}
}
