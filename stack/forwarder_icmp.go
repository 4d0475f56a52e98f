package stack

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// icmpKey identifies an echo flow: one guest ping session to one
// destination.
type icmpKey struct {
	guest, dst netip.Addr
	id         uint16
}

// icmpFlow is an echo flow's host socket: an unprivileged ICMP socket
// (SOCK_DGRAM, IPPROTO_ICMP or IPPROTO_ICMPV6), for which the kernel picks
// its own echo identifier; replies are translated back to the guest's.
type icmpFlow struct {
	conn     *icmp.PacketConn
	guestMAC tcpip.LinkAddress
}

// icmpFamily is what differs between ICMP and ICMPv6 echo.
type icmpFamily struct {
	network   string // for icmp.ListenPacket
	echo      uint8  // echo request type
	echoReply uint8  // echo reply type
	enabled   bool   // unprivileged sockets allowed
}

// icmpForwarder NATs the guest's echo requests through host ICMP sockets,
// so that replies carry the real round trip and TTL, and nothing is forged:
// where net.ipv4.ping_group_range forbids such sockets, requests to outside
// addresses go unanswered.
type icmpForwarder struct {
	st     *Stack
	v4, v6 icmpFamily
	mu     sync.Mutex
	flows  map[icmpKey]*icmpFlow
}

// newICMPForwarder probes for unprivileged ICMP sockets and says once when
// they are not allowed.
func newICMPForwarder(st *Stack) *icmpForwarder {
	f := &icmpForwarder{
		st:    st,
		v4:    icmpFamily{network: "udp4", echo: uint8(header.ICMPv4Echo), echoReply: uint8(header.ICMPv4EchoReply)},
		v6:    icmpFamily{network: "udp6", echo: uint8(header.ICMPv6EchoRequest), echoReply: uint8(header.ICMPv6EchoReply)},
		flows: make(map[icmpKey]*icmpFlow),
	}
	c, err := icmp.ListenPacket("udp4", "0.0.0.0")
	if err != nil {
		st.log.Warn("ping from the namespace disabled: this user may not open ICMP sockets; allow its group in net.ipv4.ping_group_range", "err", err)
		return f
	}
	c.Close()
	f.v4.enabled = true
	if st.cfg.Network.IPv6() {
		if c, err := icmp.ListenPacket("udp6", "::"); err == nil {
			c.Close()
			f.v6.enabled = true
		} else {
			st.log.Warn("IPv6 ping from the namespace disabled: cannot open ICMPv6 sockets", "err", err)
		}
	}
	return f
}

// handle4 and handle6 are the stack's ICMP and ICMPv6 handlers.
func (f *icmpForwarder) handle4(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	return f.handle(&f.v4, id, pkt)
}

func (f *icmpForwarder) handle6(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	return f.handle(&f.v6, id, pkt)
}

// handle takes the guest's echo requests for outside destinations. It
// returns false for everything else, so that gVisor answers pings to its
// own addresses and handles neighbour discovery.
func (f *icmpForwarder) handle(fam *icmpFamily, id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	h := pkt.TransportHeader().Slice()
	if len(h) < header.ICMPv4MinimumSize || h[0] != fam.echo {
		return false
	}
	dst := addrOf(id.LocalAddress)
	n := f.st.cfg.Network
	if dst == n.Gateway || dst == n.DNS || (n.IPv6() && (dst == n.Gateway6 || dst == n.DNS6)) {
		return false
	}
	target, ok := f.st.hostAddr(id.LocalAddress)
	if !ok || !fam.enabled || f.st.denied(target) {
		return true // dropped: never a forged reply
	}
	eth := header.Ethernet(pkt.LinkHeader().Slice())
	if len(eth) < header.EthernetMinimumSize {
		return true
	}
	// Both ICMP headers keep the identifier at bytes 4-5.
	key := icmpKey{guest: addrOf(id.RemoteAddress), dst: dst, id: binary.BigEndian.Uint16(h[4:6])}
	flow, err := f.flow(fam, key, eth.SourceAddress())
	if err != nil {
		f.st.log.Debug("icmp: open host socket", "err", err)
		return true
	}
	msg := make([]byte, header.ICMPv4MinimumSize+pkt.Data().Size())
	copy(msg, h[:header.ICMPv4MinimumSize])
	copy(msg[header.ICMPv4MinimumSize:], pkt.Data().AsRange().ToSlice())
	if _, err := flow.conn.WriteTo(msg, &net.UDPAddr{IP: target.AsSlice()}); err != nil {
		f.st.log.Debug("icmp: send echo", "dst", target, "err", err)
	}
	return true
}

// flow returns the flow for key, opening it on first use.
func (f *icmpForwarder) flow(fam *icmpFamily, key icmpKey, guestMAC tcpip.LinkAddress) (*icmpFlow, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl, ok := f.flows[key]; ok {
		return fl, nil
	}
	c, err := icmp.ListenPacket(fam.network, f.st.outboundAddr(key.dst.Is4()))
	if err != nil {
		return nil, err
	}
	fl := &icmpFlow{conn: c, guestMAC: guestMAC}
	f.flows[key] = fl
	f.st.counters.icmpFlows.Add(1)
	f.st.goFlow(func() { f.relayReplies(fam, key, fl) })
	return fl, nil
}

// relayReplies writes the echo replies of one flow back to the guest until
// the flow has been idle for the UDP idle timeout or the stack closes.
func (f *icmpForwarder) relayReplies(fam *icmpFamily, key icmpKey, fl *icmpFlow) {
	defer func() {
		f.mu.Lock()
		delete(f.flows, key)
		f.mu.Unlock()
		fl.conn.Close()
		f.st.counters.icmpFlows.Add(-1)
	}()
	stop := context.AfterFunc(f.st.ctx, func() { fl.conn.Close() })
	defer stop()
	read := f.replyReader(fl.conn, key.dst.Is4())
	buf := make([]byte, maxDatagram)
	for {
		fl.conn.SetReadDeadline(time.Now().Add(f.st.cfg.UDPIdleTimeout))
		n, ttl, err := read(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				f.st.log.Debug("icmp: flow closed", "dst", key.dst, "err", err)
			}
			return
		}
		if n < header.ICMPv4MinimumSize || buf[0] != fam.echoReply {
			continue
		}
		if ttl > 1 {
			ttl-- // ferry is one more hop, like a router
		} else {
			ttl = 64
		}
		// The reply goes back with the guest's identifier, from the
		// address the guest pinged.
		reply := append([]byte(nil), buf[:n]...)
		binary.BigEndian.PutUint16(reply[4:], key.id)
		f.st.writeICMP(fl.guestMAC, key.dst, key.guest, uint8(ttl), reply)
	}
}

// replyReader returns a function reading one ICMP message and its TTL (hop
// limit), 0 when unknown.
func (f *icmpForwarder) replyReader(c *icmp.PacketConn, is4 bool) func([]byte) (int, int, error) {
	if is4 {
		p := c.IPv4PacketConn()
		_ = p.SetControlMessage(ipv4.FlagTTL, true)
		return func(b []byte) (int, int, error) {
			n, cm, _, err := p.ReadFrom(b)
			if cm == nil {
				return n, 0, err
			}
			return n, cm.TTL, err
		}
	}
	p := c.IPv6PacketConn()
	_ = p.SetControlMessage(ipv6.FlagHopLimit, true)
	return func(b []byte) (int, int, error) {
		n, cm, _, err := p.ReadFrom(b)
		if cm == nil {
			return n, 0, err
		}
		return n, cm.HopLimit, err
	}
}
