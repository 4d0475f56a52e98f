package stack

import (
	"context"
	"encoding/binary"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Router Advertisement timing (RFC 4861 section 6.2.1 defaults, shortened
// for unsolicited ones so a guest that missed a reply soon learns the
// prefix anyway).
const (
	raInterval      = 200 * time.Second
	raRouterLife    = 1800 // seconds
	raValidLife     = 86400
	raPreferredLife = 14400
	raMinGap        = 500 * time.Millisecond // between solicited RAs
)

// routerAdvertiser is a link endpoint wrapper that notices the guest's
// Router Solicitations, which gVisor (a host, not a router) drops, so that
// ferry answers them: gVisor sends no Router Advertisements, and without
// them a guest ferry did not configure gets no IPv6 address by SLAAC.
type routerAdvertiser struct {
	nested.Endpoint
	solicited chan struct{}
}

func newRouterAdvertiser(child stack.LinkEndpoint) *routerAdvertiser {
	ra := &routerAdvertiser{solicited: make(chan struct{}, 1)}
	ra.Endpoint.Init(child, ra)
	return ra
}

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (ra *routerAdvertiser) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if proto == header.IPv6ProtocolNumber {
		if b, ok := pkt.Data().PullUp(header.IPv6MinimumSize + 1); ok {
			ip := header.IPv6(b)
			if ip.NextHeader() == uint8(header.ICMPv6ProtocolNumber) && b[header.IPv6MinimumSize] == byte(header.ICMPv6RouterSolicit) {
				select {
				case ra.solicited <- struct{}{}:
				default:
				}
			}
		}
	}
	ra.Endpoint.DeliverNetworkPacket(proto, pkt)
}

// run sends a Router Advertisement at start, after each solicitation and
// every raInterval, until ctx ends.
func (ra *routerAdvertiser) run(ctx context.Context, st *Stack) {
	tick := time.NewTicker(raInterval)
	defer tick.Stop()
	for {
		st.sendRA(ra.LinkAddress())
		last := time.Now()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-ra.solicited:
		}
		// However often the guest asks, answer at most every raMinGap.
		if wait := raMinGap - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	}
}

// allNodesMAC is the Ethernet multicast address of ff02::1.
const allNodesMAC = tcpip.LinkAddress("\x33\x33\x00\x00\x00\x01")

// sendRA multicasts a Router Advertisement: ferry's link-local address as
// the default router, the network's /64 for SLAAC, the MTU, and the DNS
// forwarder (RFC 8106 RDNSS) unless DNS is disabled.
func (st *Stack) sendRA(mac tcpip.LinkAddress) {
	n := st.cfg.Network
	msg := make([]byte, header.ICMPv6HeaderSize+header.NDPRAMinimumSize, 128)
	msg[0] = byte(header.ICMPv6RouterAdvert)
	msg[4] = 64                                                 // cur hop limit
	binary.BigEndian.PutUint16(msg[6:], raRouterLife)           // router lifetime
	msg = append(msg, 1, 1)                                     // source link-layer address
	msg = append(msg, mac...)                                   //
	msg = append(msg, 5, 1, 0, 0)                               // MTU
	msg = binary.BigEndian.AppendUint32(msg, st.cfg.Link.MTU()) //
	msg = append(msg, 3, 4, byte(n.Prefix6.Bits()), 0xc0)       // prefix: on-link, autonomous
	msg = binary.BigEndian.AppendUint32(msg, raValidLife)       //
	msg = binary.BigEndian.AppendUint32(msg, raPreferredLife)   //
	msg = append(msg, 0, 0, 0, 0)                               //
	msg = append(msg, n.Prefix6.Addr().AsSlice()...)            //
	if !st.cfg.DisableDNS {
		msg = append(msg, 25, 3, 0, 0) // RDNSS
		msg = binary.BigEndian.AppendUint32(msg, raRouterLife)
		msg = append(msg, n.DNS6.AsSlice()...)
	}
	st.writeICMP(allNodesMAC, linkLocal(mac), netip.MustParseAddr("ff02::1"), 255, msg)
}

// linkLocal is the EUI-64 link-local IPv6 address of a MAC address.
func linkLocal(mac tcpip.LinkAddress) netip.Addr {
	var b [16]byte
	b[0], b[1] = 0xfe, 0x80
	if len(mac) == 6 {
		m := []byte(mac)
		b[8], b[9], b[10] = m[0]^0x02, m[1], m[2]
		b[11], b[12] = 0xff, 0xfe
		b[13], b[14], b[15] = m[3], m[4], m[5]
	}
	return netip.AddrFrom16(b)
}
