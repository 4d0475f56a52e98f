package stack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// dnsTestTimeout bounds every wait in the DNS tests.
const dnsTestTimeout = 5 * time.Second

// dnsBigCount is the number of A records in answers for big.example. and
// untruncated.example., more than fit in 512 bytes.
const dnsBigCount = 60

// fakeDNSUpstream is a DNS server on loopback, over UDP and TCP, with a
// small fixed zone. It records the ID of each query it receives.
type fakeDNSUpstream struct {
	udpAddr, tcpAddr string

	mu  sync.Mutex
	ids map[string][]uint16 // query IDs seen, by "proto name"
}

// startFakeDNSUpstream starts a fakeDNSUpstream, stopped when t ends. It
// answers:
//
//   - a.example.: A 1.2.3.4 and AAAA 2001:db8::1;
//   - missing.example.: NXDOMAIN;
//   - big.example.: dnsBigCount A records, truncated over UDP to the size
//     the query allows, as real servers do;
//   - untruncated.example.: like big.example. but never truncated;
//   - slow.example.: A 1.2.3.4 after a second.
func startFakeDNSUpstream(t *testing.T) *fakeDNSUpstream {
	t.Helper()
	u := &fakeDNSUpstream{ids: make(map[string][]uint16)}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	u.udpAddr, u.tcpAddr = pc.LocalAddr().String(), l.Addr().String()
	startDNSTestServer(t, &dns.Server{PacketConn: pc, Handler: u, UDPSize: dns.MaxMsgSize})
	startDNSTestServer(t, &dns.Server{Listener: l, Handler: u})
	return u
}

// startDNSTestServer runs srv until t ends.
func startDNSTestServer(t *testing.T, srv *dns.Server) {
	t.Helper()
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 1)
	go func() { errc <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-errc:
		t.Fatalf("fake upstream: %v", err)
	case <-time.After(dnsTestTimeout):
		t.Fatal("fake upstream did not start")
	}
	t.Cleanup(func() { srv.Shutdown() })
}

// ServeDNS implements dns.Handler.
func (u *fakeDNSUpstream) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if len(r.Question) == 0 {
		return
	}
	proto := w.LocalAddr().Network()
	q := r.Question[0]
	u.mu.Lock()
	key := proto + " " + q.Name
	u.ids[key] = append(u.ids[key], r.Id)
	u.mu.Unlock()

	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 60}
	switch {
	case q.Name == "a.example." && q.Qtype == dns.TypeA:
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(1, 2, 3, 4)})
	case q.Name == "a.example." && q.Qtype == dns.TypeAAAA:
		m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.ParseIP("2001:db8::1")})
	case q.Name == "slow.example.":
		time.Sleep(time.Second)
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(1, 2, 3, 4)})
	case q.Name == "big.example." || q.Name == "untruncated.example.":
		for i := range dnsBigCount {
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(10, 0, 0, byte(i))})
		}
	default:
		m.SetRcode(r, dns.RcodeNameError)
	}
	size := dns.MinMsgSize
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
		size = int(opt.UDPSize())
	}
	if proto == "udp" && q.Name != "untruncated.example." {
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

// seen returns the IDs of the queries for name received over proto.
func (u *fakeDNSUpstream) seen(proto, name string) []uint16 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]uint16(nil), u.ids[proto+" "+name]...)
}

// upstream returns the address of u for proto.
func (u *fakeDNSUpstream) upstream(proto string) string {
	if proto == "tcp" {
		return u.tcpAddr
	}
	return u.udpAddr
}

// testDNSForwarder is a dnsForwarder served on loopback.
type testDNSForwarder struct {
	*dnsForwarder
	udpAddr, tcpAddr string
	errc             chan error // results of servePacket and serveStream
	stopped          bool
}

// startDNSForwarder serves a new dnsForwarder on loopback over UDP and TCP,
// and closes it when t ends, checking that it stops cleanly.
func startDNSForwarder(t *testing.T, upstreams []string, timeout time.Duration) *testDNSForwarder {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	f := &testDNSForwarder{
		dnsForwarder: newDNSForwarder(upstreams, timeout, log),
		udpAddr:      pc.LocalAddr().String(),
		tcpAddr:      l.Addr().String(),
		errc:         make(chan error, 2),
	}
	go func() { f.errc <- f.servePacket(pc) }()
	go func() { f.errc <- f.serveStream(l) }()
	t.Cleanup(func() { f.stop(t) })
	return f
}

