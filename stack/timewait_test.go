package stack

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestSYNOnTimeWaitTuple plays a guest that opens a connection to the
// host's loopback through the gateway, lets the server close first (so the
// stack keeps TIME-WAIT), then opens a new connection on the same 4-tuple at
// once, as a busy guest reusing its source port does: the new SYN must be
// answered with a SYN-ACK at once, neither dropped (the guest would wait a
// second to retry) nor reset.
func TestSYNOnTimeWaitTuple(t *testing.T) {
	st, ep, port := stackToServer(t, func(c net.Conn) { c.Close() }) // the server closes first
	g := &tcpGuest{t: t, ep: ep, srcPort: 40000, dstPort: port}

	for round, iss := range []uint32{1000, 900_000} {
		g.send(header.TCPFlagSyn, iss, 0)
		synAck := g.recv(time.Second)
		if synAck == nil {
			t.Fatalf("round %d: no answer to the SYN within a second", round)
		}
		if f := synAck.Flags(); f != header.TCPFlagSyn|header.TCPFlagAck || synAck.AckNumber() != iss+1 {
			t.Fatalf("round %d: answer to the SYN: flags %v ack %d, want SYN-ACK ack %d", round, f, synAck.AckNumber(), iss+1)
		}
		irs := synAck.SequenceNumber()
		g.send(header.TCPFlagAck, iss+1, irs+1)
		// The server closes; the stack passes its FIN on.
		fin := g.recv(5 * time.Second)
		if fin == nil || !fin.Flags().Contains(header.TCPFlagFin) {
			t.Fatalf("round %d: no FIN after the server closed: %v", round, fin)
		}
		g.send(header.TCPFlagFin|header.TCPFlagAck, iss+1, irs+2)
		if ack := g.recv(time.Second); ack == nil || ack.Flags() != header.TCPFlagAck || ack.AckNumber() != iss+2 {
			t.Fatalf("round %d: no last ACK: %v", round, ack)
		}
		// The stack now holds the tuple in TIME-WAIT, or is about to:
		// gVisor sends that last ACK a moment before it moves the
		// endpoint from FIN-WAIT-1, and a SYN in between is dropped
		// (about 2 runs in 100 of this test, sending at once). The next
		// round opens the tuple again as soon as it is in TIME-WAIT.
		id := stack.TransportEndpointID{LocalPort: port, LocalAddress: gatewayIP, RemotePort: g.srcPort, RemoteAddress: guestIP}
		waitTimeWait(t, st, id)
	}
	if n := st.Stats().Drops[DropStackReset]; n != 0 {
		t.Errorf("the stack sent %d RSTs", n)
	}
}

// waitTimeWait waits, up to a second, until the stack's endpoint holding id
// is in TIME-WAIT.
func waitTimeWait(t *testing.T, st *Stack, id stack.TransportEndpointID) {
	t.Helper()
	for deadline := time.Now().Add(time.Second); ; time.Sleep(time.Millisecond) {
		ep, ok := st.s.FindTransportEndpoint(header.IPv4ProtocolNumber, header.TCPProtocolNumber, id, nicID).(*tcp.Endpoint)
		if ok && tcp.EndpointState(ep.State()) == tcp.StateTimeWait {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the endpoint of %+v is not in TIME-WAIT after a second", id)
		}
	}
}

