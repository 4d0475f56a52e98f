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
// (SOCK_DGRAM, IPPROTO_ICMP), for which the kernel picks its own echo
// identifier; replies are translated back to the guest's.
type icmpFlow struct {
	conn     *icmp.PacketConn
	guestMAC tcpip.LinkAddress
}

// icmpForwarder NATs the guest's echo requests through host ICMP sockets,
// so that replies carry the real round trip and TTL, and nothing is forged:
// where net.ipv4.ping_group_range forbids such sockets, requests to outside
// addresses go unanswered.
type icmpForwarder struct {
	st      *Stack
	enabled bool
	mu      sync.Mutex
	flows   map[icmpKey]*icmpFlow
}

// newICMPForwarder probes for unprivileged ICMP sockets and says once when
// they are not allowed.
func newICMPForwarder(st *Stack) *icmpForwarder {
	f := &icmpForwarder{st: st, flows: make(map[icmpKey]*icmpFlow)}
	c, err := icmp.ListenPacket("udp4", "0.0.0.0")
	if err != nil {
		st.log.Warn("ping from the namespace disabled: this user may not open ICMP sockets; allow its group in net.ipv4.ping_group_range", "err", err)
		return f
	}
	c.Close()
	f.enabled = true
	return f
}

// handle takes the guest's echo requests for outside destinations. It
// returns false for everything else, so that gVisor answers pings to its
// own addresses.
func (f *icmpForwarder) handle(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	h := header.ICMPv4(pkt.TransportHeader().Slice())
	if len(h) < header.ICMPv4MinimumSize || h.Type() != header.ICMPv4Echo {
		return false
	}
	n := f.st.cfg.Network
	dst := addrOf(id.LocalAddress)
	if dst == n.Gateway || dst == n.DNS {
		return false
	}
	target, ok := f.st.hostAddr(id.LocalAddress)
	if !ok || !f.enabled {
		return true // dropped: never a forged reply
	}
	eth := header.Ethernet(pkt.LinkHeader().Slice())
	if len(eth) < header.EthernetMinimumSize {
		return true
	}
	key := icmpKey{guest: addrOf(id.RemoteAddress), dst: dst, id: h.Ident()}
	flow, err := f.flow(key, eth.SourceAddress())
	if err != nil {
		f.st.log.Debug("icmp: open host socket", "err", err)
		return true
	}
	msg := make([]byte, header.ICMPv4MinimumSize+pkt.Data().Size())
	copy(msg, h[:header.ICMPv4MinimumSize])
	copy(msg[header.ICMPv4MinimumSize:], pkt.Data().AsRange().ToSlice())
	header.ICMPv4(msg).SetChecksum(0) // the kernel sets identifier and checksum
	if _, err := flow.conn.WriteTo(msg, &net.UDPAddr{IP: target.AsSlice()}); err != nil {
		f.st.log.Debug("icmp: send echo", "dst", target, "err", err)
	}
	return true
}

// flow returns the flow for key, opening it on first use.
func (f *icmpForwarder) flow(key icmpKey, guestMAC tcpip.LinkAddress) (*icmpFlow, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl, ok := f.flows[key]; ok {
		return fl, nil
	}
	c, err := icmp.ListenPacket("udp4", f.st.outboundAddr4())
	if err != nil {
		return nil, err
	}
	fl := &icmpFlow{conn: c, guestMAC: guestMAC}
	f.flows[key] = fl
	f.st.goFlow(func() { f.relayReplies(key, fl) })
	return fl, nil
}

// relayReplies writes the echo replies of one flow back to the guest until
// the flow has been idle for the UDP idle timeout or the stack closes.
func (f *icmpForwarder) relayReplies(key icmpKey, fl *icmpFlow) {
	defer func() {
		f.mu.Lock()
		delete(f.flows, key)
		f.mu.Unlock()
		fl.conn.Close()
	}()
	stop := context.AfterFunc(f.st.ctx, func() { fl.conn.Close() })
	defer stop()
	p := fl.conn.IPv4PacketConn()
	_ = p.SetControlMessage(ipv4.FlagTTL, true)
	buf := make([]byte, maxDatagram)
	for {
		fl.conn.SetReadDeadline(time.Now().Add(f.st.cfg.UDPIdleTimeout))
		n, cm, _, err := p.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				f.st.log.Debug("icmp: flow closed", "dst", key.dst, "err", err)
			}
			return
		}
		msg := header.ICMPv4(buf[:n])
		if n < header.ICMPv4MinimumSize || msg.Type() != header.ICMPv4EchoReply {
			continue
		}
		ttl := 64
		if cm != nil && cm.TTL > 1 {
			ttl = cm.TTL - 1 // ferry is one more hop, like a router
		}
		// The reply goes back with the guest's identifier, from the
		// address the guest pinged.
		reply := make([]byte, n)
		copy(reply, msg)
		binary.BigEndian.PutUint16(reply[4:], key.id)
		f.st.writeIPv4(fl.guestMAC, key.dst, key.guest, uint8(ttl), reply)
	}
}