// stop closes f and checks that both serve loops return nil, promptly.
func (f *testDNSForwarder) stop(t *testing.T) {
	t.Helper()
	if f.stopped {
		return
	}
	f.stopped = true
	start := time.Now()
	if err := f.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	for range 2 {
		select {
		case err := <-f.errc:
			if err != nil {
				t.Errorf("serve returned %v after Close", err)
			}
		case <-time.After(dnsTestTimeout):
			t.Fatal("serve did not return after Close")
		}
	}
}

// addr returns the address of f for proto.
func (f *testDNSForwarder) addr(proto string) string {
	if proto == "tcp" {
		return f.tcpAddr
	}
	return f.udpAddr
}

// exchangeDNS sends a query for name and qtype to addr over proto and
// returns the reply. If udpSize is not zero, the query carries an EDNS0
// OPT record advertising it.
func exchangeDNS(t *testing.T, proto, addr, name string, qtype, udpSize uint16) (*dns.Msg, *dns.Msg) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	if udpSize != 0 {
		q.SetEdns0(udpSize, false)
	}
	c := &dns.Client{Net: proto, Timeout: dnsTestTimeout}
	r, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatalf("%s query for %s %s: %v", proto, name, dns.Type(qtype), err)
	}
	if r.Id != q.Id {
		t.Fatalf("reply ID %d, want %d", r.Id, q.Id)
	}
	return q, r
}

// deadDNSUpstream returns a loopback address on which nothing listens, for
// both UDP and TCP.
func deadDNSUpstream(t *testing.T) string {
	t.Helper()
	for range 10 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := pc.LocalAddr().String()
		l, err := net.Listen("tcp", addr)
		pc.Close()
		if err != nil {
			continue // port taken for TCP; try another
		}
		l.Close()
		return addr
	}
	t.Fatal("no free loopback port")
	return ""
}

// TestDNSForwarderAnswers checks that A, AAAA and NXDOMAIN answers come
// back over UDP and TCP, and that the upstream sees the guest's query
// IDs.
func TestDNSForwarderAnswers(t *testing.T) {
	up := startFakeDNSUpstream(t)
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			f := startDNSForwarder(t, []string{up.upstream(proto)}, time.Second)

			q, r := exchangeDNS(t, proto, f.addr(proto), "a.example.", dns.TypeA, 0)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Fatalf("A reply:\n%v", r)
			}
			if a, ok := r.Answer[0].(*dns.A); !ok || !a.A.Equal(net.IPv4(1, 2, 3, 4)) {
				t.Errorf("A answer = %v, want 1.2.3.4", r.Answer[0])
			}
			if !r.Authoritative || r.Truncated {
				t.Errorf("A reply flags changed:\n%v", r)
			}
			if ids := up.seen(proto, "a.example."); len(ids) != 1 || ids[0] != q.Id {
				t.Errorf("upstream saw IDs %v, want [%d]", ids, q.Id)
			}

			_, r = exchangeDNS(t, proto, f.addr(proto), "a.example.", dns.TypeAAAA, 0)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Fatalf("AAAA reply:\n%v", r)
			}
			if a, ok := r.Answer[0].(*dns.AAAA); !ok || !a.AAAA.Equal(net.ParseIP("2001:db8::1")) {
				t.Errorf("AAAA answer = %v, want 2001:db8::1", r.Answer[0])
			}

			q, r = exchangeDNS(t, proto, f.addr(proto), "missing.example.", dns.TypeA, 0)
			if r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
				t.Errorf("missing.example. reply, want NXDOMAIN:\n%v", r)
			}
			if ids := up.seen(proto, "missing.example."); len(ids) != 1 || ids[0] != q.Id {
				t.Errorf("upstream saw IDs %v, want [%d]", ids, q.Id)
			}
		})
	}
}

