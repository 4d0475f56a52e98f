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
	s, d := tcpip.AddrFromSlice(src.AsSlice()), tcpip.AddrFromSlice(dst.AsSlice())
	proto := header.ICMPv4ProtocolNumber
	if src.Is4() {
		h := header.ICMPv4(msg)
		h.SetChecksum(0)
		h.SetChecksum(^checksum.Checksum(msg, 0))
	} else {
		proto = header.ICMPv6ProtocolNumber
		h := header.ICMPv6(msg)
		h.SetChecksum(0)
		h.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header:      h,
			Src:         s,
			Dst:         d,
			PayloadCsum: 0,
			PayloadLen:  0,
		}))
	}
	b := make([]byte, ipHeaderLen(s)+len(msg))
	netProto := putIPHeader(b, proto, s, d, ttl)
	copy(b[len(b)-len(msg):], msg)
	if err := st.s.WritePacketToRemote(nicID, linkDst, netProto, buffer.MakeWithData(b)); err != nil {
		st.log.Debug("write ICMP to the guest", "to", dst, "err", err)
	}
}

// ipHeaderLen is the length of the IP header putIPHeader writes for a
// packet from src: IPv4's or IPv6's, without options.
func ipHeaderLen(src tcpip.Address) int {
	if src.BitLen() == 128 {
		return header.IPv6MinimumSize
	}
	return header.IPv4MinimumSize
}

// putIPHeader writes at the start of b, a whole packet, the IPv4 (src and
// dst IPv4) or IPv6 header of a packet carrying proto from src to dst with
// the given TTL or hop limit, and returns the packet's network protocol.
func putIPHeader(b []byte, proto tcpip.TransportProtocolNumber, src, dst tcpip.Address, ttl uint8) tcpip.NetworkProtocolNumber {
	if src.BitLen() == 128 {
		header.IPv6(b).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(len(b) - header.IPv6MinimumSize),
			TransportProtocol: proto,
			HopLimit:          ttl,
			SrcAddr:           src,
			DstAddr:           dst,
		})
		return ipv6.ProtocolNumber
	}
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         ttl,
		Protocol:    uint8(proto),
		SrcAddr:     src,
		DstAddr:     dst,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	return ipv4.ProtocolNumber
}
