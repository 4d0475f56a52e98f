package stack

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// dhcpRequest builds a client message of type typ with the given options.
func dhcpRequestBytes(typ byte, hw byte, opts ...byte) []byte {
	b := make([]byte, dhcpMinLen)
	b[0], b[1], b[2] = 1, 1, 6
	binary.BigEndian.PutUint32(b[4:], 0xabcd1234)
	b[28] = hw
	copy(b[236:], dhcpMagic[:])
	b = append(b, optMsgType, 1, typ)
	b = append(b, opts...)
	return append(b, optEnd)
}

// replyOptions returns the options of a server reply by code.
func replyOptions(t *testing.T, b []byte) map[byte][]byte {
	t.Helper()
	out := map[byte][]byte{}
	for o := b[dhcpMinLen:]; len(o) > 0 && o[0] != optEnd; o = o[2+int(o[1]):] {
		out[o[0]] = o[2 : 2+int(o[1])]
	}
	return out
}

func TestDHCPLeases(t *testing.T) {
	n := NewNetwork(netip.MustParsePrefix("10.0.2.0/24"))
	s := newDHCPServer(n, true)
	req, err := parseDHCP(dhcpRequestBytes(dhcpDiscover, 1))
	if err != nil {
		t.Fatal(err)
	}
	offer := s.reply(req)
	if offer[0] != 2 || binary.BigEndian.Uint32(offer[4:]) != 0xabcd1234 {
		t.Fatalf("offer is not a BOOTREPLY with the request's xid")
	}
	if got := netip.AddrFrom4([4]byte(offer[16:20])); got.String() != "10.0.2.15" {
		t.Errorf("offered %s, want 10.0.2.15", got)
	}
	o := replyOptions(t, offer)
	if o[optMsgType][0] != dhcpOffer || netip.AddrFrom4([4]byte(o[optServerID])).String() != "10.0.2.2" ||
		binary.BigEndian.Uint32(o[optLeaseTime]) != 86400 || netip.AddrFrom4([4]byte(o[optDNS])).String() != "10.0.2.3" ||
		netip.AddrFrom4([4]byte(o[optSubnetMask])).String() != "255.255.255.0" {
		t.Errorf("offer options: %v", o)
	}
	// The same client asks for its address: ACK; a second client gets the next.
	ack := s.reply(mustParseDHCP(t, dhcpRequestBytes(dhcpRequest, 1, optRequestedIP, 4, 10, 0, 2, 15, optServerID, 4, 10, 0, 2, 2)))
	if replyOptions(t, ack)[optMsgType][0] != dhcpAck {
		t.Errorf("request for the offered address was not ACKed")
	}
	second := s.reply(mustParseDHCP(t, dhcpRequestBytes(dhcpDiscover, 2)))
	if got := netip.AddrFrom4([4]byte(second[16:20])); got.String() != "10.0.2.16" {
		t.Errorf("second client offered %s, want 10.0.2.16", got)
	}
	// Asking for another client's address is refused.
	nak := s.reply(mustParseDHCP(t, dhcpRequestBytes(dhcpRequest, 3, optRequestedIP, 4, 10, 0, 2, 15)))
	if replyOptions(t, nak)[optMsgType][0] != dhcpNak {
		t.Errorf("request for a taken address was not NAKed")
	}
	// The pool ends at +30.
	for hw := byte(10); hw < 40; hw++ {
		s.reply(mustParseDHCP(t, dhcpRequestBytes(dhcpDiscover, hw)))
	}
	if r := s.reply(mustParseDHCP(t, dhcpRequestBytes(dhcpDiscover, 99))); r != nil {
		t.Errorf("offer beyond the pool: %v", netip.AddrFrom4([4]byte(r[16:20])))
	}
	if r := s.reply(mustParseDHCP(t, dhcpRequestBytes(dhcpRequest, 4, optServerID, 4, 10, 9, 9, 9))); r != nil {
		t.Errorf("answered a request meant for another server")
	}
}

func mustParseDHCP(t *testing.T, b []byte) dhcpMessage {
	t.Helper()
	m, err := parseDHCP(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func FuzzParseDHCP(f *testing.F) {
	f.Add(dhcpRequestBytes(dhcpDiscover, 1))
	f.Add(dhcpRequestBytes(dhcpRequest, 1, optRequestedIP, 4, 10, 0, 2, 15, optPad, optServerID, 4, 10, 0, 2, 2))
	f.Add([]byte{1, 1, 6})
	s := newDHCPServer(NewNetwork(netip.MustParsePrefix("10.0.2.0/24")), false)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseDHCP(b)
		if err != nil {
			return
		}
		if r := s.reply(m); r != nil && (len(r) < dhcpMinLen || r[0] != 2) {
			t.Fatalf("bad reply %x", r)
		}
	})
}