// TestDNSForwarderTruncation checks that UDP replies too large for the
// guest are truncated with TC set, by the upstream or by the forwarder,
// and that TCP replies are whole.
func TestDNSForwarderTruncation(t *testing.T) {
	up := startFakeDNSUpstream(t)
	udp := startDNSForwarder(t, []string{up.udpAddr}, time.Second)
	tcp := startDNSForwarder(t, []string{up.tcpAddr}, time.Second)

	tests := []struct {
		name      string
		proto     string
		addr      string
		udpSize   uint16
		truncated bool
	}{
		// The upstream truncates; the forwarder passes TC on.
		{"big.example.", "udp", udp.udpAddr, 0, true},
		{"big.example.", "udp", udp.udpAddr, 4096, false},
		{"big.example.", "tcp", tcp.tcpAddr, 0, false},
		// The upstream does not truncate; the forwarder must.
		{"untruncated.example.", "udp", udp.udpAddr, 0, true},
		{"untruncated.example.", "udp", udp.udpAddr, 600, true},
		{"untruncated.example.", "udp", udp.udpAddr, 4096, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s/%d", tt.name, tt.proto, tt.udpSize), func(t *testing.T) {
			_, r := exchangeDNS(t, tt.proto, tt.addr, tt.name, dns.TypeA, tt.udpSize)
			if r.Truncated != tt.truncated {
				t.Errorf("TC = %v, want %v", r.Truncated, tt.truncated)
			}
			if tt.truncated {
				if n := len(r.Answer); n >= dnsBigCount {
					t.Errorf("truncated reply has %d answers", n)
				}
				r.Compress = true // as it was on the wire
				if size := max(int(tt.udpSize), dns.MinMsgSize); r.Len() > size {
					t.Errorf("truncated reply is %d bytes, want at most %d", r.Len(), size)
				}
			} else if n := len(r.Answer); n != dnsBigCount {
				t.Errorf("reply has %d answers, want %d", n, dnsBigCount)
			}
		})
	}
}

// TestDNSForwarderServfail checks that a query whose only upstream
// refuses it is answered with SERVFAIL, at once.
func TestDNSForwarderServfail(t *testing.T) {
	dead := deadDNSUpstream(t)
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			f := startDNSForwarder(t, []string{dead}, 2*time.Second)
			start := time.Now()
			q, r := exchangeDNS(t, proto, f.addr(proto), "a.example.", dns.TypeA, 0)
			if r.Rcode != dns.RcodeServerFailure {
				t.Errorf("rcode = %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
			}
			if len(r.Question) != 1 || r.Question[0] != q.Question[0] {
				t.Errorf("question = %v, want %v", r.Question, q.Question)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("SERVFAIL took %v for a refused upstream", d)
			}
		})
	}
}

// TestDNSForwarderNoUpstreams checks that a forwarder without upstreams
// answers SERVFAIL.
func TestDNSForwarderNoUpstreams(t *testing.T) {
	f := startDNSForwarder(t, nil, time.Second)
	_, r := exchangeDNS(t, "udp", f.udpAddr, "a.example.", dns.TypeA, 0)
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode = %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
}

// TestDNSForwarderTimeout checks that each silent upstream is given up on
// after the timeout.
func TestDNSForwarderTimeout(t *testing.T) {
	// A UDP socket that never answers, and a TCP listener whose
	// connections are accepted by the kernel but never read.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	silent := map[string]string{"udp": pc.LocalAddr().String(), "tcp": l.Addr().String()}

	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			const timeout = 200 * time.Millisecond
			f := startDNSForwarder(t, []string{silent[proto], silent[proto]}, timeout)
			start := time.Now()
			_, r := exchangeDNS(t, proto, f.addr(proto), "a.example.", dns.TypeA, 0)
			if r.Rcode != dns.RcodeServerFailure {
				t.Errorf("rcode = %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
			}
			if d := time.Since(start); d < 2*timeout || d > 2*timeout+time.Second {
				t.Errorf("SERVFAIL after %v, want about %v", d, 2*timeout)
			}
		})
	}
}

// TestDNSForwarderFallback checks that upstreams are tried in order until
// one answers.
func TestDNSForwarderFallback(t *testing.T) {
	up := startFakeDNSUpstream(t)
	dead := deadDNSUpstream(t)
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			f := startDNSForwarder(t, []string{dead, up.upstream(proto)}, time.Second)
			_, r := exchangeDNS(t, proto, f.addr(proto), "a.example.", dns.TypeA, 0)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Errorf("reply:\n%v", r)
			}
		})
	}
}

