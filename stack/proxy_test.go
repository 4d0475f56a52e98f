package stack

import (
	"context"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/loopback"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// TestProxyEndsWhileGuestStalls checks that a published port's flow, whose
// guest has stopped reading while the client keeps sending, ends when its
// context does: closing the client's socket must not wait for the copy
// into the guest, which is waiting for room the guest will never make.
func TestProxyEndsWhileGuestStalls(t *testing.T) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	defer func() { s.Close(); s.Wait(); s.Destroy() }()
	if err := s.CreateNIC(1, loopback.New()); err != nil {
		t.Fatal(err)
	}
	addr := tcpip.AddrFrom4([4]byte{10, 0, 2, 100})
	if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: addr.WithPrefix()}, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: addr.WithPrefix().Subnet(), NIC: 1}})
	l, err := gonet.ListenTCP(s, tcpip.FullAddress{NIC: 1, Addr: addr, Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan *gonet.TCPConn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c.(*gonet.TCPConn) // the guest's server: it never reads
		}
	}()
	wq := new(waiter.Queue)
	ep, terr := s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, wq)
	if terr != nil {
		t.Fatal(terr)
	}
	e, ch := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&e)
	if terr := ep.Connect(tcpip.FullAddress{NIC: 1, Addr: addr, Port: 80}); terr != nil {
		if _, ok := terr.(*tcpip.ErrConnectStarted); !ok {
			t.Fatal(terr)
		}
		<-ch
	}
	wq.EventUnregister(&e)
	if terr := ep.LastError(); terr != nil {
		t.Fatal(terr)
	}
	guest := guestConn{TCPConn: gonet.NewTCPConn(wq, ep), wq: wq, ep: ep}
	defer guest.Close()
	select {
	case srv := <-accepted:
		defer srv.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the guest's server accepted nothing")
	}

	client, host := tcpPair(t)
	go func() { // the client sends until its socket is closed
		b := make([]byte, 64<<10)
		for {
			if _, err := client.Write(b); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		proxyTCP(ctx, host, guest) // the client's socket first, as a published port has it
	}()
	// Wait until the guest's side is full: the copy then waits for room.
	deadline := time.Now().Add(10 * time.Second)
	for ep.Readiness(waiter.WritableEvents) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the guest's send buffer never filled")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the flow did not end within 5s of its context: closing the client's socket waits on the stalled copy")
	}
}
