package forward_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrynet/ferry/forward"
)

// freeTCPUDPPort returns a port free for TCP and UDP on 0.0.0.0 right now.
func freeTCPUDPPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", port))
		l.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// TestAPIProtocol replays a session against the handler and compares every
// reply byte for byte with what slirp4netns 1.2 answers.
func TestAPIProtocol(t *testing.T) {
	pub := forward.NewUserspace(loopGuest{}, forward.Options{})
	defer pub.Close()
	api := forward.NewAPI(pub, netip.MustParseAddr("10.0.2.100"), nil)
	port := freeTCPUDPPort(t)
	steps := []struct{ req, reply string }{
		{``, `{"error":{"desc":"bad request: cannot parse JSON"}}`},
		{`{"execute":`, `{"error":{"desc":"bad request: cannot parse JSON"}}`},
		{`[1,2]`, `{"error":{"desc":"bad request: json_object() failed"}}`},
		{`"add_hostfwd"`, `{"error":{"desc":"bad request: json_object() failed"}}`},
		{`{}`, `{"error":{"desc":"bad request: no execute found"}}`},
		{`{"execute":1}`, `{"error":{"desc":"bad request: no execute found"}}`},
		{`{"execute":"nope"}`, `{"error":{"desc":"bad request: unknown execute"}}`},
		{strings.Repeat(" ", 4096), `{"error":{"desc":"bad request: too large message"}}`},
		{`{"execute":"list_hostfwd"}`, `{"entries":[]}`},
		{`{"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":%d,"guest_port":80}}`, `{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}`},
		{`{"execute":"add_hostfwd","arguments":{"host_port":%d,"guest_port":80}}`, `{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}`},
		{`{"execute":"add_hostfwd"}`, `{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}`},
		{`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"localhost","host_port":%d,"guest_port":80}}`, `{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_addr"}}`},
		{`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"0.0.0.0","host_port":0,"guest_port":80}}`, `{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}`},
		{`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":"8080","guest_port":80}}`, `{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}`},
		{`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":%d,"guest_addr":"fd00::100","guest_port":80}}`, `{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_addr"}}`},
		{`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":%d,"guest_port":0}}`, `{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_port"}}`},
		{`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":%d}}`, `{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_port"}}`},
		{`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"","host_port":%d,"guest_addr":"","guest_port":80}}` + "\n", `{"return":{"id":1}}`},
		{`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"0.0.0.0","host_port":%d,"guest_port":80}}`, `{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}`},
		{`{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"0.0.0.0","host_port":%d,"guest_addr":"10.0.2.50","guest_port":53}}`, `{"return":{"id":2}}`},
		{`{"execute":"list_hostfwd"}`, `{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":%d,"guest_addr":"10.0.2.100","guest_port":80},{"id":2,"proto":"udp","host_addr":"0.0.0.0","host_port":%d,"guest_addr":"10.0.2.50","guest_port":53}]}`},
		{`{"execute":"remove_hostfwd","arguments":{"id":1}}`, `{"return":{}}`},
		{`{"execute":"remove_hostfwd","arguments":{"id":1}}`, `{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}`},
		{`{"execute":"remove_hostfwd"}`, `{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}`},
		{`{"execute":"list_hostfwd"}`, `{"entries":[{"id":2,"proto":"udp","host_addr":"0.0.0.0","host_port":%d,"guest_addr":"10.0.2.50","guest_port":53}]}`},
		// The port is free again: a new forward gets the next ID.
		{`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":%d,"guest_port":81}}`, `{"return":{"id":3}}`},
	}
	for i, s := range steps {
		req := fill(s.req, port)
		want := fill(s.reply, port)
		got := string(api.Handle(context.Background(), []byte(req)))
		if got != want {
			t.Errorf("step %d: %.80q\n got  %s\n want %s", i, req, got, want)
		}
	}
}

// fill puts port in for each %d of s.
func fill(s string, port int) string {
	n := strings.Count(s, "%d")
	args := make([]any, n)
	for i := range args {
		args[i] = port
	}
	if n == 0 {
		return s
	}
	return fmt.Sprintf(s, args...)
}

// TestAPISocket checks the socket itself: mode, one request per connection,
// the client, and the file going away at Close.
func TestAPISocket(t *testing.T) {
	pub := forward.NewUserspace(loopGuest{}, forward.Options{})
	defer pub.Close()
	path := filepath.Join(t.TempDir(), "api.sock")
	if err := os.WriteFile(path, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	api, err := forward.ListenAPI(path, pub, netip.MustParseAddr("10.0.2.100"), nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket file: %v, %v; want a socket of mode 0600", st.Mode(), err)
	}
	c := forward.Client{Path: path}
	ctx := context.Background()
	port := freeTCPUDPPort(t)
	id, err := c.Add(ctx, forward.AddArgs{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: port, GuestPort: 80})
	if err != nil || id != 1 {
		t.Fatalf("Add = %d, %v", id, err)
	}
	_, err = c.Add(ctx, forward.AddArgs{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: port, GuestPort: 80})
	var apiErr *forward.APIError
	if !errors.As(err, &apiErr) || apiErr.Desc != "bad request: add_hostfwd: slirp_add_hostfwd failed" {
		t.Fatalf("Add on a port in use: %v", err)
	}
	es, err := c.List(ctx)
	if err != nil || len(es) != 1 || es[0] != (forward.Entry{ID: 1, Proto: "tcp", HostAddr: "127.0.0.1", HostPort: port, GuestAddr: "10.0.2.100", GuestPort: 80}) {
		t.Fatalf("List = %+v, %v", es, err)
	}
	reply, err := c.Call(ctx, []byte(strings.Repeat("x", 5000)))
	if err != nil || string(reply) != `{"error":{"desc":"bad request: too large message"}}` {
		t.Fatalf("too large: %q, %v", reply, err)
	}
	if err := c.Remove(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(ctx, 1); !errors.As(err, &apiErr) {
		t.Fatalf("Remove twice: %v", err)
	}
	api.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket file after Close: %v", err)
	}
}
