package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// config is what one bench run measures and for how long.
type config struct {
	Runs       int    `json:"runs"`
	Secs       int    `json:"seconds_per_measurement"`
	UDPRate    string `json:"udp_offered_rate"`
	UDPLen     int    `json:"udp_datagram_bytes"`
	Conns      int    `json:"held_connections"`
	CPSWorkers int    `json:"cps_workers"`
	HoldPar    int    `json:"held_connections_opened_in_parallel"`
	HoldSecs   int    `json:"held_connections_timeout_seconds"`
	Measure    string `json:"measure"`
}

// does reports whether measurement what (tcp, udp, rr, cps, hold) is on.
func (c config) does(what string) bool {
	return c.Measure == "" || slices.Contains(strings.Split(c.Measure, ","), what)
}

// Metric keys, in table order.
const (
	mTCPOut     = "tcp_out_gbps"
	mTCPIn      = "tcp_in_gbps"
	mCPUOut     = "cpu_s_per_gb_out"
	mCPUIn      = "cpu_s_per_gb_in"
	mUDP        = "udp_recv_mbps"
	mUDPLoss    = "udp_loss_pct"
	mUDPCPU     = "cpu_s_per_gb_udp"
	mUDPIn      = "udp_in_recv_mbps"
	mUDPInLoss  = "udp_in_loss_pct"
	mUDPInCPU   = "cpu_s_per_gb_udp_in"
	mRRp50      = "rr_p50_us"
	mRRp99      = "rr_p99_us"
	mCPS        = "conn_per_s"
	mRSSIdle    = "rss_idle_mib"
	mRSSConns   = "rss_conns_mib"
	mOpenConns  = "open_conns_s"
	mHeld       = "held_conns"
	mRSSPerConn = "rss_per_conn_kib"
	mReady      = "ready_ms"
)