// TestDNSForwarderConcurrentQueries checks that a query waiting on a slow
// upstream does not hold up others.
func TestDNSForwarderConcurrentQueries(t *testing.T) {
	up := startFakeDNSUpstream(t)
	f := startDNSForwarder(t, []string{up.udpAddr}, 3*time.Second)

	slow := make(chan *dns.Msg, 1)
	go func() {
		q := new(dns.Msg)
		q.SetQuestion("slow.example.", dns.TypeA)
		c := &dns.Client{Net: "udp", Timeout: dnsTestTimeout}
		r, _, err := c.Exchange(q, f.udpAddr)
		if err != nil {
			t.Errorf("slow query: %v", err)
		}
		slow <- r
	}()
	// Wait for the slow query to reach the upstream.
	for deadline := time.Now().Add(dnsTestTimeout); len(up.seen("udp", "slow.example.")) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("slow query did not reach the upstream")
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	exchangeDNS(t, "udp", f.udpAddr, "a.example.", dns.TypeA, 0)
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("query took %v while another was waiting on its upstream", d)
	}
	select {
	case r := <-slow:
		if r != nil && len(r.Answer) != 1 {
			t.Errorf("slow reply:\n%v", r)
		}
	case <-time.After(dnsTestTimeout):
		t.Fatal("slow query not answered")
	}
}

// TestDNSForwarderInFlightLimit checks that UDP queries beyond the in-
// flight limit are dropped.
func TestDNSForwarderInFlightLimit(t *testing.T) {
	up := startFakeDNSUpstream(t)
	f := startDNSForwarder(t, []string{up.udpAddr}, time.Second)
	for range cap(f.inflight) {
		f.inflight <- struct{}{}
	}

	c, err := net.Dial("udp", f.udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := new(dns.Msg)
	q.SetQuestion("a.example.", dns.TypeA)
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	expectNoDNSReply(t, c)

	for range cap(f.inflight) {
		<-f.inflight
	}
	exchangeDNS(t, "udp", f.udpAddr, "a.example.", dns.TypeA, 0)
}

// TestDNSForwarderStreamLimit checks that TCP connections beyond the limit
// are closed at once.
func TestDNSForwarderStreamLimit(t *testing.T) {
	up := startFakeDNSUpstream(t)
	f := startDNSForwarder(t, []string{up.tcpAddr}, time.Second)
	for range cap(f.streams) {
		f.streams <- struct{}{}
	}
	c, err := net.Dial("tcp", f.tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(dnsTestTimeout))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("read %d bytes from a connection beyond the limit", n)
	}

	for range cap(f.streams) {
		<-f.streams
	}
	exchangeDNS(t, "tcp", f.tcpAddr, "a.example.", dns.TypeA, 0)
}

// expectNoDNSReply checks that nothing arrives on c for a short while.
func expectNoDNSReply(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, dnsMaxMsgSize)
	n, err := c.Read(buf)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("got %d-byte reply, err %v; want no reply", n, err)
	}
}

