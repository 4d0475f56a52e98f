package main

// The hostile-guest row (issue 9: "a live transfer keeps its throughput
// within 20%"): ferry's TCP guest -> host throughput alone, then again while
// the guest floods ferry through its TAP with SYNs to 10,000 ports of a
// dead end, UDP to random addresses of the bench's subnets and malformed
// frames. `bench flood` is the flooder, run inside the guest (its user
// namespace gives it a packet socket on the guest's TAP, as a hostile
// guest has). Its packets go only to the bench's own namespaces: the guest
// network, the host namespace's dead-end veth subnet.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Metric keys of the hostile row.
const (
	mHostileQuiet = "hostile_quiet_gbps" // TCP guest -> host, alone
	mHostileFlood = "hostile_flood_gbps" // the same while the guest floods
	mHostileRSS   = "hostile_rss_mib"    // the helper's RSS after the flood
	// The helper's CPU per GB moved, alone and under the flood: what the
	// flood costs ferry itself.
	mHostileQuietCPU = "hostile_quiet_cpu_s_per_gb"
	mHostileFloodCPU = "hostile_flood_cpu_s_per_gb"
	// The flooder's own CPU, % of a core: on a small machine it is taken
	// from the transfer's ends.
	mHostileFlooderCPU = "hostile_flooder_cpu_pct"
	// ferry's CPU per frame of the flood alone, with no transfer, µs.
	mHostileFrameCPU = "hostile_flood_alone_cpu_us_per_frame"
	hostileGoal      = 0.80 // flood over quiet, at least
	// minHostileQuiet is the least the quiet transfer must make, Gbit/s,
	// for the ratio to mean anything.
	minHostileQuiet = 0.1
)

// floodRate is -flood-rate: SYNs and UDP datagrams a second, each, that
// the hostile guest writes.
var floodRate = 10000

// The flood's targets, all inside the bench's namespaces: the dead-end
// peer of the host namespace's only route (it answers nothing, as in
// integration/hostile_test.go, so every SYN leaves ferry a dial that fails
// late) and the two subnets: the guest network and the host's veth subnet.
var (
	floodDeadEnd = netip.MustParseAddr(deadEnd)
	floodSubnets = []netip.Prefix{netip.MustParsePrefix("10.0.2.0/24"), netip.MustParsePrefix(hostAddr).Masked()}
	floodSkip    = map[netip.Addr]bool{ // the guest itself, the host namespace itself
		netip.MustParseAddr("10.0.2.100"): true, netip.MustParsePrefix(hostAddr).Addr(): true}
)