// stackToServer starts a server on the host's loopback that hands each
// connection to handle, and a stack on a channel link whose guest reaches
// it through the gateway at the returned port. Both stop with the test.
func stackToServer(t *testing.T, handle func(net.Conn)) (*Stack, *channel.Endpoint, uint16) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			handle(c)
		}
	}()
	ep := channel.New(256, 1500, "\x52\x55\x0a\x00\x02\x02")
	st, err := New(Config{Link: ep, Network: NewNetwork(netip.MustParsePrefix(DefaultCIDR))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st, ep, uint16(l.Addr().(*net.TCPAddr).Port)
}

// tcpGuest writes a guest's TCP segments from 10.0.2.100 to the gateway
// into a stack's link, and reads the stack's.
type tcpGuest struct {
	t                *testing.T
	ep               *channel.Endpoint
	srcPort, dstPort uint16
}

var (
	guestIP   = tcpip.AddrFrom4([4]byte{10, 0, 2, 100})
	gatewayIP = tcpip.AddrFrom4([4]byte{10, 0, 2, 2})
)

func (g *tcpGuest) send(flags header.TCPFlags, seq, ack uint32) {
	b := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         64,
		Protocol:    uint8(header.TCPProtocolNumber),
		SrcAddr:     guestIP,
		DstAddr:     gatewayIP,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(b[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{
		SrcPort:    g.srcPort,
		DstPort:    g.dstPort,
		SeqNum:     seq,
		AckNum:     ack,
		DataOffset: header.TCPMinimumSize,
		Flags:      flags,
		WindowSize: 65535,
	})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, guestIP, gatewayIP, header.TCPMinimumSize)
	tcp.SetChecksum(^tcp.CalculateChecksum(xsum))
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	g.ep.InjectInbound(header.IPv4ProtocolNumber, pkt)
	pkt.DecRef()
}

// recv returns the next TCP segment the stack sends to the guest within
// timeout, or nil.
func (g *tcpGuest) recv(timeout time.Duration) header.TCP {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		pkt := g.ep.ReadContext(ctx)
		if pkt == nil {
			return nil
		}
		v := stack.PayloadSince(pkt.NetworkHeader())
		b := append([]byte(nil), v.AsSlice()...)
		v.Release()
		pkt.DecRef()
		ip := header.IPv4(b)
		if len(b) < header.IPv4MinimumSize || ip.Protocol() != uint8(header.TCPProtocolNumber) {
			continue
		}
		tcp := header.TCP(b[ip.HeaderLength():])
		if tcp.DestinationPort() != g.srcPort {
			continue
		}
		return tcp
	}
}

// TestSYNShedOverInFlightLimit fills the in-flight SYN limit: a SYN that
// would open a new connection is then dropped before the stack sees it,
// and counted, while a SYN on a connection that exists still reaches its
// endpoint (which answers it with an ACK), and a new connection opens
// again once the limit has room.
func TestSYNShedOverInFlightLimit(t *testing.T) {
	st, ep, port := stackToServer(t, func(c net.Conn) { t.Cleanup(func() { c.Close() }) }) // held open

	open := &tcpGuest{t: t, ep: ep, srcPort: 40000, dstPort: port}
	open.send(header.TCPFlagSyn, 1000, 0)
	synAck := open.recv(time.Second)
	if synAck == nil || synAck.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
		t.Fatalf("first connection: answer to the SYN %v, want a SYN-ACK", synAck)
	}
	irs := synAck.SequenceNumber()
	open.send(header.TCPFlagAck, 1001, irs+1)

	st.counters.tcpDialing.Store(int64(st.cfg.MaxInFlightSYNs)) // the limit is full
	fresh := &tcpGuest{t: t, ep: ep, srcPort: 40001, dstPort: port}
	fresh.send(header.TCPFlagSyn, 5000, 0)
	if got := fresh.recv(300 * time.Millisecond); got != nil {
		t.Errorf("a new connection's SYN over the limit was answered: %v", got)
	}
	if n := st.Stats().Drops[DropSYNFlood]; n != 1 {
		t.Errorf("%s drops: %d, want 1", DropSYNFlood, n)
	}
	open.send(header.TCPFlagSyn, 1000, 0) // a SYN on the open connection
	if got := open.recv(time.Second); got == nil || got.Flags() != header.TCPFlagAck {
		t.Errorf("a SYN on an open connection over the limit: answer %v, want its endpoint's ACK", got)
	}

	st.counters.tcpDialing.Store(0)
	fresh.send(header.TCPFlagSyn, 5000, 0)
	if got := fresh.recv(time.Second); got == nil || got.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
		t.Errorf("a new connection once the limit has room: answer %v, want a SYN-ACK", got)
	}
}