// TestDNSForwarderMalformedUDP checks that malformed queries and
// responses are dropped without harm.
func TestDNSForwarderMalformedUDP(t *testing.T) {
	up := startFakeDNSUpstream(t)
	f := startDNSForwarder(t, []string{up.udpAddr}, time.Second)
	c, err := net.Dial("udp", f.udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	resp := new(dns.Msg)
	resp.SetQuestion("a.example.", dns.TypeA)
	resp.Response = true
	respBytes, err := resp.Pack()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{
		{0},
		[]byte("not a DNS message at all"),
		respBytes[:len(respBytes)-3], // truncated question
		respBytes,                    // a response, not a query
	} {
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		expectNoDNSReply(t, c)
	}
	exchangeDNS(t, "udp", f.udpAddr, "a.example.", dns.TypeA, 0)
}

// TestDNSForwarderLargeQuery checks that a query of nearly 64 KiB is read
// and forwarded.
func TestDNSForwarderLargeQuery(t *testing.T) {
	up := startFakeDNSUpstream(t)
	f := startDNSForwarder(t, []string{up.udpAddr}, time.Second)
	q := new(dns.Msg)
	q.SetQuestion("a.example.", dns.TypeA)
	q.SetEdns0(dns.MaxMsgSize, false)
	opt := q.IsEdns0()
	opt.Option = append(opt.Option, &dns.EDNS0_PADDING{Padding: make([]byte, 60000)})
	c := &dns.Client{Net: "udp", Timeout: dnsTestTimeout}
	r, _, err := c.Exchange(q, f.udpAddr)
	if err != nil {
		t.Fatalf("%d-byte query: %v", q.Len(), err)
	}
	if len(r.Answer) != 1 {
		t.Errorf("reply:\n%v", r)
	}
}

// TestDNSForwarderStream checks DNS over TCP with several pipelined
// queries on one connection, a malformed message and a short frame.
func TestDNSForwarderStream(t *testing.T) {
	up := startFakeDNSUpstream(t)
	f := startDNSForwarder(t, []string{up.tcpAddr}, time.Second)
	c, err := net.Dial("tcp", f.tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dnsTestTimeout))

	// A malformed message is skipped; the connection goes on.
	if err := writeDNSFrame(c, []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	// Several queries on one connection, sent before reading any reply.
	names := []string{"a.example.", "missing.example.", "big.example."}
	ids := make(map[uint16]string)
	for _, name := range names {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		b, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if err := writeDNSFrame(c, b); err != nil {
			t.Fatal(err)
		}
		ids[q.Id] = name
	}
	for range names {
		b, err := readDNSFrame(c)
		if err != nil {
			t.Fatal(err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(b); err != nil {
			t.Fatal(err)
		}
		name, ok := ids[r.Id]
		if !ok || r.Question[0].Name != name {
			t.Fatalf("unexpected reply:\n%v", r)
		}
		delete(ids, r.Id)
		if name == "big.example." && len(r.Answer) != dnsBigCount {
			t.Errorf("big.example. reply has %d answers, want %d", len(r.Answer), dnsBigCount)
		}
	}
	// A short frame followed by EOF ends the connection.
	if _, err := c.Write([]byte{0, 50, 1, 2}); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after short frame: read %d bytes, err %v; want EOF", n, err)
	}
}

// rawDNSUpstream answers each query with reply, after copying the query's
// ID into it. Over UDP it first sends a reply with the wrong ID, which the
// forwarder must ignore. It records the queries it receives.
type rawDNSUpstream struct {
	reply []byte

	mu      sync.Mutex
	queries [][]byte
	sent    [][]byte
}

// serveUDP answers queries on pc until it is closed.
func (u *rawDNSUpstream) serveUDP(pc net.PacketConn) {
	buf := make([]byte, dnsMaxMsgSize)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		reply := u.answer(buf[:n])
		wrong := bytes.Clone(reply)
		wrong[1]++
		pc.WriteTo(wrong, addr)
		pc.WriteTo(reply, addr)
	}
}

// serveTCP answers queries on connections accepted from l until it is
// closed.
func (u *rawDNSUpstream) serveTCP(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(dnsTestTimeout))
			for {
				q, err := readDNSFrame(c)
				if err != nil {
					return
				}
				if err := writeDNSFrame(c, u.answer(q)); err != nil {
					return
				}
			}
		}()
	}
}

// answer records query and returns the reply to it.
func (u *rawDNSUpstream) answer(query []byte) []byte {
	reply := bytes.Clone(u.reply)
	copy(reply, query[:2])
	u.mu.Lock()
	defer u.mu.Unlock()
	u.queries = append(u.queries, bytes.Clone(query))
	u.sent = append(u.sent, reply)
	return reply
}