// measureHostile measures the hostile row of a ferry tool on a fresh
// guest and helper: iperf3 guest -> host alone, then again with `bench
// flood` running in the guest from the moment iperf3's connections are up
// to past its end. It adds its metrics to m and returns its problems.
func (e *env) measureHostile(t tool, hostPort int, c config, m map[string]float64) []string {
	var problems []string
	fail := func(what string, err error) { problems = append(problems, fmt.Sprintf("hostile %s: %v", what, err)) }
	in, err := e.startInstance(t, hostPort)
	if err != nil {
		fail("start", err)
		return problems
	}
	defer in.close()
	hostIperf, err := e.start("host iperf3", e.asUser("iperf3", "-s", "-B", in.listen, "-p", strconv.Itoa(hostIperfPort)), nil, nil, nil)
	if err != nil {
		fail("iperf3 server", err)
		return problems
	}
	in.others = append(in.others, hostIperf)
	if err := waitListening(hostIperf, hostIperfPort); err != nil {
		fail("iperf3 server", err)
		return problems
	}
	hp := in.helper.pid()
	iperf := e.inGuest(in.guest, "iperf3", "-c", in.gw, "-p", strconv.Itoa(hostIperfPort), "-t", strconv.Itoa(c.Secs), "-J")
	quiet, quietCPU, err := e.iperfTCP(hp, iperf, c)
	if err != nil {
		fail("quiet", err)
		return problems
	}
	if quiet < minHostileQuiet {
		// A ratio of two near-zero figures would read as "met".
		fail("quiet", fmt.Errorf("%.3f Gbit/s alone: the transfer hardly ran", quiet))
		return problems
	}
	m[mHostileQuiet] = quiet
	m[mHostileQuietCPU] = quietCPU

	// The flooder starts once iperf3's connections are up and stops when
	// its stdin closes, after iperf3.
	var (
		flooded, floodedCPU float64
		ierr                error
	)
	fr, err := e.flood(in, []string{"-wait-port", strconv.Itoa(hostIperfPort), "-d", fmt.Sprintf("%ds", c.Secs+30)}, func() {
		flooded, floodedCPU, ierr = e.iperfTCP(hp, iperf, c)
	})
	if err != nil {
		fail("flood", err)
	} else if fr.Seconds > 0 {
		m[mHostileFlooderCPU] = 100 * fr.CPU / fr.Seconds
	}
	if ierr != nil {
		fail("under flood", ierr)
	} else {
		m[mHostileFlood] = flooded
		m[mHostileFloodCPU] = floodedCPU
	}
	m[mHostileRSS] = rssMiB(hp)
	if !in.helper.alive() {
		fail("helper", fmt.Errorf("exited under the flood: %v; stderr: %q", in.helper.cmd.ProcessState, in.helper.stderrString()))
		return problems
	}
	// The flood alone: what each of its frames costs ferry, a figure
	// that, unlike the ratio, does not hang on where the scheduler puts
	// four busy processes on a small machine.
	c0 := cpuSeconds(hp)
	alone, err := e.flood(in, []string{"-d", fmt.Sprintf("%ds", c.Secs)}, nil)
	if err != nil {
		fail("flood alone", err)
	} else if n := alone.SYN + alone.UDP + alone.Bad; n > 0 {
		m[mHostileFrameCPU] = (cpuSeconds(hp) - c0) / float64(n) * 1e6
	}
	fmt.Fprintf(os.Stderr, "bench: hostile %-18s quiet %.2f, under flood %.2f Gbit/s (%.2f); flood sent %d SYN, %d UDP, %d malformed in %.1fs (flooder CPU %.0f%% of a core); ferry %.2f -> %.2f CPU s/GB; rss %.1f MiB; flood alone %.2f µs of ferry's CPU per frame\n",
		t.Name, quiet, flooded, flooded/quiet, fr.SYN, fr.UDP, fr.Bad, fr.Seconds, m[mHostileFlooderCPU], quietCPU, floodedCPU, m[mHostileRSS], m[mHostileFrameCPU])
	return problems
}

// flood runs `bench flood` in in's guest with args, and while it runs,
// during (nil: until the flooder's -d ends); it closes the flooder's stdin,
// which stops it, when during returns.
func (e *env) flood(in *instance, args []string, during func()) (floodResult, error) {
	var fr floodResult
	var out bytes.Buffer
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return fr, err
	}
	defer stdinW.Close()
	argv := append([]string{e.self, "flood", "-dev", "tap0", "-gw", in.gw, "-rate", strconv.Itoa(floodRate)}, args...)
	p, err := e.start("flood", e.inGuest(in.guest, argv...), nil, &lockedWriter{w: &out}, stdinR)
	stdinR.Close()
	if err != nil {
		return fr, err
	}
	wait := 10 * time.Second
	if during != nil {
		during()
		stdinW.Close()
	} else {
		wait += time.Minute // -d is the flooder's to keep
	}
	select {
	case <-p.exited:
	case <-time.After(wait):
		p.kill()
	}
	if err := json.Unmarshal(out.Bytes(), &fr); err != nil {
		return fr, fmt.Errorf("output %q: %v; stderr: %q", out.Bytes(), err, p.stderrString())
	}
	if fr.Err != "" {
		return fr, errors.New(fr.Err)
	}
	return fr, nil
}

// hostileRatios adds each ferry tool's flood-over-quiet ratio of medians
// to the report's ratios.
func hostileRatios(r *report) {
	for name, s := range r.Summary {
		if q, f := s[mHostileQuiet], s[mHostileFlood]; q != nil && f != nil && q.Median > 0 {
			r.Ratios[name+" hostile flood/quiet"] = f.Median / q.Median
		}
	}
}

