package integration

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

const page = "hello from the host's loopback\n"

// serveHostPage serves page on the host namespace's 127.0.0.1 and returns
// the port and a counter of requests served.
func serveHostPage(t *testing.T, w *world) (int, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	port, err := nstest.ServeHTTP(t, w.host.Path, "127.0.0.1:0", http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprint(rw, page)
	}))
	if err != nil {
		t.Fatal(err)
	}
	return port, &hits
}

func TestHTTPToHostLoopback(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	port, hits := serveHostPage(t, w)
	w.attach(t, "-c")
	url := fmt.Sprintf("http://10.0.2.2:%d/", port)
	res := w.mustInGuest(t, "curl", "-s", "--max-time", "10", url)
	if res.Stdout != page {
		t.Errorf("curl %s printed %q, want %q", url, res.Stdout, page)
	}
	if hits.Load() != 1 {
		t.Errorf("server saw %d requests, want 1", hits.Load())
	}
}

func TestDisableHostLoopback(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	port, hits := serveHostPage(t, w)
	w.attach(t, "-c", "--disable-host-loopback")
	url := fmt.Sprintf("http://10.0.2.2:%d/", port)
	res := w.inGuest(t, "curl", "-sS", "--max-time", "10", url)
	if res.ExitCode == 0 {
		t.Fatalf("curl %s succeeded despite --disable-host-loopback: %s", url, res)
	}
	if res.Elapsed >= 3*time.Second {
		t.Errorf("curl took %v to fail, want it refused promptly (< 3s): %s", res.Elapsed, res)
	}
	// slirp4netns answers with ICMP "network unreachable", not a reset.
	_, err := nstest.DialIn(w.ctx, w.guest.NetnsPath, "tcp", fmt.Sprintf("10.0.2.2:%d", port))
	if !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("dial 10.0.2.2:%d from the guest: %v, want %v", port, err, syscall.ENETUNREACH)
	}
	if hits.Load() != 0 {
		t.Errorf("server saw %d requests, want none", hits.Load())
	}
	t.Logf("curl failed as expected: %s", strings.TrimSpace(res.Stderr))
}
