package integration

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// serveEcho accepts connections on l and answers each with "ok\n", keeping
// it open until the client closes.
func serveEcho(t *testing.T, l net.Listener) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte("ok\n"))
				c.SetReadDeadline(time.Now().Add(time.Minute))
				c.Read(make([]byte, 1))
			}()
		}
	}()
}

// dialGuest connects from the guest and reads the server's "ok".
func dialGuest(w *world, addr string) error {
	c, err := nstest.DialIn(w.ctx, w.guest.NetnsPath, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 3)
	if _, err := c.Read(b); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	return nil
}

// TestFences checks --deny-host, --deny/--allow and the metadata address.
func TestFences(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	srv, err := w.lab.NewNetns(w.ctx, "server")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.NewVeth(w.ctx, w.host, "172.31.207.1/24", srv, "172.31.207.2/24"); err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.MustExec(w.ctx, "ip", "-n", srv.Name, "addr", "add", "172.31.207.3/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"172.31.207.2:7000", "172.31.207.3:7000"} {
		l, err := nstest.ListenIn(srv.Path, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		serveEcho(t, l)
	}
	hostL, err := nstest.ListenIn(w.host.Path, "tcp", "172.31.207.1:7001")
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, hostL)
	loL, err := nstest.ListenIn(w.host.Path, "tcp", "127.0.0.1:7002")
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, loL)

	w.attach(t, "-c", "--deny-host", "--deny", "172.31.207.0/24", "--allow", "172.31.207.3/32")
	for _, tc := range []struct {
		addr   string
		refuse bool
	}{
		{"172.31.207.1:7001", true},  // the host's own veth address
		{"10.0.2.2:7002", true},      // the host's loopback
		{"172.31.207.2:7000", true},  // --deny
		{"172.31.207.3:7000", false}, // --allow, the longer prefix
		{"169.254.169.254:80", true}, // metadata, denied by default
	} {
		start := time.Now()
		err := dialGuest(w, tc.addr)
		switch {
		case tc.refuse && err == nil:
			t.Errorf("%s: reached, want refused", tc.addr)
		case tc.refuse && !errors.Is(err, syscall.EHOSTUNREACH) && !errors.Is(err, syscall.ENETUNREACH):
			t.Errorf("%s: %v, want host or network unreachable", tc.addr, err)
		case tc.refuse && time.Since(start) > 2*time.Second:
			t.Errorf("%s: refusal took %v, want it at once", tc.addr, time.Since(start))
		case !tc.refuse && err != nil:
			t.Errorf("%s: %v, want reached", tc.addr, err)
		}
	}
}

// TestFlowLimitAndStats checks that over --max-tcp-flows new flows are
// refused while open ones go on, and that ferry stats counts it all.
func TestFlowLimitAndStats(t *testing.T) {
	w := newWorld(t, time.Minute)
	l, err := nstest.ListenIn(w.host.Path, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, l)
	sock := apiSocketPath(t)
	pcap := filepath.Join(filepath.Dir(sock), "guest.pcap")
	w.attach(t, "-c", "--max-tcp-flows", "3", "--api-socket", sock, "--pcap", pcap)
	addr := fmt.Sprintf("10.0.2.2:%d", l.Addr().(*net.TCPAddr).Port)

	var open []net.Conn
	for i := range 3 {
		c, err := nstest.DialIn(w.ctx, w.guest.NetnsPath, "tcp", addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer c.Close()
		open = append(open, c)
	}
	if _, err := nstest.DialIn(w.ctx, w.guest.NetnsPath, "tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("4th connection over --max-tcp-flows 3: %v, want refused", err)
	}
	for i, c := range open {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 3)); err != nil {
			t.Errorf("open connection %d disturbed: %v", i, err)
		}
	}
	res := w.ferryStats(t, sock)
	var st struct {
		TCPFlows int64            `json:"tcp_flows"`
		Drops    map[string]int64 `json:"drops"`
		BytesIn  uint64           `json:"bytes_in"`
	}
	if err := json.Unmarshal([]byte(res), &st); err != nil {
		t.Fatalf("ferry stats: %v\n%s", err, res)
	}
	if st.TCPFlows != 3 || st.Drops["tcp-flow-limit"] != 1 || st.BytesIn < 9 {
		t.Errorf("stats: %+v; want 3 TCP flows, 1 tcp-flow-limit drop, >= 9 bytes in", st)
	}
	// One closes: a new flow is accepted again.
	open[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := dialGuest(w, addr)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new flow after one closed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// --pcap wrote a capture with frames in it.
	b, err := os.ReadFile(pcap)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 24+16+54 || binary.LittleEndian.Uint32(b) != 0xa1b2c3d4 {
		t.Errorf("--pcap file: %d bytes, magic %x; want a pcap with frames", len(b), b[:min(4, len(b))])
	}
}
