package stack

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestUDPReply checks the host's datagrams as they reach the guest, both
// those udpReply builds (that fit the MTU) and those it leaves to the
// stack (that do not): addresses, ports, payload, and IP and UDP
// checksums the guest's kernel accepts; the big one arrives in fragments.
func TestUDPReply(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "IPv4", true: "IPv6"}[v6], func(t *testing.T) {
			st, link, srv, g, loop := openUDPFlow(t, v6)
			guest, gw := g.src.Addr(), g.dst.Addr()
			to := netip.AddrPortFrom(loop, recvFrom(t, srv, g))

			sent := st.s.Stats().UDP.PacketsSent.Value()
			small := bytes.Repeat([]byte("s"), 1000)
			big := bytes.Repeat([]byte("b"), 4000) // over the MTU: the stack fragments it
			for _, p := range [][]byte{small, {}, big} {
				if _, err := srv.WriteToUDPAddrPort(p, to); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var got [][]byte
			fragments := 0
			for len(got) < 2 || fragments == 0 {
				pkt := link.ReadContext(ctx)
				if pkt == nil {
					t.Fatalf("%d datagrams and %d fragments reached the guest, want 2 and the big one's", len(got), fragments)
				}
				v := stack.PayloadSince(pkt.NetworkHeader())
				b := append([]byte(nil), v.AsSlice()...)
				v.Release()
				pkt.DecRef()
				if len(b) == 0 || (b[0]>>4 == 6) != v6 {
					continue // the other IP version's (Router Advertisements)
				}
				var src, dst tcpip.Address
				var udp header.UDP
				if v6 {
					ip := header.IPv6(b)
					if ip.NextHeader() == uint8(header.IPv6FragmentExtHdrIdentifier) {
						fragments++
						continue
					}
					if ip.NextHeader() != uint8(header.UDPProtocolNumber) {
						continue // ICMPv6: Router Advertisements
					}
					src, dst, udp = ip.SourceAddress(), ip.DestinationAddress(), header.UDP(ip.Payload())
				} else {
					ip := header.IPv4(b)
					if !ip.IsChecksumValid() {
						t.Fatalf("IPv4 header checksum wrong: %x", b[:20])
					}
					if ip.More() || ip.FragmentOffset() != 0 {
						fragments++
						continue
					}
					src, dst, udp = ip.SourceAddress(), ip.DestinationAddress(), header.UDP(ip.Payload())
				}
				if src != tcpip.AddrFromSlice(gw.AsSlice()) || dst != tcpip.AddrFromSlice(guest.AsSlice()) {
					t.Fatalf("datagram from %s to %s, want %s to %s", src, dst, gw, guest)
				}
				if udp.SourcePort() != g.dst.Port() || udp.DestinationPort() != g.src.Port() {
					t.Fatalf("datagram from port %d to %d, want %d to %d", udp.SourcePort(), udp.DestinationPort(), g.dst.Port(), g.src.Port())
				}
				if int(udp.Length()) != len(udp) {
					t.Fatalf("UDP length %d in %d bytes", udp.Length(), len(udp))
				}
				if !udp.IsChecksumValid(src, dst, checksum.Checksum(udp.Payload(), 0)) {
					t.Fatalf("UDP checksum %#x wrong", udp.Checksum())
				}
				got = append(got, append([]byte(nil), udp.Payload()...))
			}
			if !bytes.Equal(got[0], small) || len(got[1]) != 0 {
				t.Fatalf("datagrams of %d and %d bytes, want %d and 0", len(got[0]), len(got[1]), len(small))
			}
			// The stack counts the big one once its write returns, which
			// may be after its fragments reached the link.
			for deadline := time.Now().Add(time.Second); st.s.Stats().UDP.PacketsSent.Value()-sent < 1 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			if d := st.s.Stats().UDP.PacketsSent.Value() - sent; d != 1 {
				t.Fatalf("the stack's UDP sent %d datagrams, want 1 (the big one; udpReply the others)", d)
			}
		})
	}
}

// TestUDPReplyResolve checks that udpReply finds the guest's link address
// in the neighbor table when the link needs one, and takes nothing while
// it is unknown.
func TestUDPReplyResolve(t *testing.T) {
	link := channel.New(16, 1500, "\x52\x55\x0a\x00\x02\x02")
	link.LinkEPCapabilities |= stack.CapabilityResolutionRequired
	st, err := New(Config{Link: link, Network: NewNetwork(netip.MustParsePrefix(DefaultCIDR))})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	id := stack.TransportEndpointID{LocalAddress: gatewayIP, LocalPort: 53, RemoteAddress: guestIP, RemotePort: 40000}
	r := newUDPReply(st, id)
	if r.resolve(time.Now()) || r.write([]byte("x")) {
		t.Fatal("took a datagram for a guest whose link address is unknown")
	}
	const mac = tcpip.LinkAddress("\x02\x00\x00\x00\x00\x64")
	if err := st.s.AddStaticNeighbor(nicID, ipv4.ProtocolNumber, guestIP, mac); err != nil {
		t.Fatal(err)
	}
	if r.resolve(time.Now()) {
		t.Fatal("looked the table up again before udpReplyLookup passed")
	}
	if !r.resolve(time.Now().Add(udpReplyLookup)) || r.mac != mac {
		t.Fatalf("guest's link address %q, want %q", r.mac, mac)
	}
}
