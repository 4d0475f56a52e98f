package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// burstLink is a channel endpoint that reports bursts as tap's endpoint
// does; the test ends a burst by calling endBurst.
type burstLink struct {
	*channel.Endpoint
	hook func()
}

func (l *burstLink) SetBurstHook(f func()) { l.hook = f }
func (l *burstLink) endBurst()             { l.hook() }

// udpGuest writes UDP datagrams into a stack as a guest at src would.
type udpGuest struct {
	link     *burstLink
	src, dst netip.AddrPort
}

// frame returns an IP packet carrying payload from g.src to g.dst, with
// the header's fields changed by edit (nil: none) before the IPv4 header
// checksum is computed.
func (g *udpGuest) frame(payload string, edit func(ip, udp []byte)) []byte {
	ipLen := header.IPv4MinimumSize
	if g.src.Addr().Is6() {
		ipLen = header.IPv6MinimumSize
	}
	b := make([]byte, ipLen+header.UDPMinimumSize+len(payload))
	udp := header.UDP(b[ipLen:])
	udp.Encode(&header.UDPFields{SrcPort: g.src.Port(), DstPort: g.dst.Port(), Length: uint16(len(b) - ipLen)})
	copy(udp.Payload(), payload)
	src, dst := tcpip.AddrFromSlice(g.src.Addr().AsSlice()), tcpip.AddrFromSlice(g.dst.Addr().AsSlice())
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, udp.Length())
	udp.SetChecksum(^udp.CalculateChecksum(checksum.Combine(xsum, checksum.Checksum(udp.Payload(), 0))))
	if ipLen == header.IPv6MinimumSize {
		header.IPv6(b).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(len(b) - ipLen),
			TransportProtocol: header.UDPProtocolNumber,
			HopLimit:          64,
			SrcAddr:           src,
			DstAddr:           dst,
		})
	} else {
		header.IPv4(b).Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)),
			TTL:         64,
			Protocol:    uint8(header.UDPProtocolNumber),
			SrcAddr:     src,
			DstAddr:     dst,
		})
	}
	if edit != nil {
		edit(b[:ipLen], b[ipLen:])
	}
	if ipLen == header.IPv4MinimumSize {
		ip := header.IPv4(b)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	return b
}

func (g *udpGuest) send(b []byte) {
	proto := tcpip.NetworkProtocolNumber(header.IPv4ProtocolNumber)
	if b[0]>>4 == 6 {
		proto = header.IPv6ProtocolNumber
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	g.link.InjectInbound(proto, pkt)
	pkt.DecRef()
}

// openUDPFlow starts a stack on a burstLink, a UDP server on the host's
// loopback (IPv4 or IPv6) and, through the stack, a flow to it from a guest
// socket; it returns them and the loopback address. Cleanup closes them.
func openUDPFlow(t *testing.T, v6 bool) (*Stack, *burstLink, *net.UDPConn, *udpGuest, netip.Addr) {
	t.Helper()
	loop := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	n := NewNetwork(netip.MustParsePrefix(DefaultCIDR)).WithIPv6(netip.MustParsePrefix(DefaultCIDR6))
	guest, gw := n.Guest, n.Gateway
	if v6 {
		loop, guest, gw = netip.IPv6Loopback(), n.Guest6, n.Gateway6
	}
	srv, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loop, 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	link := &burstLink{Endpoint: channel.New(1024, 1500, "\x52\x55\x0a\x00\x02\x02")}
	st, err := New(Config{Link: link, Network: n})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	g := &udpGuest{link: link, src: netip.AddrPortFrom(guest, 40000), dst: netip.AddrPortFrom(gw, srv.LocalAddr().(*net.UDPAddr).AddrPort().Port())}
	g.send(g.frame("open", nil)) // opens the flow, through the stack
	link.endBurst()
	if got := recvAll(t, srv, 1); len(got) != 1 || got[0] != "open" {
		t.Fatalf("first datagram: got %q", got)
	}
	return st, link, srv, g, loop
}

// recvAll reads datagrams from c until want have come or a second passes
// with none.
func recvAll(t *testing.T, c *net.UDPConn, want int) []string {
	t.Helper()
	var got []string
	buf := make([]byte, 2048)
	for len(got) < want {
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(buf[:n]))
	}
	return got
}

