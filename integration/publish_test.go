package integration

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// Addresses of the veth between the host namespace and a "client"
// namespace from which published ports are reached as from another
// machine.
const (
	pubHostAddr    = "172.31.210.1"
	pubClientAddr  = "172.31.210.2"
	pubHostAddr6   = "fd99:210::1"
	pubClientAddr6 = "fd99:210::2"
)

// serveGuestPeer serves HTTP on the guest's 0.0.0.0:port answering with the
// peer address the guest sees.
func serveGuestPeer(t *testing.T, w *world, port int) {
	t.Helper()
	_, err := nstest.ServeHTTP(t, w.guest.NetnsPath, fmt.Sprintf("0.0.0.0:%d", port), http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprint(rw, r.RemoteAddr)
	}))
	if err != nil {
		t.Fatal(err)
	}
}

// newClientNetns joins a new namespace to the host namespace by a veth with
// IPv4 and IPv6 addresses.
func newClientNetns(t *testing.T, w *world) nstest.Netns {
	t.Helper()
	c, err := w.lab.NewNetns(w.ctx, "client")
	if err != nil {
		t.Fatal(err)
	}
	v, err := nstest.NewVeth(w.ctx, w.host, pubHostAddr+"/24", c, pubClientAddr+"/24")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range [][]string{
		{"ip", "-n", w.host.Name, "addr", "add", pubHostAddr6 + "/64", "dev", v.NameA, "nodad"},
		{"ip", "-n", c.Name, "addr", "add", pubClientAddr6 + "/64", "dev", v.NameB, "nodad"},
	} {
		if _, err := nstest.MustExec(w.ctx, s...); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// curl fetches url from inside ns and returns the body, or fails t.
func curl(t *testing.T, w *world, ns nstest.Netns, url string) string {
	t.Helper()
	res, err := ns.Exec(w.ctx, "curl", "-sS", "-g", "--max-time", "10", url)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("curl %s in %s failed: %s", url, ns.Name, res)
	}
	return res.Stdout
}

// curlRefused checks that url cannot be fetched from inside ns, promptly.
func curlRefused(t *testing.T, w *world, ns nstest.Netns, url string) {
	t.Helper()
	res, err := ns.Exec(w.ctx, "curl", "-sS", "-g", "--max-time", "5", url)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode == 0 {
		t.Errorf("curl %s in %s worked (%q), want it refused", url, ns.Name, res.Stdout)
	} else if res.Elapsed > 3*time.Second {
		t.Errorf("curl %s took %v to fail, want a prompt refusal: %s", url, res.Elapsed, res)
	}
}

// apiDir returns a directory the test user may create its API socket in.
func apiDir(t *testing.T, w *world) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "ferry-api-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chown(dir, w.lab.User.UID, w.lab.User.GID); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ferryPort runs `ferry port ARGS...` (as root, who may use the test user's
// socket) and returns its result.
func ferryPort(t *testing.T, w *world, args ...string) nstest.Result {
	t.Helper()
	res, err := nstest.Exec(w.ctx, append([]string{w.lab.Ferry, "port"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ferry port %s -> exit %d\nstdout: %q\nstderr: %q", strings.Join(args, " "), res.ExitCode, res.Stdout, res.Stderr)
	return res
}

// TestPublishForms publishes one guest HTTP server through the -p forms and
// checks which host addresses answer and who the guest sees as its peer.
func TestPublishForms(t *testing.T) {
	w := newWorld(t, 3*time.Minute)
	client := newClientNetns(t, w)
	serveGuestPeer(t, w, 80)
	sock := filepath.Join(apiDir(t, w), "api.sock")
	w.attach(t, "-c", "--api-socket", sock,
		"-p", "8080:80", "-p", "127.0.0.1::80", "-p", "0.0.0.0:8081:80", "-p", "[::]:8082:80", "-p", "8090-8095:80")

	// No address: both families.
	if got := curl(t, w, w.host, "http://127.0.0.1:8080/"); !strings.HasPrefix(got, "10.0.2.2:") {
		t.Errorf("host loopback client seen as %q, want the gateway 10.0.2.2", got)
	}
	if got := curl(t, w, w.host, "http://[::1]:8080/"); !strings.HasPrefix(got, "10.0.2.2:") {
		t.Errorf("IPv6 loopback client seen as %q, want the gateway 10.0.2.2", got)
	}
	// A client on another machine is seen with its own address.
	if got := curl(t, w, client, "http://"+pubHostAddr+":8080/"); !strings.HasPrefix(got, pubClientAddr+":") {
		t.Errorf("client %s seen as %q, want its own address", pubClientAddr, got)
	}
	// An IPv6 client is of the other family: the gateway.
	if got := curl(t, w, client, "http://["+pubHostAddr6+"]:8080/"); !strings.HasPrefix(got, "10.0.2.2:") {
		t.Errorf("IPv6 client seen as %q, want the gateway 10.0.2.2", got)
	}
	// 0.0.0.0: IPv4 only; [::]: IPv6 only.
	curl(t, w, w.host, "http://127.0.0.1:8081/")
	curlRefused(t, w, w.host, "http://[::1]:8081/")
	curl(t, w, w.host, "http://[::1]:8082/")
	curlRefused(t, w, w.host, "http://127.0.0.1:8082/")
	// A host range for one port: its first free port.
	curl(t, w, w.host, "http://127.0.0.1:8090/")
	curlRefused(t, w, w.host, "http://127.0.0.1:8091/")

	// The random port, as ferry port ls reports it.
	res := ferryPort(t, w, "ls", "--api", sock)
	if res.ExitCode != 0 {
		t.Fatalf("ferry port ls failed: %s", res)
	}
	var random string
	for _, line := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
		if strings.HasPrefix(line, "80/tcp -> 127.0.0.1:") {
			random = strings.TrimPrefix(line, "80/tcp -> ")
		}
	}
	for _, want := range []string{"80/tcp -> 0.0.0.0:8080", "80/tcp -> [::]:8080", "80/tcp -> 0.0.0.0:8081", "80/tcp -> [::]:8082", "80/tcp -> 0.0.0.0:8090", "80/tcp -> [::]:8090"} {
		if !strings.Contains(res.Stdout, want+"\n") {
			t.Errorf("ferry port ls lacks %q:\n%s", want, res.Stdout)
		}
	}
	if random == "" {
		t.Fatalf("ferry port ls shows no 127.0.0.1 forward:\n%s", res.Stdout)
	}
	curl(t, w, w.host, "http://"+random+"/")
}

// TestPublishRun publishes a port of a command started by ferry run, which
// serves it itself.
func TestPublishRun(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	if got := curlRunServer(t, w); !strings.HasPrefix(got, "from-run ") {
		t.Errorf("curl through ferry run -p: %q, want %q and the client's address", got, "from-run")
	}
}

// curlRunServer runs `ferry run FLAGS -p 127.0.0.1:8080:8000` with a command
// that serves one HTTP request on port 8000, answering "from-run" and the
// client's address as it sees it, fetches it from the host namespace, and
// returns the body once ferry run has exited with status 0.
func curlRunServer(t *testing.T, w *world, flags ...string) string {
	t.Helper()
	server := `import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000))
s.listen()
s.settimeout(20)
c, peer = s.accept()
c.recv(4096)
c.sendall(b"HTTP/1.0 200 OK\r\n\r\nfrom-run " + peer[0].encode())
c.close()
`
	args := w.ferryRunArgs(append(flags, "-p", "127.0.0.1:8080:8000", "--", "python3", "-c", server)...)
	done := make(chan nstest.Result, 1)
	go func() {
		res, _ := nstest.Exec(w.ctx, args...)
		done <- res
	}()
	var got string
	for start := time.Now(); time.Since(start) < 15*time.Second; time.Sleep(200 * time.Millisecond) {
		res, err := w.host.Exec(w.ctx, "curl", "-s", "--max-time", "5", "http://127.0.0.1:8080/")
		if err == nil && res.ExitCode == 0 {
			got = res.Stdout
			break
		}
	}
	select {
	case res := <-done:
		t.Logf("ferry run: %s", res)
		if res.ExitCode != 0 {
			t.Errorf("ferry run failed: %s", res)
		}
	case <-time.After(30 * time.Second):
		t.Error("ferry run did not end")
	}
	return got
}

// TestPublishRefusedThenListening checks that a guest port nobody listens on
// resets the client at once, and works as soon as the guest listens.
func TestPublishRefusedThenListening(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	w.attach(t, "-c", "-p", "127.0.0.1:8080:81")
	curlRefused(t, w, w.host, "http://127.0.0.1:8080/")
	// The host listener accepts, then resets: the reset may land before or
	// after connect() returns, but it is a reset, never a refusal.
	c, err := nstest.DialIn(w.ctx, w.host.Path, "tcp", "127.0.0.1:8080")
	if err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection to an unserved guest port: %v, want a reset", err)
	}
	serveGuestPeer(t, w, 81)
	curl(t, w, w.host, "http://127.0.0.1:8080/")
}

// TestPublishUDPTwoClients echoes through a published UDP port for two
// concurrent clients, each of which must get only its own answers.
func TestPublishUDPTwoClients(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	echoUDP(t, w.guest.NetnsPath, "0.0.0.0:5000")
	w.attach(t, "-c", "-p", "127.0.0.1:5000:5000/udp")
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := nstest.DialIn(w.ctx, w.host.Path, "udp", "127.0.0.1:5000")
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			buf := make([]byte, 2048)
			for j := range 100 {
				msg := fmt.Sprintf("client %d datagram %d", i, j)
				ok := false
				for try := 0; try < 3 && !ok; try++ {
					c.Write([]byte(msg))
					c.SetReadDeadline(time.Now().Add(2 * time.Second))
					for {
						n, err := c.Read(buf)
						if err != nil {
							break
						}
						got := string(buf[:n])
						if !strings.HasPrefix(got, fmt.Sprintf("client %d ", i)) {
							t.Errorf("client %d got %q: another client's answer", i, got)
							return
						}
						if got == msg {
							ok = true
							break
						}
					}
				}
				if !ok {
					t.Errorf("client %d: no echo of %q", i, msg)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestPublishManyConnections runs 200 concurrent HTTP requests through one
// published port.
func TestPublishManyConnections(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	serveGuestPeer(t, w, 80)
	w.attach(t, "-c", "-p", "127.0.0.1:8080:80")
	const n = 200
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := nstest.DialIn(w.ctx, w.host.Path, "tcp", "127.0.0.1:8080")
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns[i] = c
		t.Cleanup(func() { c.Close() })
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			fmt.Fprintf(c, "GET /%d HTTP/1.0\r\nHost: x\r\n\r\n", i)
			buf := make([]byte, 4096)
			var got []byte
			for {
				k, err := c.Read(buf)
				got = append(got, buf[:k]...)
				if err != nil {
					break
				}
			}
			if !strings.HasPrefix(string(got), "HTTP/1.0 200") || !strings.Contains(string(got), "10.0.2.2:") {
				errs <- fmt.Errorf("connection %d: %q", i, got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d concurrent requests through one published port in %v", n, time.Since(start).Round(time.Millisecond))
}

// TestPublishErrors checks the startup errors of -p.
func TestPublishErrors(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	l, err := nstest.ListenIn(w.host.Path, "tcp", "127.0.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	for _, c := range []struct{ spec, want string }{
		{"127.0.0.1:8080:80", "127.0.0.1:8080 is already in use"},
		{"127.0.0.1:80:80", "net.ipv4.ip_unprivileged_port_start"},
		{"198.51.100.7:8080:80", "198.51.100.7 is not an address of this host"},
		{"8080:0", "invalid publish spec"},
	} {
		t.Run(c.spec, func(t *testing.T) {
			f, err := w.lab.StartFerry(w.host, attachArgs(w, "-c", "-p", c.spec))
			if err != nil {
				t.Fatal(err)
			}
			code, err := f.Wait(10 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			// The last line is the error; warnings may come before it.
			lines := strings.Split(strings.TrimRight(f.Stderr(), "\n"), "\n")
			last := lines[len(lines)-1]
			if code != 1 || !strings.HasPrefix(last, "ferry: ") || !strings.Contains(last, c.want) {
				t.Errorf("ferry attach -p %s: exit %d, last stderr line %q; want 1 and \"ferry: ...%s...\"", c.spec, code, last, c.want)
			}
		})
	}
}

// TestPublishRuntimeErrorsKeepPorts adds bad ports through the API and
// checks that the published one keeps serving and ferry's log says why.
func TestPublishRuntimeErrorsKeepPorts(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	serveGuestPeer(t, w, 80)
	sock := filepath.Join(apiDir(t, w), "api.sock")
	f := w.attach(t, "-c", "-a", sock, "-p", "127.0.0.1:8080:80")
	for _, c := range []struct{ spec, log string }{
		{"127.0.0.1:8080:80", "127.0.0.1:8080 is already in use"},
		{"127.0.0.1:80:80", "net.ipv4.ip_unprivileged_port_start"},
		{"198.51.100.7:8081:80", "198.51.100.7 is not an address of this host"},
	} {
		res := ferryPort(t, w, "add", "--api", sock, c.spec)
		if res.ExitCode == 0 {
			t.Errorf("ferry port add %s worked, want an error", c.spec)
		}
		if !strings.Contains(f.Stderr(), c.log) {
			t.Errorf("ferry's log lacks %q", c.log)
		}
		curl(t, w, w.host, "http://127.0.0.1:8080/")
	}
	if res := ferryPort(t, w, "ls", "--api", sock); res.Stdout != "80/tcp -> 127.0.0.1:8080\n" {
		t.Errorf("ferry port ls = %q, want only the first port", res.Stdout)
	}
}

// TestPublishIPv6SourceAddress checks that with -6 an IPv6 client reaches
// the guest's IPv6 address from its own address, and an IPv6 loopback
// client appears as the IPv6 gateway.
func TestPublishIPv6SourceAddress(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	client := newClientNetns(t, w)
	_, err := nstest.ServeHTTP(t, w.guest.NetnsPath, "[::]:80", http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprint(rw, r.RemoteAddr)
	}))
	if err != nil {
		t.Fatal(err)
	}
	w.attach(t, "-c", "-6", "-p", "8080:80")
	if got := curl(t, w, client, "http://["+pubHostAddr6+"]:8080/"); !strings.HasPrefix(got, "["+pubClientAddr6+"]:") {
		t.Errorf("IPv6 client seen as %q, want its own address %s", got, pubClientAddr6)
	}
	if got := curl(t, w, w.host, "http://[::1]:8080/"); !strings.HasPrefix(got, "[fd00::2]:") {
		t.Errorf("IPv6 loopback client seen as %q, want the IPv6 gateway fd00::2", got)
	}
	if got := curl(t, w, client, "http://"+pubHostAddr+":8080/"); !strings.HasPrefix(got, pubClientAddr+":") {
		t.Errorf("IPv4 client seen as %q, want its own address", got)
	}
}

// TestPublishBulk moves 1 GiB each way through a published TCP port and
// checks the SHA-256 on both ends.
func TestPublishBulk(t *testing.T) {
	w := newWorld(t, 6*time.Minute)
	l, err := nstest.ListenIn(w.guest.NetnsPath, "tcp", "0.0.0.0:80")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	port := freeTCPPort(t)
	w.attach(t, "-c", "-p", fmt.Sprintf("127.0.0.1:%d:80", port))
	up, down := make(chan transfer, 1), make(chan transfer, 1)
	go func() { // the guest's server: take 1 GiB, then send 1 GiB back
		c, err := l.Accept()
		if err != nil {
			up <- transfer{err: err}
			down <- transfer{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		up <- hashAll(io.LimitReader(c, bulkSize))
		down <- sendAll(c, bulkData(2))
	}()
	c, err := nstest.DialIn(w.ctx, w.host.Path, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	sent := sendAll(c, bulkData(1))
	if got := <-up; sent.err != nil || got.err != nil || got.n != bulkSize || string(got.sum) != string(sent.sum) {
		t.Fatalf("host -> guest: sent %d (%v), guest got %d (%v), sums equal %v", sent.n, sent.err, got.n, got.err, string(got.sum) == string(sent.sum))
	}
	recv := hashAll(io.LimitReader(c, bulkSize))
	if back := <-down; back.err != nil || recv.err != nil || recv.n != bulkSize || string(recv.sum) != string(back.sum) {
		t.Fatalf("guest -> host: guest sent %d (%v), host got %d (%v), sums equal %v", back.n, back.err, recv.n, recv.err, string(recv.sum) == string(back.sum))
	}
}

// freeTCPPort returns a loopback port free right now.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