// hostileMarkdown is the hostile row's paragraph of the report.
func hostileMarkdown(r *report) string {
	var b strings.Builder
	for _, t := range r.Tools {
		q, ok := r.Ratios[t.Name+" hostile flood/quiet"]
		if !ok {
			continue
		}
		if b.Len() == 0 {
			fmt.Fprintf(&b, "Hostile guest (issue 9): TCP guest→host alone, then while the guest floods ferry through its TAP with "+
				"SYNs to 10,000 ports of a dead end, UDP to random addresses of the bench's subnets and malformed frames, "+
				"%d packets/s of each of the first two and a fifth of that malformed (`bench flood`, in the guest), on a fresh guest and helper; "+
				"on a small machine the flooder and ferry's work for it share the CPUs with iperf3 (the flooder's own CPU and ferry's CPU per GB alone and under the flood are in the table, and so is ferry's CPU per frame of the flood alone, with no transfer, which does not depend on where the scheduler puts them).\n\n", r.Flood)
		}
		verdict := "met"
		if q < hostileGoal {
			verdict = "NOT met"
		}
		s := r.Summary[t.Name]
		fmt.Fprintf(&b, "- %s: %s Gbit/s alone, %s under flood (medians): %.2f× (goal ≥ %.2f: %s); RSS after the flood %s MiB\n",
			t.Name, num(s[mHostileQuiet].Median), num(s[mHostileFlood].Median), q, hostileGoal, verdict, num(statMedian(s[mHostileRSS])))
	}
	if b.Len() > 0 {
		b.WriteString("\n")
	}
	return b.String()
}

func statMedian(s *stat) float64 {
	if s == nil {
		return 0
	}
	return s.Median
}

// floodResult is what `bench flood` prints.
type floodResult struct {
	SYN     int     `json:"syn"`
	UDP     int     `json:"udp"`
	Bad     int     `json:"malformed"`
	Errors  int     `json:"send_errors"`
	Seconds float64 `json:"seconds"`
	CPU     float64 `json:"cpu_seconds"` // the flooder's own CPU time
	Err     string  `json:"error,omitempty"`
}

// floodMain is `bench flood`, run in a guest: once -wait-conns TCP
// connections to -wait-port are established (the live transfer), it
// writes, until its stdin closes or for -d, -rate SYNs a second to the dead end's ports 1-10,000,
// -rate UDP datagrams a second to random addresses and ports of the
// bench's subnets, and -rate/5 malformed frames a second, straight into
// the TAP, then prints a floodResult.
func floodMain(args []string) error {
	fs := flag.NewFlagSet("flood", flag.ExitOnError)
	dev := fs.String("dev", "tap0", "the guest's interface to the helper")
	gw := fs.String("gw", "10.0.2.2", "the gateway, whose MAC the frames go to")
	src := fs.String("src", "10.0.2.100", "the guest's address, the packets' source")
	waitPort := fs.Int("wait-port", 0, "wait for established connections to this port first (0: don't)")
	waitConns := fs.Int("wait-conns", 2, "how many (iperf3: control and data)")
	d := fs.Duration("d", 5*time.Second, "how long to flood")
	rate := fs.Int("rate", 10000, "SYNs and UDP datagrams a second, each")
	fs.Parse(args)
	runtime.GOMAXPROCS(1) // one thread sends; see the sleep in flood
	res := floodResult{}
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	err := flood(*dev, *gw, *src, *waitPort, *waitConns, *d, *rate, stop, &res)
	if err != nil {
		res.Err = err.Error()
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func flood(dev, gw, src string, waitPort, waitConns int, d time.Duration, rate int, stop <-chan struct{}, res *floodResult) error {
	ifi, err := net.InterfaceByName(dev)
	if err != nil {
		return err
	}
	srcAddr, err := netip.ParseAddr(src)
	if err != nil {
		return err
	}
	gwMAC := neighbourMAC(gw)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	// Bound to the TAP with protocol 0: it sends there and receives nothing.
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifi.Index}); err != nil {
		return fmt.Errorf("bind packet socket to %s: %w", dev, err)
	}
	if waitPort > 0 {
		if err := waitEstablished(waitPort, waitConns, 10*time.Second); err != nil {
			return err
		}
	}

	bad := malformed(srcAddr)
	const tick = 2 * time.Millisecond
	perTick := max(1, rate*int(tick/time.Microsecond)/1e6)
	b := newFrameBatch(gwMAC, ifi.HardwareAddr, 2*perTick+max(1, perTick/5))
	start := time.Now()
	var port, fragID uint16
	nBad := 0
	for next := start; time.Since(start) < d; {
		b.reset()
		for range perTick {
			port = port%10000 + 1
			b.add(tcpSYN(srcAddr, floodDeadEnd, 20000+port, port), &res.SYN)
			dst := floodSubnets[rand.IntN(len(floodSubnets))]
			a := randomIn(dst)
			for floodSkip[a] {
				a = randomIn(dst)
			}
			b.add(udpPacket(srcAddr, a, uint16(20000+rand.IntN(30000)), uint16(1+rand.IntN(60000)), 32), &res.UDP)
		}
		for range max(1, perTick/5) {
			m := bad[nBad%len(bad)]
			nBad++
			if m == nil { // a first fragment that never completes, a new one each time
				fragID++
				m = fragment(srcAddr, floodDeadEnd, fragID)
			}
			b.add(m, &res.Bad)
		}
		res.Errors += b.send(fd)
		next = next.Add(tick)
		select {
		case <-stop:
			res.Seconds = time.Since(start).Seconds()
			res.CPU = cpuSelf()
			return nil
		default:
		}
		if wait := time.Until(next); wait > 0 {
			// A raw sleep: a Go timer, or a sleep the scheduler knows
			// of, wakes the runtime's other threads every tick (sysmon
			// hands the P on), and on a small machine the flooder's
			// CPU is taken from the transfer it disturbs.
			ts := unix.NsecToTimespec(int64(wait))
			unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
		}
	}
	res.Seconds = time.Since(start).Seconds()
	res.CPU = cpuSelf()
	return nil
}

