// Package forwardtest is the test suite every forward.Publisher passes: the
// userspace forwarder and, later, the bridge path's DNAT.
package forwardtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/forward"
	"github.com/ferrynet/ferry/portspec"
)

// Harness is what the suite needs from one Publisher implementation.
type Harness interface {
	// New returns a fresh publisher, closed by the suite.
	New(t *testing.T) forward.Publisher
	// ServeGuest starts a server in the guest for proto on a free port and
	// returns that port. TCP: it answers each line with "PEER LINE\n",
	// PEER being the address it sees. UDP: it echoes each datagram.
	ServeGuest(t *testing.T, proto portspec.Proto) uint16
	// HasIPv6 reports whether the host can listen on ::1.
	HasIPv6() bool
}

// Run runs the suite against h.
func Run(t *testing.T, h Harness) {
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"AddListRemove", testAddListRemove},
		{"FamiliesNoAddress", testFamiliesNoAddress},
		{"FamiliesExplicit", testFamiliesExplicit},
		{"RandomPort", testRandomPort},
		{"HostRange", testHostRange},
		{"InUseKeepsEarlier", testInUseKeepsEarlier},
		{"RemoveClosesConnections", testRemoveClosesConnections},
		{"UDP", testUDP},
		{"Stats", testStats},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, h) })
	}
}

func newPub(t *testing.T, h Harness) forward.Publisher {
	p := h.New(t)
	t.Cleanup(func() { p.Close() })
	return p
}

func add(t *testing.T, p forward.Publisher, spec string) []forward.Forward {
	t.Helper()
	ms, err := portspec.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	var out []forward.Forward
	for _, m := range ms {
		fs, err := p.Add(context.Background(), forward.Spec{Mapping: m})
		if err != nil {
			t.Fatalf("Add(%s): %v", spec, err)
		}
		out = append(out, fs...)
	}
	return out
}

// freePort returns a TCP port free on 127.0.0.1 right now.
func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// roundTrip sends a line over TCP to addr and returns the reply line.
func roundTrip(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "ping\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

func mustServe(t *testing.T, addr string) {
	t.Helper()
	got, err := roundTrip(addr)
	if err != nil || !strings.HasSuffix(got, " ping") {
		t.Fatalf("round trip via %s: %q, %v", addr, got, err)
	}
}

func mustRefuse(t *testing.T, addr string) {
	t.Helper()
	if got, err := roundTrip(addr); err == nil {
		t.Fatalf("round trip via %s worked (%q), want it refused", addr, got)
	}
}

func testAddListRemove(t *testing.T, h Harness) {
	p := newPub(t, h)
	gp := h.ServeGuest(t, portspec.TCP)
	hp := freePort(t)
	fs := add(t, p, fmt.Sprintf("127.0.0.1:%d:%d", hp, gp))
	if len(fs) != 1 || fs[0].ID != 1 || fs[0].HostPort != hp || fs[0].GuestPort != gp || fs[0].HostAddr != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("Add = %+v", fs)
	}
	addr := fs[0].Host()
	mustServe(t, addr)
	fs2 := add(t, p, fmt.Sprintf("127.0.0.1::%d", gp))
	if len(fs2) != 1 || fs2[0].ID != 2 {
		t.Fatalf("second Add = %+v, want ID 2", fs2)
	}
	if l := p.List(); len(l) != 2 || l[0].ID != 1 || l[1].ID != 2 {
		t.Fatalf("List = %+v", l)
	}
	if err := p.Remove(1); err != nil {
		t.Fatal(err)
	}
	mustRefuse(t, addr)
	mustServe(t, fs2[0].Host())
	var nf forward.ErrNotFound
	if err := p.Remove(1); !errors.As(err, &nf) {
		t.Fatalf("Remove(1) again: %v, want ErrNotFound", err)
	}
	if l := p.List(); len(l) != 1 || l[0].ID != 2 {
		t.Fatalf("List = %+v", l)
	}
	if fs3 := add(t, p, fmt.Sprintf("127.0.0.1::%d", gp)); fs3[0].ID != 3 {
		t.Fatalf("third Add = %+v, want ID 3 (IDs are never reused)", fs3)
	}
}

