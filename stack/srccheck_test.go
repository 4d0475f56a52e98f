package stack

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// sourceCheckStack is a bare gVisor stack set up as ferry's (promiscuous,
// spoofing, the gateway's address) whose address table also holds a
// temporary address for each of dests destinations, as a guest with flows
// to that many addresses leaves it; with pin, the guest's address is
// pinned by pinGuestSource. It returns the IPv4 endpoint's addresses.
func sourceCheckStack(tb testing.TB, dests int, pin bool) stack.AddressableEndpoint {
	tb.Helper()
	s := stack.New(stack.Options{NetworkProtocols: []stack.NetworkProtocolFactory{ipv4.NewProtocol}})
	tb.Cleanup(func() { s.Close(); s.Wait(); s.Destroy() })
	if err := s.CreateNIC(nicID, channel.New(16, 1500, "\x52\x55\x0a\x00\x02\x02")); err != nil {
		tb.Fatal(err)
	}
	s.SetPromiscuousMode(nicID, true)
	s.SetSpoofing(nicID, true)
	gw := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: gatewayIP, PrefixLen: 24}}
	if err := s.AddProtocolAddress(nicID, gw, stack.AddressProperties{}); err != nil {
		tb.Fatal(err)
	}
	nep, err := s.GetNetworkEndpoint(nicID, ipv4.ProtocolNumber)
	if err != nil {
		tb.Fatal(err)
	}
	ae := nep.(stack.AddressableEndpoint)
	for i := range dests {
		a := tcpip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		if ae.AcquireAssignedAddress(a, true, stack.CanBePrimaryEndpoint, false) == nil { // held, as a flow's route holds it
			tb.Fatalf("no temporary address for %s", a)
		}
	}
	if pin {
		if _, err := pinGuestSource(s, netip.MustParseAddr("10.0.2.100")); err != nil {
			tb.Fatal(err)
		}
	}
	return ae
}

// TestGuestSourcePinned checks what pinning the guest's address must
// leave as it was: the source check finds no assigned address for the
// guest, a route to the guest leaves through the NIC rather than looping
// back, and the guest's packets to the gateway are still delivered.
func TestGuestSourcePinned(t *testing.T) {
	link := channel.New(16, 1500, "\x52\x55\x0a\x00\x02\x02")
	st, err := New(Config{Link: link, Network: NewNetwork(netip.MustParsePrefix(DefaultCIDR))})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.guestPin == nil || st.guestPin.GetKind() != stack.PermanentExpired {
		t.Fatalf("guest address not pinned as expired: %v", st.guestPin)
	}
	nep, nerr := st.s.GetNetworkEndpoint(nicID, ipv4.ProtocolNumber)
	if nerr != nil {
		t.Fatal(nerr)
	}
	if ep := nep.(stack.AddressableEndpoint).AcquireAssignedAddress(guestIP, false, stack.NeverPrimaryEndpoint, true); ep != nil {
		t.Errorf("source check finds the guest's address assigned (%v): the stack would take the guest's packets as its own", ep.GetKind())
	}
	r, rerr := st.s.FindRoute(nicID, gatewayIP, guestIP, ipv4.ProtocolNumber, false)
	if rerr != nil {
		t.Fatalf("route to the guest: %s", rerr)
	}
	defer r.Release()
	if r.Loop()&stack.PacketLoop != 0 || r.NICID() != nicID {
		t.Errorf("route to the guest loops back (loop %v, NIC %d)", r.Loop(), r.NICID())
	}

	// A SYN from the guest to a closed gateway port is answered (with a
	// RST) toward the guest: delivered, and answered through the link.
	g := &tcpGuest{t: t, ep: link, srcPort: 40000, dstPort: 9}
	g.send(header.TCPFlagSyn, 1000, 0)
	if seg := g.recv(2 * time.Second); seg == nil {
		t.Fatal("no answer to the guest's SYN")
	}
}

// TestGuestSourceCheckWithDestinations checks that the guest's address
// stays unassigned in the source check however many destinations the
// table holds, and that pinning it did not disturb those.
func TestGuestSourceCheckWithDestinations(t *testing.T) {
	ae := sourceCheckStack(t, 1000, true)
	guest := tcpip.AddrFrom4([4]byte{10, 0, 2, 100})
	if ep := ae.AcquireAssignedAddress(guest, false, stack.NeverPrimaryEndpoint, true); ep != nil {
		t.Errorf("guest address found assigned: %v", ep.GetKind())
	}
	dest := tcpip.AddrFrom4([4]byte{198, 18, 3, 7})
	if ep := ae.AcquireAssignedAddress(dest, false, stack.NeverPrimaryEndpoint, true); ep == nil || ep.GetKind() != stack.Temporary {
		t.Errorf("destination %s lost its temporary address: %v", dest, ep)
	}
}

// BenchmarkSourceCheck measures the lookup gVisor's IPv4 endpoint makes of
// every packet's source address, the guest's, while the table holds a
// temporary address for each of the guest's destinations: pinned, it is a
// map hit; unpinned, a walk of the table.
func BenchmarkSourceCheck(b *testing.B) {
	guest := tcpip.AddrFrom4([4]byte{10, 0, 2, 100})
	for _, dests := range []int{0, 100, 1000} {
		for _, pin := range []bool{false, true} {
			b.Run(fmt.Sprintf("dests=%d/pinned=%v", dests, pin), func(b *testing.B) {
				ae := sourceCheckStack(b, dests, pin)
				for b.Loop() {
					if ae.AcquireAssignedAddress(guest, false, stack.NeverPrimaryEndpoint, true) != nil {
						b.Fatal("guest address assigned")
					}
				}
			})
		}
	}
}