// frameBatch is one tick's frames, sent with one sendmmsg: the flooder's
// own CPU, which on a small machine is taken from the transfer it tries to
// disturb, is then mostly the kernel's work of queueing the frames, not a
// syscall per frame. Each message gathers the Ethernet header and a packet.
type frameBatch struct {
	eth    [14]byte
	pkts   [][]byte
	counts []*int // the result counter of each packet
	msgs   []unix.Mmsghdr
	iovs   []unix.Iovec // two per message: eth, then the packet
}

func newFrameBatch(dstMAC, srcMAC net.HardwareAddr, n int) *frameBatch {
	b := &frameBatch{msgs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, 2*n)}
	copy(b.eth[0:6], dstMAC)
	copy(b.eth[6:12], srcMAC)
	binary.BigEndian.PutUint16(b.eth[12:], unix.ETH_P_IP)
	return b
}

func (b *frameBatch) reset() { b.pkts, b.counts = b.pkts[:0], b.counts[:0] }

// add queues a frame carrying pkt, counted in *n once sent.
func (b *frameBatch) add(pkt []byte, n *int) {
	b.pkts = append(b.pkts, pkt)
	b.counts = append(b.counts, n)
}

// send sends the queued frames, counting each sent one, and returns how
// many failed.
func (b *frameBatch) send(fd int) (failed int) {
	for i := 0; i < len(b.pkts); {
		k := 0
		for ; i+k < len(b.pkts) && k < len(b.msgs); k++ {
			iov := b.iovs[2*k : 2*k+2]
			iov[0] = unix.Iovec{Base: &b.eth[0]}
			iov[0].SetLen(len(b.eth))
			p := b.pkts[i+k]
			iov[1] = unix.Iovec{Base: &p[0]}
			iov[1].SetLen(len(p))
			b.msgs[k] = unix.Mmsghdr{Hdr: unix.Msghdr{Iov: &iov[0], Iovlen: 2}}
		}
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msgs[0])), uintptr(k), 0, 0, 0)
		sent := int(r)
		if e != 0 {
			sent = 0
		}
		for j := range sent {
			*b.counts[i+j]++
		}
		if sent == 0 {
			// The frame at i failed (a full queue): count it, go on.
			failed++
			sent = 1
		}
		i += sent
	}
	return failed
}