func testFamiliesNoAddress(t *testing.T, h Harness) {
	p := newPub(t, h)
	gp := h.ServeGuest(t, portspec.TCP)
	fs := add(t, p, fmt.Sprintf("%d", gp))
	want := 1
	if h.HasIPv6() {
		want = 2
	}
	if len(fs) != want {
		t.Fatalf("Add(no address) = %+v, want %d forwards", fs, want)
	}
	if fs[0].HostAddr != netip.IPv4Unspecified() {
		t.Errorf("first forward on %s, want 0.0.0.0", fs[0].HostAddr)
	}
	mustServe(t, fmt.Sprintf("127.0.0.1:%d", fs[0].HostPort))
	if want == 2 {
		if fs[1].HostAddr != netip.IPv6Unspecified() || fs[1].HostPort != fs[0].HostPort {
			t.Errorf("second forward %+v, want [::] on the same port", fs[1])
		}
		mustServe(t, fmt.Sprintf("[::1]:%d", fs[0].HostPort))
	}
}

func testFamiliesExplicit(t *testing.T, h Harness) {
	p := newPub(t, h)
	gp := h.ServeGuest(t, portspec.TCP)
	fs := add(t, p, fmt.Sprintf("0.0.0.0::%d", gp))
	if len(fs) != 1 {
		t.Fatalf("Add(0.0.0.0) = %+v, want one forward", fs)
	}
	mustServe(t, fmt.Sprintf("127.0.0.1:%d", fs[0].HostPort))
	if h.HasIPv6() {
		mustRefuse(t, fmt.Sprintf("[::1]:%d", fs[0].HostPort))
		fs6 := add(t, p, fmt.Sprintf("[::]::%d", gp))
		mustServe(t, fmt.Sprintf("[::1]:%d", fs6[0].HostPort))
		if fs6[0].HostPort != fs[0].HostPort {
			mustRefuse(t, fmt.Sprintf("127.0.0.1:%d", fs6[0].HostPort))
		}
	}
}

func testRandomPort(t *testing.T, h Harness) {
	p := newPub(t, h)
	gp := h.ServeGuest(t, portspec.TCP)
	fs := add(t, p, fmt.Sprintf("127.0.0.1::%d", gp))
	if fs[0].HostPort == 0 {
		t.Fatalf("random port not reported: %+v", fs[0])
	}
	if l := p.List(); l[0].HostPort != fs[0].HostPort {
		t.Fatalf("List reports port %d, Add %d", l[0].HostPort, fs[0].HostPort)
	}
	mustServe(t, fs[0].Host())
}

func testHostRange(t *testing.T, h Harness) {
	p := newPub(t, h)
	gp := h.ServeGuest(t, portspec.TCP)
	// Hold the first port of a range so that the second must be picked.
	var first uint16
	var hold net.Listener
	for range 20 {
		first = freePort(t)
		if first > 65000 {
			continue
		}
		if l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", first)); err == nil {
			hold = l
			break
		}
	}
	if hold == nil {
		t.Fatal("no port to hold")
	}
	defer hold.Close()
	fs := add(t, p, fmt.Sprintf("127.0.0.1:%d-%d:%d", first, first+5, gp))
	if len(fs) != 1 || fs[0].HostPort <= first || fs[0].HostPort > first+5 {
		t.Fatalf("Add(range %d-%d) = %+v, want one port after the held %d", first, first+5, fs, first)
	}
	mustServe(t, fs[0].Host())
}

func testInUseKeepsEarlier(t *testing.T, h Harness) {
	p := newPub(t, h)
	gp := h.ServeGuest(t, portspec.TCP)
	fs := add(t, p, fmt.Sprintf("127.0.0.1::%d", gp))
	m := portspec.Mapping{Proto: portspec.TCP, HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: fs[0].HostPort, HostPortEnd: fs[0].HostPort, GuestPort: gp}
	_, err := p.Add(context.Background(), forward.Spec{Mapping: m})
	want := fmt.Sprintf("127.0.0.1:%d is already in use", fs[0].HostPort)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Add on a port in use: %v, want an error saying %q", err, want)
	}
	if l := p.List(); len(l) != 1 {
		t.Fatalf("List after a failed Add = %+v", l)
	}
	mustServe(t, fs[0].Host())
}

