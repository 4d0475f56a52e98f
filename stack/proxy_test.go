package stack

import (
	"context"
	"io"
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

// guestFlow returns a connected flow of an in-process gVisor stack (on a
// loopback link): the forwarder's side, as proxyTCP gets it, and the
// guest's server's side. Both are closed, and the stack destroyed, at the
// test's end.
func guestFlow(t *testing.T) (guestConn, *gonet.TCPConn) {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	t.Cleanup(func() { s.Close(); s.Wait(); s.Destroy() })
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
			accepted <- c.(*gonet.TCPConn)
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
	t.Cleanup(func() { guest.Close() })
	select {
	case srv := <-accepted:
		t.Cleanup(func() { srv.Close() })
		return guest, srv
	case <-time.After(5 * time.Second):
		t.Fatal("the guest's server accepted nothing")
	}
	return guestConn{}, nil
}

// TestProxyReplyThenClose checks the copy from a host socket into the
// guest when the host's side answers and closes at once, as a server that
// closes first does (the bench's connection-rate test): the answer and the
// FIN are both waiting when the copy first reads, and the guest must get
// the answer, then EOF. A copy that parked after a read came up short,
// taking the socket for empty, never saw the FIN.
func TestProxyReplyThenClose(t *testing.T) {
	for i := range 20 {
		guest, srv := guestFlow(t)
		peer, host := tcpPair(t)
		if _, err := peer.Write([]byte("pong")); err != nil {
			t.Fatal(err)
		}
		peer.Close()
		time.Sleep(5 * time.Millisecond) // both in host's queue before the copy starts
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			proxyTCP(ctx, host, guest)
		}()
		srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(srv)
		if err != nil || string(got) != "pong" {
			t.Fatalf("flow %d: the guest read %q, %v; want \"pong\" then EOF", i, got, err)
		}
		srv.Close()
		cancel()
		<-done
	}
}

// TestProxyEndsWhileGuestStalls checks that a published port's flow, whose
// guest has stopped reading while the client keeps sending, ends when its
// context does: closing the client's socket must not wait for the copy
// into the guest, which is waiting for room the guest will never make.
func TestProxyEndsWhileGuestStalls(t *testing.T) {
	guest, _ := guestFlow(t) // the guest's server never reads
	ep := guest.ep

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