// cpuSelf is the CPU time this process used, in seconds.
func cpuSelf() float64 {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// malformed is the malformed frames' rota (nil: an incomplete fragment).
func malformed(src netip.Addr) [][]byte {
	corrupt := tcpSYN(src, floodDeadEnd, 9, 9)
	corrupt[len(corrupt)-1] ^= 0xff // bad TCP checksum
	return [][]byte{
		{0x45}, // truncated header
		{0x4f, 0, 0, 60, 0, 0, 0, 0, 64, 6, 0, 0},                                    // header length beyond the packet
		tcpSYN(src, floodDeadEnd, 1, 2)[:30],                                         // truncated TCP
		ipv4Packet(6, src, floodDeadEnd, make([]byte, 20), []byte{0x44, 3, 0, 0}, 0), // bogus timestamp option
		ipv4Packet(17, src, floodDeadEnd, []byte{1, 2, 3}, nil, 0),                   // UDP shorter than its header
		corrupt,
		nil, nil, nil, nil,
	}
}

// waitEstablished waits until this network namespace has n established TCP
// connections to remote port port.
func waitEstablished(port, n int, timeout time.Duration) error {
	hexPort := fmt.Sprintf(":%04X", port)
	deadline := time.Now().Add(timeout)
	for {
		count := 0
		for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
			fh, err := os.Open(f)
			if err != nil {
				continue
			}
			sc := bufio.NewScanner(fh)
			for sc.Scan() {
				fl := strings.Fields(sc.Text())
				if len(fl) > 3 && strings.HasSuffix(fl[2], hexPort) && fl[3] == "01" {
					count++
				}
			}
			fh.Close()
		}
		if count >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d established connections to port %d after %v, want %d", count, port, timeout, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// neighbourMAC is ip's MAC from the ARP table, or ferry's default
// gateway MAC (52:55:0a:00:02:02).
func neighbourMAC(ip string) net.HardwareAddr {
	if b, err := os.ReadFile("/proc/net/arp"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 4 && f[0] == ip {
				if mac, err := net.ParseMAC(f[3]); err == nil && mac.String() != "00:00:00:00:00:00" {
					return mac
				}
			}
		}
	}
	return net.HardwareAddr{0x52, 0x55, 10, 0, 2, 2}
}

func randomIn(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	host := uint32(1 + rand.IntN(1<<(32-p.Bits())-2)) // neither network nor broadcast
	v := binary.BigEndian.Uint32(a[:]) | host
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}

// ipv4Packet builds an IPv4 packet (flags and fragment offset frag) with a
// valid header checksum.
func ipv4Packet(proto uint8, src, dst netip.Addr, payload, opts []byte, frag uint16) []byte {
	hl := 20 + len(opts)
	b := make([]byte, hl+len(payload))
	b[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[6:], frag)
	b[8], b[9] = 64, proto
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	copy(b[20:], opts)
	binary.BigEndian.PutUint16(b[10:], ^csum(b[:hl], 0))
	copy(b[hl:], payload)
	return b
}

// tcpSYN is a SYN with valid checksums.
func tcpSYN(src, dst netip.Addr, sport, dport uint16) []byte {
	t := make([]byte, 20)
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], rand.Uint32())
	t[12], t[13] = 5<<4, 0x02
	binary.BigEndian.PutUint16(t[14:], 65535)
	binary.BigEndian.PutUint16(t[16:], ^csum(t, pseudo(src, dst, 6, len(t))))
	return ipv4Packet(6, src, dst, t, nil, 0)
}

// udpPacket is a UDP datagram of n zero bytes (no UDP checksum, allowed
// over IPv4).
func udpPacket(src, dst netip.Addr, sport, dport uint16, n int) []byte {
	u := make([]byte, 8+n)
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	return ipv4Packet(17, src, dst, u, nil, 0)
}

// fragment is the first fragment of a UDP datagram whose rest never comes.
func fragment(src, dst netip.Addr, id uint16) []byte {
	b := ipv4Packet(17, src, dst, make([]byte, 64), nil, 0x2000) // more fragments, offset 0
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[10:], 0)
	binary.BigEndian.PutUint16(b[10:], ^csum(b[:20], 0))
	return b
}

// pseudo is the TCP/UDP pseudo-header's sum.
func pseudo(src, dst netip.Addr, proto uint8, n int) uint32 {
	s, d := src.As4(), dst.As4()
	var p [12]byte
	copy(p[0:], s[:])
	copy(p[4:], d[:])
	p[9] = proto
	binary.BigEndian.PutUint16(p[10:], uint16(n))
	return uint32(csum(p[:], 0))
}

// csum is the Internet checksum's folded one's complement sum of b,
// added to initial; the checksum field takes its complement.
func csum(b []byte, initial uint32) uint16 {
	sum := initial
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