func testRemoveClosesConnections(t *testing.T, h Harness) {
	p := newPub(t, h)
	gp := h.ServeGuest(t, portspec.TCP)
	fs := add(t, p, fmt.Sprintf("127.0.0.1::%d", gp))
	c, err := net.DialTimeout("tcp", fs[0].Host(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	fmt.Fprintf(c, "one\n")
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if err := p.Remove(fs[0].ID); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "two\n")
	if line, err := r.ReadString('\n'); err == nil {
		t.Fatalf("connection still carried %q after Remove", line)
	}
}

func testUDP(t *testing.T, h Harness) {
	p := newPub(t, h)
	gp := h.ServeGuest(t, portspec.UDP)
	fs := add(t, p, fmt.Sprintf("127.0.0.1::%d/udp", gp))
	errs := make(chan error, 2)
	for i := range 2 {
		go func() {
			c, err := net.Dial("udp", fs[0].Host())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			buf := make([]byte, 1500)
			for j := range 20 {
				msg := fmt.Sprintf("client %d message %d", i, j)
				got := ""
				for try := 0; try < 3 && got != msg; try++ {
					c.Write([]byte(msg))
					c.SetReadDeadline(time.Now().Add(time.Second))
					n, err := c.Read(buf)
					if err != nil {
						continue
					}
					got = string(buf[:n])
					if got != msg && !strings.HasPrefix(got, fmt.Sprintf("client %d ", i)) {
						errs <- fmt.Errorf("client %d got %q, another client's answer", i, got)
						return
					}
				}
				if got != msg {
					errs <- fmt.Errorf("client %d: no echo of %q (last %q)", i, msg, got)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// testStats checks the publisher's counters: a TCP connection open while it
// is, and its bytes each way once it ended (the guest's answer is "PEER
// LINE\n"), then a UDP client's flow and its echoed bytes.
func testStats(t *testing.T, h Harness) {
	p := newPub(t, h)
	if got := p.Stats(); got != (forward.Stats{}) {
		t.Fatalf("fresh publisher: stats %+v, want zeros", got)
	}
	tp := h.ServeGuest(t, portspec.TCP)
	fs := add(t, p, fmt.Sprintf("127.0.0.1::%d", tp))
	c, err := net.DialTimeout("tcp", fs[0].Host(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line := strings.Repeat("x", 100_000)
	fmt.Fprintf(c, "%s\n", line)
	answer, err := bufio.NewReaderSize(c, 1<<20).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	waitStats(t, p, "TCP connection open", func(s forward.Stats) bool { return s.TCPConns == 1 })
	c.Close()
	// Bytes count by the end of each direction at the latest (kernel mode
	// counts per chunk of a splice).
	waitStats(t, p, "TCP connection closed", func(s forward.Stats) bool {
		return s.TCPConns == 0 && s.BytesIn == uint64(len(line)+1) && s.BytesOut == uint64(len(answer))
	})

	up := h.ServeGuest(t, portspec.UDP)
	fs = add(t, p, fmt.Sprintf("127.0.0.1::%d/udp", up))
	u, err := net.Dial("udp", fs[0].Host())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	before := p.Stats()
	buf := make([]byte, 1500)
	for try := 0; ; try++ {
		u.Write([]byte("datagram"))
		u.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := u.Read(buf); err == nil && string(buf[:n]) == "datagram" {
			break
		}
		if try == 2 {
			t.Fatal("no UDP echo")
		}
	}
	waitStats(t, p, "UDP flow", func(s forward.Stats) bool {
		return s.UDPFlows == 1 && s.BytesIn > before.BytesIn && s.BytesOut >= before.BytesOut+uint64(len("datagram"))
	})
}

// waitStats waits up to 5 s for p's stats to satisfy ok.
func waitStats(t *testing.T, p forward.Publisher, what string, ok func(forward.Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok(p.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: stats %+v", what, p.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
