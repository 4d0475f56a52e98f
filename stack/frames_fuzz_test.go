package stack

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// FuzzFrames writes arbitrary IP packets into a running stack, as a hostile
// guest could. Every destination is fenced off, so nothing is ever dialed:
// the stack must answer or drop, and never panic. One UDP flow, that of the
// UDP seed, is open on the fast path (fastUDP), its host socket connected
// to a sink on loopback, so that mutations of it meet the fast path's
// parsing.
func FuzzFrames(f *testing.F) {
	for _, seed := range [][]byte{
		ipv4Packet(header.TCPProtocolNumber, []byte{0x30, 0x39, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0}),
		ipv4Packet(header.UDPProtocolNumber, []byte{0x30, 0x39, 0, 53, 0, 12, 0, 0, 1, 2, 3, 4}),
		ipv4Packet(header.ICMPv4ProtocolNumber, []byte{8, 0, 0, 0, 0, 1, 0, 1, 'p', 'i', 'n', 'g'}),
		{0x60, 0, 0, 0, 0, 8, 58, 64},
		{0x45, 0, 0, 20, 0, 1, 0x20, 0, 64, 17}, // a fragment that never completes
	} {
		f.Add(seed)
	}
	ep := channel.New(256, 65520, "\x52\x55\x0a\x00\x02\x02")
	link := &burstLink{Endpoint: ep}
	st, err := New(Config{
		Link:    link,
		Network: NewNetwork(netip.MustParsePrefix(DefaultCIDR)).WithIPv6(netip.MustParsePrefix(DefaultCIDR6)),
		Fence:   Fence{Deny: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}},
	})
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { // drain what the stack sends back
		for ep.ReadContext(ctx) != nil {
		}
	}()
	f.Cleanup(func() { cancel(); st.Close() })
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { sink.Close() })
	go func() { // drain the sink
		buf := make([]byte, 65536)
		for {
			if _, err := sink.Read(buf); err != nil {
				return
			}
		}
	}()
	host, err := net.DialUDP("udp4", nil, sink.LocalAddr().(*net.UDPAddr))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { host.Close() })
	rc, err := host.SyscallConn()
	if err != nil {
		f.Fatal(err)
	}
	var last atomic.Int64
	st.udpFast.add(stack.TransportEndpointID{ // the UDP seed's flow
		LocalPort: 53, LocalAddress: tcpip.AddrFrom4([4]byte{192, 0, 2, 1}),
		RemotePort: 12345, RemoteAddress: tcpip.AddrFrom4([4]byte{10, 0, 2, 100}),
	}, &udpOut{host: rc, last: &last, moved: &st.counters.bytesOut, fail: func() {}, batch: st.udpBatch})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		proto := tcpip.NetworkProtocolNumber(header.IPv4ProtocolNumber)
		if b[0]>>4 == 6 {
			proto = header.IPv6ProtocolNumber
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
		ep.InjectInbound(proto, pkt)
		pkt.DecRef()
		link.endBurst()
	})
}

// ipv4Packet wraps a transport payload from the guest to 192.0.2.1, with a
// valid header checksum.
func ipv4Packet(proto tcpip.TransportProtocolNumber, payload []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         64,
		Protocol:    uint8(proto),
		SrcAddr:     tcpip.AddrFrom4([4]byte{10, 0, 2, 100}),
		DstAddr:     tcpip.AddrFrom4([4]byte{192, 0, 2, 1}),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[header.IPv4MinimumSize:], payload)
	return b
}
