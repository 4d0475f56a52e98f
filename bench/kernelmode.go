package main

import (
	"fmt"
	"strconv"
	"strings"
)

// The kernel-mode row (issue 8, item 3): TCP host -> guest through a port
// published with `ferry attach --port-driver=kernel`, where a socket made
// inside the guest's namespace is spliced to the host's (the guest sees
// 127.0.0.1, not the caller). Measured and labelled apart from the default
// userspace path, on a fresh guest and ferry, for ferry at MTU 65520 only;
// `-measure kernel` selects it.
const (
	mTCPInKernel  = "tcp_in_kernel_gbps"
	mCPUInKernel  = "cpu_s_per_gb_in_kernel"
	kernelMTU     = 65520
	kernelGoal    = 1.2 // ferry kernel mode over pasta, TCP host->guest
	kernelPeer    = "pasta"
	kernelRatioOf = " tcp_in kernel mode/"
)

// kernelModeRow measures the row for t (ferry at kernelMTU) into m and
// returns its problems, labelled with the run.
func (e *env) kernelModeRow(t tool, run, hostPort int, c config, m map[string]float64) []string {
	if !c.does("kernel") || t.Kind != "ferry" || t.MTU != kernelMTU {
		return nil
	}
	var problems []string
	fail := func(what string, err error) {
		problems = append(problems, fmt.Sprintf("%s run %d: kernel mode %s: %v", t.Name, run, what, err))
	}
	g, err := e.startGuest()
	if err != nil {
		fail("guest", err)
		return problems
	}
	in := &instance{e: e, t: t, guest: g, hostPort: hostPort, gw: "10.0.2.2", listen: "127.0.0.1"}
	defer in.close()
	if err := in.startWithReadyFD(e.ferry, "attach", "-c", "-m", strconv.Itoa(t.MTU), "-r", "3", "--port-driver=kernel",
		"-p", fmt.Sprintf("127.0.0.1:%d:%d", hostPort, guestPort), strconv.Itoa(g.pid()), "tap0"); err != nil {
		fail("start", err)
		return problems
	}
	guestIperf, err := e.start("guest iperf3", e.inGuest(in.guest, "iperf3", "-s", "-p", strconv.Itoa(guestPort)), nil, nil, nil)
	if err != nil {
		fail("guest iperf3", err)
		return problems
	}
	in.others = append(in.others, guestIperf)
	if err := waitListening(guestIperf, guestPort); err != nil {
		fail("guest iperf3", err)
		return problems
	}
	hp := in.helper.pid()
	gbps, cpu, err := e.iperfTCP(hp, e.asUser("iperf3", "-c", "127.0.0.1", "-p", strconv.Itoa(hostPort), "-t", strconv.Itoa(c.Secs), "-J"), c)
	if err != nil {
		fail("tcp in", err)
		return problems
	}
	m[mTCPInKernel], m[mCPUInKernel] = gbps, cpu
	return problems
}

// kernelRatios compares the kernel-mode row with the peers' (default)
// published-port throughput, which is the same measurement.
func kernelRatios(r *report) {
	for _, g := range groups(r.Tools) {
		k := r.Summary[g.Ferry][mTCPInKernel]
		if k == nil {
			continue
		}
		for _, p := range append([]string{g.Ferry}, g.Peers...) {
			if s := r.Summary[p][mTCPIn]; s != nil && s.Median > 0 {
				r.Ratios[g.Ferry+kernelRatioOf+p+" tcp_in"] = k.Median / s.Median
			}
		}
	}
}

// kernelMarkdown is the kernel-mode row's paragraph of the report.
func kernelMarkdown(r *report) string {
	var b strings.Builder
	for _, t := range r.Tools {
		k := r.Summary[t.Name][mTCPInKernel]
		if k == nil {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("Published port, kernel mode (`ferry attach --port-driver=kernel`, issue 8 item 3): a socket made inside the guest's namespace " +
				"and spliced to the host's; it does not preserve the caller's address (the guest sees 127.0.0.1), so it is measured and labelled apart, " +
				"on a fresh guest and ferry, against the same TCP host→guest measurement of the default path and the peers.\n\n")
		}
		fmt.Fprintf(&b, "- %s kernel mode: %s Gbit/s (median)", t.Name, num(k.Median))
		for _, p := range r.Tools {
			q, ok := r.Ratios[t.Name+kernelRatioOf+p.Name+" tcp_in"]
			if !ok {
				continue
			}
			name := p.Name
			if p.Name == t.Name {
				name = t.Name + " userspace mode"
			}
			fmt.Fprintf(&b, "; %.2f× %s", q, name)
			if p.Name == kernelPeer {
				verdict := "met"
				if q < kernelGoal {
					verdict = "NOT met"
				}
				fmt.Fprintf(&b, " (goal ≥ %.1f×: %s)", kernelGoal, verdict)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}