// measureOnce starts a fresh guest and helper for t and takes every
// measurement once. A failed measurement is reported and left out; the
// others still run.
func (e *env) measureOnce(t tool, hostPort int, c config) (map[string]float64, []string, error) {
	in, err := e.startInstance(t, hostPort)
	if err != nil {
		return nil, nil, err
	}
	defer in.close()
	m := map[string]float64{mReady: float64(in.ready.Microseconds()) / 1e3}
	var errs []string
	fail := func(what string, err error) {
		errs = append(errs, fmt.Sprintf("%s: %v", what, err))
	}
	if in.tapMTU != t.MTU {
		fail("mtu", fmt.Errorf("guest interface MTU is %d, want %d", in.tapMTU, t.MTU))
	}
	time.Sleep(300 * time.Millisecond)
	// hp is the helper's PID, 0 for bridge: it has no helper process, so
	// no CPU or RSS of one.
	hp := 0
	if in.helper != nil {
		hp = in.helper.pid()
		m[mRSSIdle] = rssMiB(hp)
	}

	hostIperf, err := e.start("host iperf3", e.asUser("iperf3", "-s", "-B", in.listen, "-p", strconv.Itoa(hostIperfPort)), nil, nil, nil)
	if err != nil {
		return nil, nil, err
	}
	in.others = append(in.others, hostIperf)
	guestIperf, err := e.start("guest iperf3", e.inGuest(in.guest, "iperf3", "-s", "-p", strconv.Itoa(guestPort)), nil, nil, nil)
	if err != nil {
		return nil, nil, err
	}
	in.others = append(in.others, guestIperf)
	if err := waitListening(hostIperf, hostIperfPort); err != nil {
		return nil, nil, fmt.Errorf("host iperf3: %w", err)
	}
	if err := waitListening(guestIperf, guestPort); err != nil {
		return nil, nil, fmt.Errorf("guest iperf3: %w", err)
	}
	secs := strconv.Itoa(c.Secs)
	if c.does("tcp") {
		// TCP guest -> host loopback.
		if gbps, cpu, err := e.iperfTCP(hp, e.inGuest(in.guest, "iperf3", "-c", in.gw, "-p", strconv.Itoa(hostIperfPort), "-t", secs, "-J"), c); err != nil {
			fail("tcp out", err)
		} else {
			m[mTCPOut] = gbps
			if hp != 0 {
				m[mCPUOut] = cpu
			}
		}
		// TCP host -> guest through the published port.
		if gbps, cpu, err := e.iperfTCP(hp, e.asUser("iperf3", "-c", "127.0.0.1", "-p", strconv.Itoa(hostPort), "-t", secs, "-J"), c); err != nil {
			fail("tcp in", err)
		} else {
			m[mTCPIn] = gbps
			if hp != 0 {
				m[mCPUIn] = cpu
			}
		}
	}
	if c.does("udp") {
		// UDP guest -> host loopback at a fixed offered rate, then the
		// same host -> guest: the guest's iperf3 asks (-R) and the host's
		// sends back through the flow the guest opened.
		for _, dir := range []struct {
			name                 string
			flags                []string
			mbps, loss, cpuPerGB string
		}{
			{"udp", []string{"-u"}, mUDP, mUDPLoss, mUDPCPU},
			{"udp -R", []string{"-u", "-R"}, mUDPIn, mUDPInLoss, mUDPInCPU},
		} {
			c0 := cpuSeconds(hp)
			argv := append(append([]string{"iperf3"}, dir.flags...), "-c", in.gw, "-p", strconv.Itoa(hostIperfPort),
				"-b", c.UDPRate, "-l", strconv.Itoa(c.UDPLen), "-t", secs, "-J")
			out, err := e.run("iperf3 "+dir.name, e.inGuest(in.guest, argv...), time.Duration(c.Secs+30)*time.Second)
			cpu := cpuSeconds(hp) - c0
			if err == nil {
				var recvMbps, loss, gb float64
				if recvMbps, loss, gb, err = parseIperfUDP(out); err == nil {
					m[dir.mbps], m[dir.loss] = recvMbps, loss
					if gb > 0 && hp != 0 {
						m[dir.cpuPerGB] = cpu / gb
					}
				}
			}
			if err != nil {
				fail(dir.name, err)
			}
		}
	}

	load := fmt.Sprintf("%s:%d", in.gw, loadPort)
	dur := fmt.Sprintf("%ds", c.Secs)
	if c.does("rr") {
		var rr rrResult
		if err := e.runJSON("rr", e.inGuest(in.guest, e.self, "rr", "-addr", load, "-d", dur), time.Duration(c.Secs+30)*time.Second, &rr); err != nil {
			fail("rr", err)
		} else {
			m[mRRp50], m[mRRp99] = rr.P50us, rr.P99us
		}
	}
	if c.does("cps") {
		var cps cpsResult
		if err := e.runJSON("cps", e.inGuest(in.guest, e.self, "cps", "-addr", load, "-d", dur, "-c", strconv.Itoa(c.CPSWorkers)), time.Duration(c.Secs+30)*time.Second, &cps); err != nil {
			fail("cps", err)
		} else {
			m[mCPS] = cps.PerSec
			if cps.Errors > 0 {
				fail("cps", fmt.Errorf("%d of %d connections failed", cps.Errors, cps.Errors+cps.Conns))
			}
		}
	}
	if in.helper != nil && !in.helper.alive() {
		fail("helper", fmt.Errorf("exited during the run: %v; stderr: %q", in.helper.cmd.ProcessState, in.helper.stderrString()))
	}
	in.close()
	if c.does("hold") {
		// On a fresh guest and helper: the connections the tests above
		// closed (TIME_WAIT, teardown) must not be in the way, nor these
		// in theirs.
		hold, err := e.startInstance(t, hostPort+1000)
		if err != nil {
			fail("hold", err)
			return m, errs, nil
		}
		defer hold.close()
		e.holdConns(hold, fmt.Sprintf("%s:%d", hold.gw, loadPort), c, m, fail)
		if hold.helper != nil && !hold.helper.alive() {
			fail("helper", fmt.Errorf("exited while holding connections: %v; stderr: %q", hold.helper.cmd.ProcessState, hold.helper.stderrString()))
		}
	}
	return m, errs, nil
}