// TestUDPFastPath checks that once a UDP flow is open its datagrams from
// the guest reach the host without passing through the stack (fastUDP),
// intact and in order; that datagrams the fast path leaves alone (IPv4
// options, bad lengths, a bad header checksum) meet the stack as before;
// and that answers still reach the guest.
func TestUDPFastPath(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "IPv4", true: "IPv6"}[v6], func(t *testing.T) {
			st, link, srv, g, loop := openUDPFlow(t, v6)
			k := stack.TransportEndpointID{
				LocalPort: g.dst.Port(), LocalAddress: tcpip.AddrFromSlice(g.dst.Addr().AsSlice()),
				RemotePort: g.src.Port(), RemoteAddress: tcpip.AddrFromSlice(g.src.Addr().AsSlice()),
			}
			for deadline := time.Now().Add(5 * time.Second); st.udpFast.lookup(k) == nil; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the flow never joined the fast path")
				}
			}

			stats := st.s.Stats()
			before := stats.UDP.PacketsReceived.Value()
			var want []string
			for i := range 200 {
				want = append(want, fmt.Sprintf("datagram %d", i))
				g.send(g.frame(want[i], nil))
				if i%50 == 49 {
					link.endBurst()
				}
			}
			if got := recvAll(t, srv, len(want)); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("fast path delivered %d datagrams %q..., want %d in order", len(got), got[:min(3, len(got))], len(want))
			}
			if d := stats.UDP.PacketsReceived.Value() - before; d != 0 {
				t.Fatalf("%d datagrams of an open flow went through the stack's UDP, want 0", d)
			}

			// A UDP length shorter than the packet: the rest is padding.
			g.send(g.frame("shortpadding", func(_, udp []byte) { header.UDP(udp).SetLength(header.UDPMinimumSize + 5) }))
			// A UDP length longer than the packet: dropped by the stack.
			before = stats.UDP.MalformedPacketsReceived.Value()
			g.send(g.frame("long", func(_, udp []byte) { header.UDP(udp).SetLength(200) }))
			link.endBurst()
			if got := recvAll(t, srv, 1); len(got) != 1 || got[0] != "short" {
				t.Fatalf("datagram with padding: got %q, want [short]", got)
			}
			if d := stats.UDP.MalformedPacketsReceived.Value() - before; d != 1 {
				t.Fatalf("datagram longer than its packet: the stack counted %d malformed, want 1", d)
			}
			if !v6 {
				// IPv4 options: left to the stack, which delivers it.
				before = stats.UDP.PacketsReceived.Value()
				opts := g.frame("with options", nil)
				opts = append(opts[:20:20], append([]byte{1, 1, 1, 0}, opts[20:]...)...)
				ip := header.IPv4(opts)
				ip.SetHeaderLength(24)
				ip.SetTotalLength(uint16(len(opts)))
				ip.SetChecksum(0)
				ip.SetChecksum(^ip.CalculateChecksum())
				g.send(opts)
				link.endBurst()
				if got := recvAll(t, srv, 1); len(got) != 1 || got[0] != "with options" {
					t.Fatalf("datagram with IPv4 options: got %q", got)
				}
				if d := stats.UDP.PacketsReceived.Value() - before; d != 1 {
					t.Fatalf("datagram with IPv4 options: the stack's UDP saw %d, want 1", d)
				}
				// A bad header checksum: left to the stack, which drops it.
				bad := g.frame("bad checksum", nil)
				bad[10] ^= 0xff
				before = stats.IP.MalformedPacketsReceived.Value()
				g.send(bad)
				link.endBurst()
				if got := recvAll(t, srv, 1); len(got) != 0 {
					t.Fatalf("datagram with a bad IPv4 header checksum delivered: %q", got)
				}
				if d := stats.IP.MalformedPacketsReceived.Value() - before; d != 1 {
					t.Fatalf("datagram with a bad IPv4 header checksum: the stack counted %d malformed, want 1", d)
				}
			}

			// The answer goes the other way, through the stack.
			if _, err := srv.WriteToUDPAddrPort([]byte("answer"), netip.AddrPortFrom(loop, recvFrom(t, srv, g))); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for {
				pkt := link.ReadContext(ctx)
				if pkt == nil {
					t.Fatal("no answer reached the guest")
				}
				v := stack.PayloadSince(pkt.NetworkHeader())
				b := append([]byte(nil), v.AsSlice()...)
				v.Release()
				pkt.DecRef()
				off := header.IPv4MinimumSize
				if v6 {
					off = header.IPv6MinimumSize
				}
				if len(b) > off+header.UDPMinimumSize && string(b[off+header.UDPMinimumSize:]) == "answer" {
					if u := header.UDP(b[off:]); u.SourcePort() != g.dst.Port() || u.DestinationPort() != g.src.Port() {
						t.Fatalf("answer from port %d to %d, want %d to %d", u.SourcePort(), u.DestinationPort(), g.dst.Port(), g.src.Port())
					}
					return
				}
			}
		})
	}
}

// recvFrom sends one more datagram of g's flow and returns the port the
// server sees it come from: the flow's host socket.
func recvFrom(t *testing.T, srv *net.UDPConn, g *udpGuest) uint16 {
	t.Helper()
	g.send(g.frame("where from", nil))
	g.link.endBurst()
	buf := make([]byte, 64)
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, from, err := srv.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	return from.Port()
}

// TestUDPUndialableDropped checks that a datagram to an address ferry never
// dials (a neighbour on the virtual network, the broadcast address) is
// dropped before the stack scans its addresses for it, and counted as
// no-destination, while datagrams to the stack's own DNS socket still
// reach it.
func TestUDPUndialableDropped(t *testing.T) {
	n := NewNetwork(netip.MustParsePrefix(DefaultCIDR))
	link := &burstLink{Endpoint: channel.New(64, 1500, "\x52\x55\x0a\x00\x02\x02")}
	st, err := New(Config{Link: link, Network: n, DNSUpstreams: []string{"127.0.0.1:9"}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	stats := st.s.Stats()
	for _, dst := range []string{"10.0.2.50:9999", "10.0.2.255:9999"} {
		g := &udpGuest{link: link, src: netip.AddrPortFrom(n.Guest, 40000), dst: netip.MustParseAddrPort(dst)}
		before := stats.IP.PacketsReceived.Value()
		g.send(g.frame("nowhere", nil))
		link.endBurst()
		if d := stats.IP.PacketsReceived.Value() - before; d != 0 {
			t.Errorf("datagram to %s: the stack's IP layer saw it (%d), want it dropped before", dst, d)
		}
	}
	if got := st.Stats().Drops[DropNoDestination]; got != 2 {
		t.Errorf("no-destination drops: %d, want 2", got)
	}
	g := &udpGuest{link: link, src: netip.AddrPortFrom(n.Guest, 40001), dst: netip.AddrPortFrom(n.DNS, 53)}
	before := stats.UDP.PacketsReceived.Value()
	g.send(g.frame("not really a query", nil))
	link.endBurst()
	if d := stats.UDP.PacketsReceived.Value() - before; d != 1 {
		t.Errorf("datagram to the DNS address: the stack's UDP saw %d, want 1", d)
	}
}
