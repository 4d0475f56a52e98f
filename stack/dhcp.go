package stack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// DHCP, as slirp4netns serves it: a pool of network+15 to network+30, leases
// of a day, offered from the gateway (RFC 2131, RFC 2132).
const (
	dhcpPoolFirst = 15
	dhcpPoolLast  = 30
	dhcpLease     = 86400 // seconds

	dhcpServerPort = 67
	dhcpClientPort = 68
	dhcpMinLen     = 240 // fixed BOOTP fields and the magic cookie

	dhcpDiscover = 1
	dhcpOffer    = 2
	dhcpRequest  = 3
	dhcpAck      = 5
	dhcpNak      = 6
	dhcpRelease  = 7

	optSubnetMask  = 1
	optRouter      = 3
	optDNS         = 6
	optRequestedIP = 50
	optLeaseTime   = 51
	optMsgType     = 53
	optServerID    = 54
	optEnd         = 255
	optPad         = 0
)

var dhcpMagic = [4]byte{99, 130, 83, 99}

// DHCPPoolStart and DHCPPoolEnd are the first and last addresses the DHCP
// server hands out on n.
func DHCPPoolStart(n Network) netip.Addr { return addrAdd(n.Prefix.Addr(), dhcpPoolFirst) }

// DHCPPoolEnd is the last address of the DHCP pool; see DHCPPoolStart.
func DHCPPoolEnd(n Network) netip.Addr { return addrAdd(n.Prefix.Addr(), dhcpPoolLast) }

// dhcpMessage is the part of a DHCP request the server looks at.
type dhcpMessage struct {
	xid         uint32
	flags       uint16
	chaddr      [16]byte
	msgType     byte
	requestedIP netip.Addr
	serverID    netip.Addr
}

