package stack

import (
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// udpReply writes a UDP flow's datagrams from the host to the guest as
// whole IP packets, built here and handed to the NIC, past the stack's UDP
// endpoint, route and IP layer (about a third of ferry's CPU a datagram
// costs). It is the way back of fastUDP. It takes only what needs none of
// what it skips: a datagram that fits the MTU unfragmented, to a guest
// whose link address the stack knows; the rest goes through the stack's
// endpoint as before.
type udpReply struct {
	st     *Stack
	id     stack.TransportEndpointID // local: the address the guest sent to; remote: the guest
	proto  tcpip.NetworkProtocolNumber
	mtu    int
	linked bool              // the link needs the guest's link address
	mac    tcpip.LinkAddress // the guest's, when known (linked)
	looked time.Time         // when mac was last looked up
}

// udpReplyLookup is how often a flow looks the guest's link address up
// again: after this long it may have changed (rare), and a flow that
// found none retries no sooner.
const udpReplyLookup = time.Second

func newUDPReply(st *Stack, id stack.TransportEndpointID) *udpReply {
	r := &udpReply{st: st, id: id, proto: ipv4.ProtocolNumber, mtu: int(st.cfg.Link.MTU())}
	if id.LocalAddress.BitLen() == 128 {
		r.proto = ipv6.ProtocolNumber
	}
	r.linked = st.cfg.Link.Capabilities()&stack.CapabilityResolutionRequired != 0
	return r
}

// write sends payload to the guest and reports whether it took it; false
// leaves it to the stack's endpoint. The guest's link address is the one
// the last resolve found.
func (r *udpReply) write(payload []byte) bool {
	src, dst := r.id.LocalAddress, r.id.RemoteAddress
	ipLen := ipHeaderLen(src)
	size := ipLen + header.UDPMinimumSize + len(payload)
	if size > r.mtu || size > buffer.MaxChunkSize {
		return false // needs fragments: the stack makes them
	}
	if r.linked && r.mac == "" {
		return false // the stack resolves it
	}
	v := buffer.NewViewSize(size)
	b := v.AsSlice()
	udpLen := uint16(header.UDPMinimumSize + len(payload))
	u := header.UDP(b[ipLen:])
	u.Encode(&header.UDPFields{SrcPort: r.id.LocalPort, DstPort: r.id.RemotePort, Length: udpLen})
	copy(u.Payload(), payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, udpLen)
	xsum = checksum.Checksum(payload, xsum)
	if c := ^u.CalculateChecksum(xsum); c != 0 {
		u.SetChecksum(c)
	} else {
		u.SetChecksum(0xffff) // zero means "no checksum"
	}
	putIPHeader(b, header.UDPProtocolNumber, src, dst, 64)
	if err := r.st.s.WritePacketToRemote(nicID, r.mac, r.proto, buffer.MakeWithView(v)); err != nil {
		r.st.log.Debug("write UDP to the guest", "to", dst, "err", err)
	}
	return true
}

// resolve finds the guest's link address in the stack's neighbor table
// for the writes that follow, looking again once udpReplyLookup has passed
// since the last look (now is the time of the datagrams at hand), and
// reports whether it is known.
func (r *udpReply) resolve(now time.Time) bool {
	if !r.linked {
		return true
	}
	if r.looked.IsZero() || now.Sub(r.looked) >= udpReplyLookup {
		r.looked = now
		r.mac = ""
		entries, err := r.st.s.Neighbors(nicID, r.proto)
		if err == nil {
			for _, e := range entries {
				if e.Addr == r.id.RemoteAddress && e.LinkAddr != "" && e.State != stack.Unreachable && e.State != stack.Incomplete {
					r.mac = e.LinkAddr
					break
				}
			}
		}
	}
	return r.mac != ""
}
