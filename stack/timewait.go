package stack

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/ports"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// timeWaitReuser is a link endpoint wrapper that lets the guest open a new
// connection on a 4-tuple whose previous connection the stack still holds
// in TIME-WAIT (ferry closes first toward the guest whenever the server
// does, so the stack, not the guest, keeps TIME-WAIT).
//
// gVisor hands a new SYN on a TIME-WAIT tuple only to a listening endpoint;
// ferry's forwarder is none, so the SYN is dropped (the guest retries a
// second later), and when it lands in the endpoint's queue just as the
// TIME-WAIT timer fires, the stack answers it with a RST as a segment for
// no connection: the guest's connect is refused. A busy guest reuses its
// source ports within a second or two (Linux picks them round a
// per-destination offset: 28,000 ports at 2,000 connections a second), so
// about one connection in 20,000 of a churning guest was refused.
//
// Like Linux with a listener behind a TIME-WAIT socket, the wrapper retires
// the TIME-WAIT endpoint when the guest sends a SYN on its tuple (the
// guest's own side of it is closed, or it would not send one) by taking it
// out of the demuxer, so that the SYN reaches the forwarder as any new
// connection does. The old endpoint finishes its timer unseen.
//
// It also takes, when bypass says so, frames before the stack sees them
// (see Stack.bypass: the UDP fast path and shedding under floods); it
// tells bypass whether a frame is a SYN that no endpoint holds, which it
// has just looked up.
type timeWaitReuser struct {
	nested.Endpoint
	s      *stack.Stack
	bypass bypassFunc
}

// A bypassFunc takes frames before the stack sees them and reports whether
// it took pkt; newConn says pkt is a SYN that no endpoint holds, the
// opening of a new connection.
type bypassFunc func(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer, newConn bool) bool

func newTimeWaitReuser(s *stack.Stack, child stack.LinkEndpoint, bypass bypassFunc) *timeWaitReuser {
	r := &timeWaitReuser{s: s, bypass: bypass}
	r.Endpoint.Init(child, r)
	return r
}

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (r *timeWaitReuser) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	newConn := false
	if id, ok := synID(proto, pkt); ok {
		newConn = r.retire(proto, id)
	}
	if r.bypass != nil && r.bypass(proto, pkt, newConn) {
		return
	}
	r.Endpoint.DeliverNetworkPacket(proto, pkt)
}

// retire takes a TIME-WAIT endpoint holding id out of the demuxer. It
// reports whether no endpoint holds id now.
func (r *timeWaitReuser) retire(proto tcpip.NetworkProtocolNumber, id stack.TransportEndpointID) bool {
	found := r.s.FindTransportEndpoint(proto, tcp.ProtocolNumber, id, nicID)
	if found == nil {
		return true
	}
	ep, ok := found.(*tcp.Endpoint)
	if !ok || tcp.EndpointState(ep.State()) != tcp.StateTimeWait {
		return false
	}
	// ferry's endpoints are bound with no port flags and to no device. The
	// demuxer removes this endpoint only, and its own cleanup when the
	// timer fires finds it gone and leaves any newer one alone.
	r.s.UnregisterTransportEndpoint([]tcpip.NetworkProtocolNumber{proto}, tcp.ProtocolNumber, id, ep, ports.Flags{}, 0)
	return true
}

// synID returns the transport endpoint ID (from the stack's point of view)
// of a TCP SYN without ACK, the opening of a connection, in pkt, which
// starts at its IP header.
func synID(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) (stack.TransportEndpointID, bool) {
	id, b, ok := transportID(proto, pkt, header.TCPProtocolNumber, header.TCPMinimumSize)
	if !ok {
		return stack.TransportEndpointID{}, false
	}
	if f := header.TCP(b).Flags(); !f.Contains(header.TCPFlagSyn) || f.Intersects(header.TCPFlagAck|header.TCPFlagRst) {
		return stack.TransportEndpointID{}, false
	}
	return id, true
}

// transportID returns the transport endpoint ID (from the stack's point of
// view) of an unfragmented packet of protocol trans in pkt, which starts at
// its IP header, and the transport header's first hdrLen bytes (ports
// first, as TCP's and UDP's are).
func transportID(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer, trans tcpip.TransportProtocolNumber, hdrLen int) (stack.TransportEndpointID, []byte, bool) {
	var src, dst tcpip.Address
	var off int
	switch proto {
	case header.IPv4ProtocolNumber:
		b, ok := pkt.Data().PullUp(header.IPv4MinimumSize)
		if !ok {
			return stack.TransportEndpointID{}, nil, false
		}
		ip := header.IPv4(b)
		if ip.Protocol() != uint8(trans) || ip.FragmentOffset() != 0 || ip.More() {
			return stack.TransportEndpointID{}, nil, false
		}
		src, dst, off = ip.SourceAddress(), ip.DestinationAddress(), int(ip.HeaderLength())
	case header.IPv6ProtocolNumber:
		b, ok := pkt.Data().PullUp(header.IPv6MinimumSize)
		if !ok {
			return stack.TransportEndpointID{}, nil, false
		}
		ip := header.IPv6(b)
		if ip.NextHeader() != uint8(trans) { // extension headers: left to gVisor
			return stack.TransportEndpointID{}, nil, false
		}
		src, dst, off = ip.SourceAddress(), ip.DestinationAddress(), header.IPv6MinimumSize
	default:
		return stack.TransportEndpointID{}, nil, false
	}
	b, ok := pkt.Data().PullUp(off + hdrLen)
	if !ok {
		return stack.TransportEndpointID{}, nil, false
	}
	b = b[off:]
	// Source then destination port, in TCP's and UDP's headers alike.
	srcPort, dstPort := uint16(b[0])<<8|uint16(b[1]), uint16(b[2])<<8|uint16(b[3])
	return stack.TransportEndpointID{LocalPort: dstPort, LocalAddress: dst, RemotePort: srcPort, RemoteAddress: src}, b, true
}
