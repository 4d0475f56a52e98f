package integration

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/ferrynet/ferry/integration/nstest"
)

// Churn sizes: CI runs this short form; FERRY_SOAK=1 (make soak) the long.
func churnSizes() (short, concurrent int) {
	if os.Getenv("FERRY_SOAK") != "" {
		return 1_000_000, 10_000
	}
	return 50_000, 2_000
}

// inGuestNetns runs f on a thread that has entered the network namespace
// at path; sockets f makes live there. The thread is never handed back.
func inGuestNetns(path string, f func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread dies with the goroutine
		h, err := netns.GetFromPath(path)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		f()
		errc <- nil
	}()
	return <-errc
}

// procUsage reads a process's RSS (KiB) and open fd count.
func procUsage(t *testing.T, pid int) (rssKiB, fds int) {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			rssKiB, _ = strconv.Atoi(strings.Fields(v)[0])
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return rssKiB, len(ents)
}

// waitBaseline waits until ferry's fds and RSS are back within 10% of the
// baseline (plus a little slack for small absolute numbers).
func waitBaseline(t *testing.T, pid, baseRSS, baseFDs int, phase string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rss, fds := procUsage(t, pid)
		if rss <= baseRSS*11/10+1024 && fds <= baseFDs*11/10+2 {
			t.Logf("%s: back to RSS %d KiB (baseline %d), %d fds (baseline %d)", phase, rss, baseRSS, fds, baseFDs)
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: RSS %d KiB (baseline %d), %d fds (baseline %d) 30 s later: not back within 10%%", phase, rss, baseRSS, fds, baseFDs)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestChurn opens many short connections, then many concurrent ones,
// through ferry: every one succeeds, and ferry's memory and fds return to
// their baseline after each phase.
//
// The server closes first, so ferry's stack holds TIME-WAIT toward the
// guest, and the guest (which keeps none) reuses its source ports within a
// second or two at these rates: a SYN on a tuple still in TIME-WAIT used to
// be dropped (the connection took a second, counted as slow below) or, as
// the TIME-WAIT timer fired, answered with a RST, about one connection in
// 20,000 (see stack/timewait.go). On failure the test prints ferry's drops
// by cause; FERRY_CHURN_PCAP=FILE records the guest's frames.
func TestChurn(t *testing.T) {
	short, concurrent := churnSizes()
	w := newWorld(t, 10*time.Minute)
	l, err := nstest.ListenIn(w.host.Path, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { // one request, one answer, and the server closes first
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				b := make([]byte, 1)
				if _, err := c.Read(b); err == nil {
					c.Write(b)
				}
			}()
		}
	}()
	sock := apiSocketPath(t)
	flags := []string{"-c", "--api-socket", sock}
	if p := os.Getenv("FERRY_CHURN_PCAP"); p != "" { // when chasing a failure
		flags = append(flags, "--pcap", p)
	}
	f := w.attach(t, flags...)
	stats := func() string {
		res, err := nstest.MustExec(w.ctx, "ip", "netns", "exec", w.host.Name, "setpriv", "--reuid="+fmt.Sprint(w.lab.User.UID),
			"--regid="+fmt.Sprint(w.lab.User.GID), "--init-groups", w.lab.Ferry, "stats", "--api", sock)
		if err != nil {
			return fmt.Sprintf("(ferry stats: %v)", err)
		}
		return strings.TrimSpace(res.Stdout)
	}
	addr := fmt.Sprintf("10.0.2.2:%d", l.Addr().(*net.TCPAddr).Port)
	var slow atomic.Int64 // connections that took a SYN retransmission or more
	oneRequest := func() error {
		begin := time.Now()
		defer func() {
			if time.Since(begin) >= 900*time.Millisecond {
				slow.Add(1)
			}
		}()
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte{'x'}); err != nil {
			return err
		}
		// Read to the server's EOF: the server closes first, so TIME_WAIT
		// stays on its side and ferry's host ports are not used up.
		b, err := io.ReadAll(c)
		if err == nil && len(b) != 1 {
			err = fmt.Errorf("got %d bytes, want 1", len(b))
		}
		return err
	}
	// churn makes n short connections from 16 threads of the guest and
	// returns how many failed, by kind, with the first error of each.
	churn := func(n int) (failed int64, kinds map[string]int, firsts map[string]error) {
		var wg sync.WaitGroup
		var next, fails atomic.Int64
		var mu sync.Mutex
		kinds, firsts = map[string]int{}, map[string]error{}
		fail := func(err error) {
			fails.Add(1)
			k := failureKind(err)
			mu.Lock()
			defer mu.Unlock()
			kinds[k]++
			if firsts[k] == nil {
				firsts[k] = err
			}
		}
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := inGuestNetns(w.guest.NetnsPath, func() {
					for next.Add(1) <= int64(n) {
						if err := oneRequest(); err != nil {
							fail(err)
						}
					}
				})
				if err != nil {
					fail(err)
				}
			}()
		}
		wg.Wait()
		return fails.Load(), kinds, firsts
	}

	if failed, kinds, firsts := churn(2000); failed > 0 {
		t.Fatalf("warm-up: %d connections failed %v, first of each: %v\nferry stats: %s", failed, kinds, firsts, stats())
	}
	time.Sleep(2 * time.Second)
	baseRSS, baseFDs := procUsage(t, f.PID())
	t.Logf("baseline after warm-up: RSS %d KiB, %d fds", baseRSS, baseFDs)

	start := time.Now()
	slow.Store(0)
	failed, kinds, firsts := churn(short)
	elapsed := time.Since(start)
	t.Logf("%d short connections in %v (%.0f/s), %d took 0.9 s or more", short, elapsed.Round(time.Millisecond), float64(short)/elapsed.Seconds(), slow.Load())
	if failed > 0 {
		t.Errorf("%d of %d short connections failed %v, first of each: %v\nferry stats: %s", failed, short, kinds, firsts, stats())
	} else {
		t.Logf("ferry stats: %s", stats())
	}
	waitBaseline(t, f.PID(), baseRSS, baseFDs, "after the short connections")

	// Many at once: open them all, check the peak, close them all.
	var conns []net.Conn
	var mu sync.Mutex
	err = inGuestNetns(w.guest.NetnsPath, func() {
		for range concurrent {
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				t.Errorf("concurrent connection %d: %v", len(conns), err)
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	rss, fds := procUsage(t, f.PID())
	t.Logf("%d connections open: RSS %d KiB (%.1f KiB each over baseline), %d fds", len(conns), rss,
		float64(rss-baseRSS)/float64(max(1, len(conns))), fds)
	for _, c := range conns {
		c.Close()
	}
	waitBaseline(t, f.PID(), baseRSS, baseFDs, "after the concurrent connections")
}

// failureKind names the way a guest connection failed.
func failureKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no-local-port"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "other"
}

// TestKill9LeavesNothing kills ferry with SIGKILL: its TAP goes from the
// guest, its published port is free again, no process is left.
func TestKill9LeavesNothing(t *testing.T) {
	w := newWorld(t, time.Minute)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	f := w.attach(t, "-c", "-p", fmt.Sprintf("127.0.0.1:%d:80", port))
	if err := f.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Wait(5 * time.Second); err != nil {
		t.Fatalf("ferry did not die: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		res := w.inGuest(t, "ip", "link", "show", "tap0")
		if res.ExitCode != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tap0 still in the guest after ferry was killed:\n%s", res.Stdout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ln, err := nstest.ListenIn(w.host.Path, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Errorf("published port still taken after ferry was killed: %v", err)
	} else {
		ln.Close()
	}
}
