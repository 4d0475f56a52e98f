package integration

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// apiCall sends one request to the API socket as slirp4netns's callers do
// (write, shut the write side) and returns the reply.
func apiCall(t *testing.T, sock, req string) string {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	c.(*net.UnixConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestAPISocket drives a running ferry through its API socket and checks
// every reply byte for byte, and that the forwards do what the replies say.
func TestAPISocket(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	serveGuestPeer(t, w, 80)
	sock := filepath.Join(apiDir(t, w), "api.sock")
	f := w.attach(t, "-c", "--api-socket", sock)

	st, err := os.Stat(sock)
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("API socket: %v, %v; want a socket of mode 0600", st.Mode(), err)
	}
	for _, s := range []struct{ req, want string }{
		{`{"execute":"list_hostfwd"}`, `{"entries":[]}`},
		// podman appends a newline; an empty host_addr is IPv4 only.
		{`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"","host_port":8080,"guest_addr":"","guest_port":80}}` + "\n", `{"return":{"id":1}}`},
		{`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_port":80}}`, `{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}`},
		{`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":8081,"guest_addr":"10.0.2.100","guest_port":80}}`, `{"return":{"id":2}}`},
		{`{"execute":"list_hostfwd"}`, `{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},{"id":2,"proto":"tcp","host_addr":"127.0.0.1","host_port":8081,"guest_addr":"10.0.2.100","guest_port":80}]}`},
		{`{"execute":"bogus"}`, `{"error":{"desc":"bad request: unknown execute"}}`},
		{`not json`, `{"error":{"desc":"bad request: cannot parse JSON"}}`},
	} {
		if got := apiCall(t, sock, s.req); got != s.want {
			t.Errorf("request %q:\n got  %s\n want %s", s.req, got, s.want)
		}
	}
	curl(t, w, w.host, "http://127.0.0.1:8080/")
	curlRefused(t, w, w.host, "http://[::1]:8080/") // 0.0.0.0 is IPv4 only
	curl(t, w, w.host, "http://127.0.0.1:8081/")

	if got := apiCall(t, sock, `{"execute":"remove_hostfwd","arguments":{"id":1}}`); got != `{"return":{}}` {
		t.Errorf("remove_hostfwd: %s", got)
	}
	if got := apiCall(t, sock, `{"execute":"remove_hostfwd","arguments":{"id":1}}`); got != `{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}` {
		t.Errorf("remove_hostfwd twice: %s", got)
	}
	curlRefused(t, w, w.host, "http://127.0.0.1:8080/")
	curl(t, w, w.host, "http://127.0.0.1:8081/")

	// The CLI client: add both families, list, remove.
	res := ferryPort(t, w, "add", "--api", sock, "9090:80")
	if res.ExitCode != 0 || res.Stdout != "3\n4\n" {
		t.Fatalf("ferry port add 9090:80: %s; want IDs 3 and 4", res)
	}
	curl(t, w, w.host, "http://[::1]:9090/")
	res = ferryPort(t, w, "ls", "--api", sock)
	if want := "80/tcp -> 127.0.0.1:8081\n80/tcp -> 0.0.0.0:9090\n80/tcp -> [::]:9090\n"; res.Stdout != want {
		t.Errorf("ferry port ls: %q, want %q", res.Stdout, want)
	}
	if res = ferryPort(t, w, "rm", "--api", sock, "3", "4"); res.ExitCode != 0 {
		t.Errorf("ferry port rm 3 4: %s", res)
	}
	curlRefused(t, w, w.host, "http://127.0.0.1:9090/")
	res = ferryPort(t, w, "ls", "--api", sock, "--json")
	if want := `[{"id":2,"proto":"tcp","host_addr":"127.0.0.1","host_port":8081,"guest_addr":"10.0.2.100","guest_port":80}]` + "\n"; res.Stdout != want {
		t.Errorf("ferry port ls --json: %q, want %q", res.Stdout, want)
	}

	// The socket goes away with ferry.
	if err := f.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("API socket after ferry exited: %v, want it removed", err)
	}
}
