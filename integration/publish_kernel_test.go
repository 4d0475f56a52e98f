package integration

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// kernelBulk is the size of each bulk transfer through a kernel-mode port.
const kernelBulk = 256 << 20

// kernelPayload is a deterministic pseudo-random stream of n bytes.
func kernelPayload(n int) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{'f', 'e', 'r', 'r', 'y'}), int64(n))
}

// serveKernelBulk serves, inside the guest, an upload sink on 0.0.0.0:9000
// (it reads until the client's half-close, then answers the sha256 of what
// it read) and a download source on 0.0.0.0:9001 (it sends kernelBulk
// bytes, half-closes, then reads one line from the client, which it
// passes to the channel it returns).
func serveKernelBulk(t *testing.T, w *world) <-chan string {
	t.Helper()
	up, err := nstest.ListenIn(w.guest.NetnsPath, "tcp", "0.0.0.0:9000")
	if err != nil {
		t.Fatal(err)
	}
	down, err := nstest.ListenIn(w.guest.NetnsPath, "tcp", "0.0.0.0:9001")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close(); down.Close() })
	lines := make(chan string, 4)
	serve := func(l net.Listener, fn func(c *net.TCPConn)) {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(time.Minute))
				fn(c.(*net.TCPConn))
			}()
		}
	}
	go serve(up, func(c *net.TCPConn) {
		h := sha256.New()
		io.Copy(h, c)
		fmt.Fprintf(c, "%x\n", h.Sum(nil))
	})
	go serve(down, func(c *net.TCPConn) {
		if _, err := io.Copy(c, kernelPayload(kernelBulk)); err != nil {
			return
		}
		c.CloseWrite()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			line = "error: " + err.Error()
		}
		lines <- line
	})
	return lines
}

// TestPublishKernel checks --port-driver=kernel in the default sandbox.
func TestPublishKernel(t *testing.T) { testPublishKernel(t, false) }

// TestPublishKernelNoSandbox checks --port-driver=kernel with --no-sandbox,
// and that the port helper follows a ferry that is killed.
func TestPublishKernelNoSandbox(t *testing.T) { testPublishKernel(t, true) }

func testPublishKernel(t *testing.T, noSandbox bool) {
	w := newWorld(t, 3*time.Minute)
	serveGuestPeer(t, w, 80)
	lines := serveKernelBulk(t, w)
	echoUDP(t, w.guest.NetnsPath, "0.0.0.0:5353")
	sock := filepath.Join(apiDir(t, w), "api.sock")
	flags := []string{"-c", "--port-driver=kernel", "--api-socket", sock,
		"-p", "127.0.0.1:8080:80", "-p", "127.0.0.1:8082:81", "-p", "127.0.0.1:9000:9000",
		"-p", "127.0.0.1:9001:9001", "-p", "127.0.0.1:5353:5353/udp"}
	if noSandbox {
		flags = append(flags, "--no-sandbox")
	}
	f := w.attach(t, flags...)

	// The helper runs as the test user, in the guest's namespaces.
	helper := func() []string {
		procs, err := nstest.UserProcesses(context.WithoutCancel(w.ctx), w.lab.User.Name)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range procs {
			if strings.Contains(p, "ferry-port-dialer") {
				out = append(out, p)
			}
		}
		return out
	}
	if h := helper(); len(h) != 1 {
		t.Fatalf("want one port helper running, have %q", h)
	}

	// The documented trade-off: the guest sees 127.0.0.1.
	if got := curl(t, w, w.host, "http://127.0.0.1:8080/"); !strings.HasPrefix(got, "127.0.0.1:") {
		t.Errorf("client seen by the guest as %q, want 127.0.0.1 (kernel mode)", got)
	}
	// A closed guest port: the client is refused promptly.
	curlRefused(t, w, w.host, "http://127.0.0.1:8082/")

	// A port added at run time through the API uses the same driver.
	if res := ferryPort(t, w, "add", "--api", sock, "127.0.0.1:8081:80"); res.ExitCode != 0 {
		t.Fatalf("ferry port add failed: %s", res)
	}
	if got := curl(t, w, w.host, "http://127.0.0.1:8081/"); !strings.HasPrefix(got, "127.0.0.1:") {
		t.Errorf("client of the API's port seen as %q, want 127.0.0.1", got)
	}

	dial := func(addr string) *net.TCPConn {
		c, err := nstest.DialIn(w.ctx, w.host.Path, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(time.Minute))
		return c.(*net.TCPConn)
	}
	want := sha256.New()
	io.Copy(want, kernelPayload(kernelBulk))
	wantSum := hex.EncodeToString(want.Sum(nil))

	// Upload, then half-close: the guest sees EOF and still answers.
	start := time.Now()
	c := dial("127.0.0.1:9000")
	if _, err := io.Copy(c, kernelPayload(kernelBulk)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(c)
	c.Close()
	if err != nil || strings.TrimSpace(string(reply)) != wantSum {
		t.Fatalf("upload: guest's sha256 %q (%v), want %s", reply, err, wantSum)
	}
	t.Logf("upload of %d MiB: %v", kernelBulk>>20, time.Since(start).Round(time.Millisecond))

	// Download until the guest's half-close, then talk back.
	start = time.Now()
	c = dial("127.0.0.1:9001")
	h := sha256.New()
	r := bufio.NewReaderSize(c, 1<<20)
	if _, err := io.Copy(h, io.LimitReader(r, kernelBulk)); err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != wantSum {
		t.Fatalf("download sha256 %s, want %s", got, wantSum)
	}
	if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the download: %d bytes, %v; want EOF (the guest's half-close)", n, err)
	}
	fmt.Fprintf(c, "thanks\n")
	select {
	case line := <-lines:
		if line != "thanks\n" {
			t.Fatalf("after its half-close the guest read %q, want \"thanks\"", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("after its half-close the guest read nothing from the client")
	}
	c.Close()
	t.Logf("download of %d MiB: %v", kernelBulk>>20, time.Since(start).Round(time.Millisecond))

	// UDP through the namespace's loopback.
	uc, err := nstest.DialIn(w.ctx, w.host.Path, "udp", "127.0.0.1:5353")
	if err != nil {
		t.Fatal(err)
	}
	got := ""
	buf := make([]byte, 100)
	for try := 0; try < 5 && got != "hello"; try++ {
		uc.Write([]byte("hello"))
		uc.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := uc.Read(buf); err == nil {
			got = string(buf[:n])
		}
	}
	uc.Close()
	if got != "hello" {
		t.Errorf("UDP echo through a kernel-mode port: %q", got)
	}

	// Once ferry is gone, so is the helper.
	if noSandbox {
		f.Signal(syscall.SIGKILL)
		f.Wait(10 * time.Second)
	} else if err := f.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for len(helper()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if h := helper(); len(h) > 0 {
		t.Fatalf("port helper left after ferry exited: %q", h)
	}
	// And the port with it.
	if c, err := nstest.DialIn(w.ctx, w.host.Path, "tcp", "127.0.0.1:8080"); err == nil {
		c.Close()
		t.Errorf("127.0.0.1:8080 still accepts after ferry exited")
	}
}

// TestPublishKernelRun publishes a port of a command started by ferry run
// in kernel mode: the command sees its client as 127.0.0.1.
func TestPublishKernelRun(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	if got := curlRunServer(t, w, "--port-driver=kernel"); got != "from-run 127.0.0.1" {
		t.Errorf("curl through ferry run --port-driver=kernel -p: %q, want the guest to see 127.0.0.1", got)
	}
}