// TestDNSForwarderPassThrough checks that queries and replies pass
// through byte for byte, and that a UDP reply with the wrong ID is
// ignored.
func TestDNSForwarderPassThrough(t *testing.T) {
	// An odd reply: REFUSED, with unusual flags, the AD bit, an
	// uncompressed answer and an OPT record.
	m := new(dns.Msg)
	m.SetQuestion("a.example.", dns.TypeA)
	m.Response, m.Authoritative, m.AuthenticatedData, m.CheckingDisabled = true, true, true, true
	m.RecursionAvailable = false
	m.Rcode = dns.RcodeRefused
	m.Answer = append(m.Answer, &dns.A{
		Hdr: dns.RR_Header{Name: "a.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 7},
		A:   net.IPv4(5, 6, 7, 8),
	})
	m.SetEdns0(1232, true)
	m.Compress = false
	reply, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	up := &rawDNSUpstream{reply: reply}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go up.serveUDP(pc)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go up.serveTCP(l)

	upstreams := map[string]string{"udp": pc.LocalAddr().String(), "tcp": l.Addr().String()}
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			f := startDNSForwarder(t, []string{upstreams[proto]}, time.Second)
			q := new(dns.Msg)
			q.SetQuestion("a.example.", dns.TypeA)
			q.SetEdns0(1232, true)
			q.Id = 0xbeef
			query, err := q.Pack()
			if err != nil {
				t.Fatal(err)
			}
			c, err := net.Dial(proto, f.addr(proto))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(dnsTestTimeout))
			var got []byte
			if proto == "tcp" {
				err = writeDNSFrame(c, query)
				if err == nil {
					got, err = readDNSFrame(c)
				}
			} else {
				_, err = c.Write(query)
				buf := make([]byte, dnsMaxMsgSize)
				var n int
				if err == nil {
					n, err = c.Read(buf)
				}
				got = buf[:n]
			}
			if err != nil {
				t.Fatal(err)
			}

			up.mu.Lock()
			defer up.mu.Unlock()
			if n := len(up.queries); n != 1 {
				t.Fatalf("upstream got %d queries, want 1", n)
			}
			if !bytes.Equal(up.queries[0], query) {
				t.Errorf("upstream got query\n%x\nwant\n%x", up.queries[0], query)
			}
			if !bytes.Equal(got, up.sent[0]) {
				t.Errorf("guest got reply\n%x\nwant\n%x", got, up.sent[0])
			}
			if id := binary.BigEndian.Uint16(got); id != q.Id {
				t.Errorf("reply ID %#x, want %#x", id, q.Id)
			}
			up.queries, up.sent = nil, nil
		})
	}
}

// TestDNSForwarderClose checks that Close aborts in-flight queries,
// closes connections and returns promptly, and that serving after Close
// does nothing.
func TestDNSForwarderClose(t *testing.T) {
	// An upstream that never answers keeps a query in flight.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	f := startDNSForwarder(t, []string{silent.LocalAddr().String()}, time.Minute)

	// An idle DNS-over-TCP connection.
	idle, err := net.Dial("tcp", f.tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	c, err := net.Dial("udp", f.udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := new(dns.Msg)
	q.SetQuestion("a.example.", dns.TypeA)
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	// Wait for the query to reach the upstream.
	silent.SetReadDeadline(time.Now().Add(dnsTestTimeout))
	if _, _, err := silent.ReadFrom(make([]byte, dnsMaxMsgSize)); err != nil {
		t.Fatal(err)
	}
	// Make sure the TCP connection has been accepted.
	f.mu.Lock()
	n := len(f.closers)
	f.mu.Unlock()
	for deadline := time.Now().Add(dnsTestTimeout); n < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("forwarder tracks %d closers, want 3", n)
		}
		time.Sleep(5 * time.Millisecond)
		f.mu.Lock()
		n = len(f.closers)
		f.mu.Unlock()
	}

	f.stop(t) // checks that Close is prompt and serving stops cleanly

	idle.SetReadDeadline(time.Now().Add(dnsTestTimeout))
	if n, err := idle.Read(make([]byte, 1)); err == nil {
		t.Errorf("idle connection read %d bytes after Close", n)
	}

	// Serving after Close closes the conn and returns at once.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.servePacket(pc); err != nil {
		t.Errorf("servePacket after Close: %v", err)
	}
	if _, _, err := pc.ReadFrom(nil); !errors.Is(err, net.ErrClosed) {
		t.Errorf("servePacket after Close left conn open: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.serveStream(l); err != nil {
		t.Errorf("serveStream after Close: %v", err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("serveStream after Close left listener open: %v", err)
	}
}

// TestDNSForwarderCallerCloses checks that closing the served conn and
// listener ends serving cleanly.
func TestDNSForwarderCallerCloses(t *testing.T) {
	f := newDNSForwarder(nil, time.Second, nil)
	defer f.Close()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 2)
	go func() { errc <- f.servePacket(pc) }()
	go func() { errc <- f.serveStream(l) }()
	pc.Close()
	l.Close()
	for range 2 {
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("serve returned %v when its conn was closed", err)
			}
		case <-time.After(dnsTestTimeout):
			t.Fatal("serve did not return when its conn was closed")
		}
	}
}
