package integration

import (
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// exitBound is how soon ferry must exit after its reason to.
const exitBound = time.Second

type ipAddrInfo struct {
	Family    string `json:"family"`
	Local     string `json:"local"`
	PrefixLen int    `json:"prefixlen"`
}

type ipLink struct {
	IfName   string       `json:"ifname"`
	Flags    []string     `json:"flags"`
	MTU      int          `json:"mtu"`
	AddrInfo []ipAddrInfo `json:"addr_info"`
}

type ipRoute struct {
	Dst     string `json:"dst"`
	Gateway string `json:"gateway"`
	Dev     string `json:"dev"`
}

func TestReadyAndConfigure(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	f := w.attach(t, "-c")

	var links []ipLink
	out := w.mustInGuest(t, "ip", "-j", "addr", "show").Stdout
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		t.Fatalf("parse ip -j addr: %v\n%s", err, out)
	}
	byName := map[string]ipLink{}
	for _, l := range links {
		byName[l.IfName] = l
	}
	lo, ok := byName["lo"]
	if !ok || !slices.Contains(lo.Flags, "UP") {
		t.Errorf("lo is not up in the guest: %+v", lo)
	}
	tap, ok := byName["tap0"]
	if !ok {
		t.Fatalf("no tap0 in the guest:\n%s", out)
	}
	if !slices.Contains(tap.Flags, "UP") {
		t.Errorf("tap0 is not up: flags %v", tap.Flags)
	}
	if tap.MTU != 65520 {
		t.Errorf("tap0 MTU = %d, want 65520", tap.MTU)
	}
	if !slices.ContainsFunc(tap.AddrInfo, func(a ipAddrInfo) bool {
		return a.Family == "inet" && a.Local == "10.0.2.100" && a.PrefixLen == 24
	}) {
		t.Errorf("tap0 lacks 10.0.2.100/24: %+v", tap.AddrInfo)
	}

	var routes []ipRoute
	out = w.mustInGuest(t, "ip", "-j", "-4", "route", "show", "default").Stdout
	if err := json.Unmarshal([]byte(out), &routes); err != nil {
		t.Fatalf("parse ip -j route: %v\n%s", err, out)
	}
	if !slices.ContainsFunc(routes, func(r ipRoute) bool {
		return r.Dst == "default" && r.Gateway == "10.0.2.2" && r.Dev == "tap0"
	}) {
		t.Errorf("no default route via 10.0.2.2 dev tap0: %s", out)
	}
	if s := f.Stdout(); s != "" {
		t.Errorf("ferry wrote to stdout: %q", s)
	}
}

// expectPromptExit waits for ferry to exit after since and checks it exited
// with 0 within exitBound and left no process of the test user but those
// in keep.
func expectPromptExit(t *testing.T, w *world, f *nstest.Ferry, since time.Time, keep ...int) {
	t.Helper()
	code, err := f.Wait(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if took := f.ExitedAt().Sub(since); took > exitBound {
		t.Errorf("ferry took %v to exit, want at most %v", took.Round(time.Millisecond), exitBound)
	}
	if code != 0 {
		t.Errorf("ferry exited with %d, want 0; stderr:\n%s", code, f.Stderr())
	}
	if s := f.Stdout(); s != "" {
		t.Errorf("ferry wrote to stdout: %q", s)
	}
	procs, err := nstest.UserProcesses(w.ctx, w.lab.User.Name)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		pid, _, _ := strings.Cut(p, " ")
		if n, _ := strconv.Atoi(pid); !slices.Contains(keep, n) {
			t.Errorf("process of %s left after ferry exited: %s", w.lab.User.Name, p)
		}
	}
}

func TestExitWhenTargetExits(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	f := w.attach(t, "-c")
	start := time.Now()
	if err := w.guest.Kill(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	expectPromptExit(t, w, f, start)
}

func TestExitWhenExitFDHangsUp(t *testing.T) {
	w := newWorld(t, 2*time.Minute)
	ready, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer ready.Close()
	exitR, exitW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer exitW.Close()
	f, err := w.lab.StartFerry(w.host, nstest.FerryOpts{
		Args:       []string{"attach", "-c", "-r", "3", "-e", "4", strconv.Itoa(w.guest.PID)},
		ExtraFiles: []*os.File{readyW, exitR},
	})
	readyW.Close()
	exitR.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := nstest.WaitReady(w.ctx, ready, f, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	// Still running while the exit fd is open.
	select {
	case <-f.Done():
		t.Fatalf("ferry exited while its exit fd was open; stderr:\n%s", f.Stderr())
	case <-time.After(300 * time.Millisecond):
	}
	start := time.Now()
	exitW.Close()
	expectPromptExit(t, w, f, start, w.guest.PID)
}

func TestExitOnSignal(t *testing.T) {
	requireRoot(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			w := newWorld(t, 2*time.Minute)
			f := w.attach(t, "-c")
			start := time.Now()
			if err := f.Signal(sig); err != nil {
				t.Fatal(err)
			}
			expectPromptExit(t, w, f, start, w.guest.PID)
		})
	}
}