// iperfTCP runs an iperf3 TCP client and returns the received Gbit/s and
// the helper's CPU seconds per GB received.
func (e *env) iperfTCP(helperPID int, argv []string, c config) (gbps, cpuPerGB float64, err error) {
	c0 := cpuSeconds(helperPID)
	out, err := e.run("iperf3 tcp", argv, time.Duration(c.Secs+30)*time.Second)
	cpu := cpuSeconds(helperPID) - c0
	if err != nil {
		return 0, 0, err
	}
	var r struct {
		End struct {
			SumReceived struct {
				Bytes       float64 `json:"bytes"`
				BitsPerSecs float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, 0, fmt.Errorf("iperf3 output: %w", err)
	}
	if r.Error != "" {
		return 0, 0, errors.New("iperf3: " + r.Error)
	}
	gb := r.End.SumReceived.Bytes / 1e9
	if gb == 0 {
		return 0, 0, errors.New("iperf3 moved nothing")
	}
	return r.End.SumReceived.BitsPerSecs / 1e9, cpu / gb, nil
}

// parseIperfUDP returns the received Mbit/s, the loss in percent and the
// GB received of an iperf3 UDP client's JSON.
func parseIperfUDP(out []byte) (mbps, loss, gb float64, err error) {
	type sum struct {
		Bytes       float64 `json:"bytes"`
		Seconds     float64 `json:"seconds"`
		BitsPerSecs float64 `json:"bits_per_second"`
		LostPercent float64 `json:"lost_percent"`
		Packets     float64 `json:"packets"`
		LostPackets float64 `json:"lost_packets"`
	}
	var r struct {
		End struct {
			Sum         sum  `json:"sum"`
			SumReceived *sum `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, 0, 0, fmt.Errorf("iperf3 output: %w", err)
	}
	if r.Error != "" {
		return 0, 0, 0, errors.New("iperf3: " + r.Error)
	}
	s := r.End.Sum
	if s.Packets == 0 {
		return 0, 0, 0, errors.New("iperf3 sent nothing")
	}
	loss = 100 * s.LostPackets / s.Packets
	if rs := r.End.SumReceived; rs != nil && rs.Seconds > 0 {
		return rs.BitsPerSecs / 1e6, loss, rs.Bytes / 1e9, nil
	}
	recv := s.Bytes * (1 - loss/100)
	return s.BitsPerSecs * (1 - loss/100) / 1e6, loss, recv / 1e9, nil
}

// runJSON runs argv and decodes its stdout into v.
func (e *env) runJSON(name string, argv []string, timeout time.Duration, v any) error {
	out, err := e.run(name, argv, timeout)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("%s output %q: %w", name, out, err)
	}
	return nil
}

// holdConns opens c.Conns connections from the guest to the load server
// and records how many opened, how long that took (when all did) and the
// helper's RSS while they are open, also per connection over its idle RSS.
func (e *env) holdConns(in *instance, addr string, c config, m map[string]float64, fail func(string, error)) {
	time.Sleep(300 * time.Millisecond)
	idle := 0.0
	if in.helper != nil {
		idle = rssMiB(in.helper.pid())
	}
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		fail("hold", err)
		return
	}
	defer stdinW.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		stdinR.Close()
		fail("hold", err)
		return
	}
	defer outR.Close()
	p, err := e.start("hold", e.inGuest(in.guest, e.self, "hold", "-addr", addr, "-n", strconv.Itoa(c.Conns),
		"-par", strconv.Itoa(c.HoldPar), "-timeout", fmt.Sprintf("%ds", c.HoldSecs)), nil, outW, stdinR)
	stdinR.Close()
	outW.Close()
	if err != nil {
		fail("hold", err)
		return
	}
	defer func() {
		stdinW.Close()
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			p.kill()
		}
	}()
	outR.SetReadDeadline(time.Now().Add(time.Duration(c.HoldSecs+30) * time.Second))
	line, err := bufio.NewReader(outR).ReadBytes('\n')
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		fail("hold", fmt.Errorf("%v; stderr: %q", err, p.stderrString()))
		return
	}
	var r holdResult
	if err := json.Unmarshal(line, &r); err != nil {
		fail("hold", fmt.Errorf("output %q: %w", line, err))
		return
	}
	m[mHeld] = float64(r.Open)
	if in.helper != nil {
		time.Sleep(time.Second)
		rss := rssMiB(in.helper.pid())
		m[mRSSConns] = rss
		if r.Open > 0 {
			m[mRSSPerConn] = (rss - idle) * 1024 / float64(r.Open)
		}
	}
	if r.Open < c.Conns {
		fail("hold", fmt.Errorf("only %d of %d connections opened in %.1fs (%d failed attempts, first: %s)", r.Open, c.Conns, r.Seconds, r.Errors, r.Err))
		return
	}
	m[mOpenConns] = r.Seconds
}

// waitListening waits until p's network namespace has a TCP listener on
// port.
func waitListening(p *proc, port int) error {
	hexPort := fmt.Sprintf(":%04X", port)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, f := range []string{"tcp", "tcp6"} {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", p.pid(), f))
			for _, l := range strings.Split(string(b), "\n") {
				fl := strings.Fields(l)
				if len(fl) > 3 && strings.HasSuffix(fl[1], hexPort) && fl[3] == "0A" {
					return nil
				}
			}
		}
		if !p.alive() {
			return fmt.Errorf("exited: %s", p.stderrString())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("not listening on port %d after 10s", port)
}

// cpuSeconds is the user+system CPU time of pid and its live descendants
// (slirp4netns's helper children), from /proc/PID/stat; 0 for PID 0 (no
// helper).
func cpuSeconds(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	var ticks int64
	for _, p := range append([]int{pid}, descendants(pid)...) {
		f := statFields(p)
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + s
	}
	return float64(ticks) / 100 // USER_HZ
}

// rssMiB is the VmRSS of pid and its live descendants, in MiB; 0 for PID
// 0 (no helper).
func rssMiB(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	var kb int64
	for _, p := range append([]int{pid}, descendants(pid)...) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				kb += n
			}
		}
	}
	return float64(kb) / 1024
}
