package stack

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
)

// writeICMP sends the ICMP (src and dst IPv4) or ICMPv6 (IPv6) message msg,
// whose checksum it fills in, to the link address linkDst in an IP packet
// from src to dst with the given TTL or hop limit. ferry writes ICMP itself
// for what gVisor does not originate: echo replies relayed from the host,
// errors, and Router Advertisements.
func (st *Stack) writeICMP(linkDst tcpip.LinkAddress, src, dst netip.Addr, ttl uint8, msg []byte) {
	var b []byte
	var proto tcpip.NetworkProtocolNumber
	if src.Is4() {
		h := header.ICMPv4(msg)
		h.SetChecksum(0)
		h.SetChecksum(^checksum.Checksum(msg, 0))
		b = make([]byte, header.IPv4MinimumSize+len(msg))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)),
			TTL:         ttl,
			Protocol:    uint8(header.ICMPv4ProtocolNumber),
			SrcAddr:     tcpip.AddrFrom4(src.As4()),
			DstAddr:     tcpip.AddrFrom4(dst.As4()),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		proto = ipv4.ProtocolNumber
	} else {
		s, d := tcpip.AddrFrom16(src.As16()), tcpip.AddrFrom16(dst.As16())
		h := header.ICMPv6(msg)
		h.SetChecksum(0)
		h.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header:      h,
			Src:         s,
			Dst:         d,
			PayloadCsum: 0,
			PayloadLen:  0,
		}))
		b = make([]byte, header.IPv6MinimumSize+len(msg))
		header.IPv6(b).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(len(msg)),
			TransportProtocol: header.ICMPv6ProtocolNumber,
			HopLimit:          ttl,
			SrcAddr:           s,
			DstAddr:           d,
		})
		proto = ipv6.ProtocolNumber
	}
	copy(b[len(b)-len(msg):], msg)
	if err := st.s.WritePacketToRemote(nicID, linkDst, proto, buffer.MakeWithData(b)); err != nil {
		st.log.Debug("write ICMP to the guest", "to", dst, "err", err)
	}
}
