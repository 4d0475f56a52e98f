package integration

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/ferrynet/ferry/integration/nstest"
)

// ferryMAC is ferry's side of the TAP for the default network.
var ferryMAC = net.HardwareAddr{0x52, 0x55, 10, 0, 2, 2}

// rawTAP writes frames straight into the guest's tap0, as a hostile guest
// with a packet socket can.
type rawTAP struct {
	fd  int
	ifi int
	mac net.HardwareAddr
}

func openRawTAP(t *testing.T, w *world) *rawTAP {
	t.Helper()
	var r rawTAP
	err := inGuestNetns(w.guest.NetnsPath, func() {
		ifi, err := net.InterfaceByName("tap0")
		if err != nil {
			t.Error(err)
			return
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Error(err)
			return
		}
		r = rawTAP{fd: fd, ifi: ifi.Index, mac: ifi.HardwareAddr}
	})
	if err != nil || r.fd == 0 {
		t.Fatalf("packet socket in the guest: %v", err)
	}
	t.Cleanup(func() { unix.Close(r.fd) })
	return &r
}

// send writes an IPv4 packet (or garbage) in an Ethernet frame to ferry.
func (r *rawTAP) send(payload []byte) error {
	frame := make([]byte, 14, 14+len(payload))
	copy(frame[0:6], ferryMAC)
	copy(frame[6:12], r.mac)
	binary.BigEndian.PutUint16(frame[12:], unix.ETH_P_IP)
	frame = append(frame, payload...)
	return unix.Sendto(r.fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: r.ifi, Halen: 6, Addr: [8]byte(append(append([]byte{}, ferryMAC...), 0, 0))})
}

// ipv4 builds an IPv4 packet from the guest to dst.
func ipv4(proto uint8, dst [4]byte, payload []byte, opts []byte) []byte {
	hl := header.IPv4MinimumSize + len(opts)
	b := make([]byte, hl+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: proto,
		SrcAddr: tcpip.AddrFrom4([4]byte{10, 0, 2, 100}), DstAddr: tcpip.AddrFrom4(dst), Options: header.IPv4OptionsSerializer{}})
	b[0] = 0x40 | byte(hl/4)
	copy(b[header.IPv4MinimumSize:], opts)
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[hl:], payload)
	return b
}

// syn is a TCP SYN from the guest with a valid checksum.
func syn(dst [4]byte, sport, dport uint16) []byte {
	tcp := make([]byte, header.TCPMinimumSize)
	header.TCP(tcp).Encode(&header.TCPFields{SrcPort: sport, DstPort: dport, SeqNum: rand.Uint32(), DataOffset: 20, Flags: header.TCPFlagSyn, WindowSize: 65535})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, tcpip.AddrFrom4([4]byte{10, 0, 2, 100}), tcpip.AddrFrom4(dst), uint16(len(tcp)))
	header.TCP(tcp).SetChecksum(^checksum.Checksum(tcp, xsum))
	return ipv4(uint8(header.TCPProtocolNumber), dst, tcp, nil)
}

// TestHostileGuest floods ferry with SYNs to 10,000 ports of a dead end,
// a UDP flood to random addresses and malformed frames while a transfer
// runs: the transfer completes intact, ferry stays up, its memory bounded.
func TestHostileGuest(t *testing.T) {
	w := newWorld(t, 3*time.Minute)
	dead, err := w.lab.NewNetns(w.ctx, "dead")
	if err != nil {
		t.Fatal(err)
	}
	// 172.31.211.0/24 routes into a namespace that answers nothing.
	if _, err := nstest.NewVeth(w.ctx, w.host, "172.31.211.1/24", dead, "172.31.211.254/24"); err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.MustExec(w.ctx, "ip", "netns", "exec", dead.Name, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=8"); err != nil {
		t.Fatal(err)
	}
	l, err := nstest.ListenIn(w.host.Path, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f := w.attach(t, "-c")
	baseRSS, _ := procUsage(t, f.PID())

	// The live transfer: 256 MiB guest -> host.
	const size = 256 << 20
	got := make(chan transfer, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- transfer{err: err}
			return
		}
		defer c.Close()
		got <- hashAll(c)
	}()
	c, err := nstest.DialIn(w.ctx, w.guest.NetnsPath, "tcp", fmt.Sprintf("10.0.2.2:%d", l.Addr().(*net.TCPAddr).Port))
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan transfer, 1)
	go func() {
		defer c.Close()
		sent <- sendAll(c, io.LimitReader(rand.NewChaCha8([32]byte{7}), size))
	}()

	r := openRawTAP(t, w)
	deadEnd := [4]byte{172, 31, 211, 9}
	for port := range 10000 {
		r.send(syn(deadEnd, uint16(20000+port%30000), uint16(1+port)))
	}
	for range 5000 {
		dst := [4]byte{172, 31, 211, byte(rand.IntN(200) + 2)}
		udp := make([]byte, 8+32)
		binary.BigEndian.PutUint16(udp[0:], uint16(rand.IntN(30000)+20000))
		binary.BigEndian.PutUint16(udp[2:], uint16(rand.IntN(60000)+1))
		binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
		r.send(ipv4(uint8(header.UDPProtocolNumber), dst, udp, nil))
	}
	bad := [][]byte{
		{0x45}, // truncated header
		{0x4f, 0, 0, 60, 0, 0, 0, 0, 64, 6, 0, 0},                 // header length beyond the packet
		syn(deadEnd, 1, 2)[:30],                                   // truncated TCP
		ipv4(6, deadEnd, make([]byte, 20), []byte{0x44, 3, 0, 0}), // bogus timestamp option
		ipv4(17, deadEnd, []byte{1, 2, 3}, nil),                   // UDP shorter than its header
	}
	corrupt := syn(deadEnd, 9, 9)
	corrupt[len(corrupt)-1] ^= 0xff // bad TCP checksum
	bad = append(bad, corrupt)
	for i := range 2000 { // fragments that never complete
		frag := ipv4(17, deadEnd, make([]byte, 64), nil)
		binary.BigEndian.PutUint16(frag[4:], uint16(i))
		binary.BigEndian.PutUint16(frag[6:], 0x2000) // more fragments, offset 0
		header.IPv4(frag).SetChecksum(0)
		header.IPv4(frag).SetChecksum(^header.IPv4(frag).CalculateChecksum())
		bad = append(bad, frag)
	}
	for _, b := range bad {
		r.send(b)
	}

	s, h := <-sent, <-got
	if s.err != nil || h.err != nil || s.n != size || h.n != size || string(s.sum) != string(h.sum) {
		t.Fatalf("transfer under attack: sent %d (%v), received %d (%v), sums equal %v", s.n, s.err, h.n, h.err, string(s.sum) == string(h.sum))
	}
	select {
	case <-f.Done():
		t.Fatalf("ferry died under attack; stderr:\n%s", f.Stderr())
	default:
	}
	rss, fds := procUsage(t, f.PID())
	t.Logf("after the floods: RSS %d KiB (baseline %d), %d fds", rss, baseRSS, fds)
	if rss > baseRSS+256<<10 {
		t.Errorf("RSS grew by %d MiB under attack", (rss-baseRSS)>>10)
	}
	// And ferry still opens new flows.
	l2, err := nstest.ListenIn(w.host.Path, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, l2)
	if err := dialGuest(w, fmt.Sprintf("10.0.2.2:%d", l2.Addr().(*net.TCPAddr).Port)); err != nil {
		t.Errorf("new flow after the floods: %v", err)
	}
}