// parseDHCP parses a client's BOOTREQUEST. It never panics.
func parseDHCP(b []byte) (dhcpMessage, error) {
	var m dhcpMessage
	if len(b) < dhcpMinLen {
		return m, errors.New("dhcp: message too short")
	}
	if b[0] != 1 || b[1] != 1 || b[2] != 6 {
		return m, errors.New("dhcp: not an Ethernet BOOTREQUEST")
	}
	if [4]byte(b[236:240]) != dhcpMagic {
		return m, errors.New("dhcp: no magic cookie")
	}
	m.xid = binary.BigEndian.Uint32(b[4:8])
	m.flags = binary.BigEndian.Uint16(b[10:12])
	copy(m.chaddr[:], b[28:44])
	for opts := b[dhcpMinLen:]; len(opts) > 0; {
		code := opts[0]
		if code == optEnd {
			break
		}
		if code == optPad {
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || len(opts) < 2+int(opts[1]) {
			return m, errors.New("dhcp: truncated option")
		}
		val := opts[2 : 2+int(opts[1])]
		switch {
		case code == optMsgType && len(val) == 1:
			m.msgType = val[0]
		case code == optRequestedIP && len(val) == 4:
			m.requestedIP = netip.AddrFrom4([4]byte(val))
		case code == optServerID && len(val) == 4:
			m.serverID = netip.AddrFrom4([4]byte(val))
		}
		opts = opts[2+len(val):]
	}
	if m.msgType == 0 {
		return m, errors.New("dhcp: no message type")
	}
	return m, nil
}

// dhcpServer hands out the pool's addresses by client hardware address.
type dhcpServer struct {
	net  Network
	dns  bool // offer the DNS forwarder
	mu   sync.Mutex
	byHW map[[16]byte]netip.Addr
}

func newDHCPServer(n Network, dns bool) *dhcpServer {
	return &dhcpServer{net: n, dns: dns, byHW: make(map[[16]byte]netip.Addr)}
}

// lease returns the address for a client, allocating one when want is not
// usable; ok is false when the pool is exhausted.
func (s *dhcpServer) lease(hw [16]byte, want netip.Addr) (netip.Addr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.byHW[hw]; ok {
		return a, true
	}
	taken := make(map[netip.Addr]bool, len(s.byHW))
	for _, a := range s.byHW {
		taken[a] = true
	}
	first, last := DHCPPoolStart(s.net), DHCPPoolEnd(s.net)
	if want.Is4() && !taken[want] && first.Compare(want) <= 0 && want.Compare(last) <= 0 {
		s.byHW[hw] = want
		return want, true
	}
	for a := first; a.Compare(last) <= 0; a = a.Next() {
		if !taken[a] {
			s.byHW[hw] = a
			return a, true
		}
	}
	return netip.Addr{}, false
}

// reply builds the answer to a request, or nil when there is none.
func (s *dhcpServer) reply(req dhcpMessage) []byte {
	var typ byte
	var yiaddr netip.Addr
	switch req.msgType {
	case dhcpDiscover:
		a, ok := s.lease(req.chaddr, req.requestedIP)
		if !ok {
			return nil
		}
		typ, yiaddr = dhcpOffer, a
	case dhcpRequest:
		if req.serverID.IsValid() && req.serverID != s.net.Gateway {
			return nil // the client chose another server
		}
		a, ok := s.lease(req.chaddr, req.requestedIP)
		if !ok || (req.requestedIP.IsValid() && req.requestedIP != a) {
			typ = dhcpNak
		} else {
			typ, yiaddr = dhcpAck, a
		}
	case dhcpRelease:
		s.mu.Lock()
		delete(s.byHW, req.chaddr)
		s.mu.Unlock()
		return nil
	default:
		return nil
	}
	b := make([]byte, dhcpMinLen, 300)
	b[0], b[1], b[2] = 2, 1, 6 // BOOTREPLY, Ethernet
	binary.BigEndian.PutUint32(b[4:], req.xid)
	binary.BigEndian.PutUint16(b[10:], req.flags)
	if yiaddr.IsValid() {
		copy(b[16:20], yiaddr.AsSlice())
	}
	gw := s.net.Gateway.AsSlice()
	copy(b[20:24], gw)
	copy(b[28:44], req.chaddr[:])
	copy(b[236:240], dhcpMagic[:])
	b = append(b, optMsgType, 1, typ, optServerID, 4)
	b = append(b, gw...)
	if typ != dhcpNak {
		b = append(b, optLeaseTime, 4)
		b = binary.BigEndian.AppendUint32(b, dhcpLease)
		mask := netipMask(s.net.Prefix.Bits())
		b = append(b, optSubnetMask, 4)
		b = append(b, mask[:]...)
		b = append(b, optRouter, 4)
		b = append(b, gw...)
		if s.dns {
			b = append(b, optDNS, 4)
			b = append(b, s.net.DNS.AsSlice()...)
		}
	}
	return append(b, optEnd)
}

// netipMask is the IPv4 netmask of a prefix length.
func netipMask(bits int) [4]byte {
	var m [4]byte
	binary.BigEndian.PutUint32(m[:], ^uint32(0)<<(32-bits))
	return m
}

// serveDHCP answers DHCP on port 67 of the stack until it closes. Replies
// are broadcast, which every client accepts before it has an address.
func (st *Stack) serveDHCP() error {
	var wq waiter.Queue
	ep, tcpErr := st.s.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if tcpErr != nil {
		return fmt.Errorf("DHCP server: %s", tcpErr)
	}
	ep.SocketOptions().SetBroadcast(true)
	if tcpErr := ep.Bind(tcpip.FullAddress{NIC: nicID, Port: dhcpServerPort}); tcpErr != nil {
		ep.Close()
		return fmt.Errorf("DHCP server: bind port %d: %s", dhcpServerPort, tcpErr)
	}
	pc := gonet.NewUDPConn(&wq, ep)
	st.closers = append(st.closers, pc.Close)
	srv := newDHCPServer(st.cfg.Network, !st.cfg.DisableDNS)
	st.goFlow(func() {
		buf := make([]byte, 1500)
		bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpClientPort}
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			req, err := parseDHCP(buf[:n])
			if err != nil {
				st.log.Debug("dhcp: bad request", "err", err)
				continue
			}
			if r := srv.reply(req); r != nil {
				pc.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := pc.WriteTo(r, bcast); err != nil {
					st.log.Debug("dhcp: reply", "err", err)
				}
			}
		}
	})
	return nil
}
