package main

import (
	"fmt"
	"slices"
	"strings"
)

// metric describes one row of the table.
type metric struct {
	key    string
	label  string
	higher bool // higher is better
}

var metrics = []metric{
	{mTCPOut, "TCP guest→host, Gbit/s", true},
	{mTCPIn, "TCP host→guest (published port), Gbit/s", true},
	{mCPUOut, "CPU s per GB, TCP guest→host", false},
	{mCPUIn, "CPU s per GB, TCP host→guest", false},
	{mUDP, "UDP guest→host received, Mbit/s", true},
	{mUDPLoss, "UDP loss, %", false},
	{mUDPCPU, "CPU s per GB, UDP guest→host", false},
	{mUDPIn, "UDP host→guest received, Mbit/s", true},
	{mUDPInLoss, "UDP host→guest loss, %", false},
	{mUDPInCPU, "CPU s per GB, UDP host→guest", false},
	{mRRp50, "TCP 1-byte RR latency p50, µs", false},
	{mRRp99, "TCP 1-byte RR latency p99, µs", false},
	{mCPS, "TCP connections/s (connect, 1 req, close)", true},
	{mRSSIdle, "RSS idle, MiB", false},
	{mHeld, "connections held open (of N)", true},
	{mRSSConns, "RSS holding them, MiB", false},
	{mRSSPerConn, "RSS per held connection over idle, KiB", false},
	{mOpenConns, "time to open all N connections, s", false},
	{mReady, "start to ready, ms", false},
	{mTCPInKernel, "TCP host→guest, published port, kernel mode (guest sees 127.0.0.1), Gbit/s", true},
	{mCPUInKernel, "CPU s per GB, TCP host→guest, kernel mode", false},
	{mHostileQuiet, "hostile row: TCP guest→host alone, Gbit/s", true},
	{mHostileFlood, "hostile row: the same under the guest's floods, Gbit/s", true},
	{mHostileRSS, "hostile row: RSS after the floods, MiB", false},
	{mHostileQuietCPU, "hostile row: CPU s per GB alone", false},
	{mHostileFloodCPU, "hostile row: CPU s per GB under the floods", false},
	{mHostileFlooderCPU, "hostile row: the flooder's own CPU, % of a core", false},
	{mHostileFrameCPU, "hostile row: ferry's CPU per frame of the flood alone (no transfer), µs", false},
}

// stat is one tool's spread of one metric over the runs.
type stat struct {
	N      int       `json:"n"`
	Min    float64   `json:"min"`
	Median float64   `json:"median"`
	Max    float64   `json:"max"`
	Values []float64 `json:"values"`
}

func summarize(vs []float64) *stat {
	if len(vs) == 0 {
		return nil
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return &stat{N: len(s), Min: s[0], Median: med, Max: s[len(s)-1], Values: vs}
}

// group is ferry at one MTU and the peers it is compared with.
type group struct {
	MTU   int
	Ferry string
	Peers []string
}

func groups(tools []tool) []group {
	var gs []group
	for _, f := range tools {
		if f.Kind != "ferry" {
			continue
		}
		g := group{MTU: f.MTU, Ferry: f.Name}
		for _, p := range tools {
			if p.Kind != "ferry" && p.MTU == f.MTU {
				g.Peers = append(g.Peers, p.Name)
			}
		}
		gs = append(gs, g)
	}
	// Peers with no ferry at their MTU get a table of their own.
	for _, p := range tools {
		if p.Kind == "ferry" || slices.ContainsFunc(gs, func(g group) bool { return g.MTU == p.MTU }) {
			continue
		}
		gs = append(gs, group{MTU: p.MTU, Peers: []string{p.Name}})
	}
	return gs
}

// ratio is ferry's median over a peer's, or 0 when either is missing.
func ratio(sum map[string]map[string]*stat, ferry, peer, key string) float64 {
	f, p := sum[ferry][key], sum[peer][key]
	if f == nil || p == nil || p.Median == 0 {
		return 0
	}
	return f.Median / p.Median
}

func num(v float64) string {
	a := v
	if a < 0 {
		a = -a
	}
	switch {
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 0.1 || a == 0:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// markdown renders the report.
func markdown(r *report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## ferry bench (%s)\n\n", r.Started)
	fmt.Fprintf(&b, "%d run(s) of each, %d s per throughput/latency measurement, fresh guest and helper per run; %d CPUs, kernel %s. "+
		"UDP offered at %s with %d-byte datagrams; connections/s with %d workers; N = %d held connections. "+
		"Cells are median (min–max); ratios are ferry's median over the peer's (↑: higher is better, ↓: lower is better).\n\n",
		r.Config.Runs, r.Config.Secs, r.CPUs, r.Builds["kernel"], r.Config.UDPRate, r.Config.UDPLen, r.Config.CPSWorkers, r.Config.Conns)
	b.WriteString("Builds:\n\n")
	for _, k := range []string{"ferry", "slirp4netns", "pasta", "iptables", "iperf3"} {
		if v, ok := r.Builds[k]; ok {
			fmt.Fprintf(&b, "- %s\n", v)
		}
	}
	b.WriteString("\n")
	for _, g := range groups(r.Tools) {
		fmt.Fprintf(&b, "### MTU %d\n\n| metric |", g.MTU)
		cols := g.Peers
		if g.Ferry != "" {
			cols = append([]string{g.Ferry}, g.Peers...)
		}
		for _, c := range cols {
			fmt.Fprintf(&b, " %s |", c)
		}
		if g.Ferry != "" {
			for _, p := range g.Peers {
				fmt.Fprintf(&b, " ferry ÷ %s |", p)
			}
		}
		b.WriteString("\n|---|")
		for range cols {
			b.WriteString("---:|")
		}
		if g.Ferry != "" {
			for range g.Peers {
				b.WriteString("---:|")
			}
		}
		b.WriteString("\n")
		for _, m := range metrics {
			arrow := "↓"
			if m.higher {
				arrow = "↑"
			}
			fmt.Fprintf(&b, "| %s %s |", strings.ReplaceAll(m.label, "N ", fmt.Sprintf("%d ", r.Config.Conns)), arrow)
			for _, c := range cols {
				s := r.Summary[c][m.key]
				switch {
				case s == nil:
					b.WriteString(" n/a |")
				case s.N == 1:
					fmt.Fprintf(&b, " %s |", num(s.Median))
				default:
					fmt.Fprintf(&b, " %s (%s–%s)", num(s.Median), num(s.Min), num(s.Max))
					if s.N < r.Config.Runs {
						fmt.Fprintf(&b, " n=%d", s.N)
					}
					b.WriteString(" |")
				}
			}
			if g.Ferry != "" {
				for _, p := range g.Peers {
					if q := ratio(r.Summary, g.Ferry, p, m.key); q > 0 {
						fmt.Fprintf(&b, " %.2f× |", q)
					} else {
						b.WriteString(" n/a |")
					}
				}
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	b.WriteString("Ready: from the helper's exec (by a shell already in the host namespace as the bench user; `ip netns exec` and setpriv are not counted; each start first waits, up to 3 s, for 50 ms with the CPUs at least 85% idle, so that the kernel's teardown of the run before does not land in it) to the ready-fd for ferry and slirp4netns, to its pid file (written once set up) for pasta")
	if slices.ContainsFunc(r.Tools, func(t tool) bool { return t.Kind == "bridge" }) {
		b.WriteString("; bridge: the run of `ferry net connect` (veth, address, route, DNAT rules).\n\n" +
			"bridge is the kernel reference, ferry's privileged path as root: `ferry net create --mtu MTU` (a Linux bridge, iptables NAT) and " +
			"`ferry net connect -p 127.0.0.1:PORT:5201` (a veth into the guest). The guest reaches the host's servers on the bridge's gateway " +
			"address rather than through NAT to the host's loopback; no helper process, hence no CPU or RSS rows.\n")
	} else {
		b.WriteString(".\n")
	}
	if k := kernelMarkdown(r); k != "" {
		b.WriteString("\n" + k)
	}
	if h := hostileMarkdown(r); h != "" {
		b.WriteString("\n" + h)
	}
	if len(r.Problems) > 0 {
		b.WriteString("\nProblems:\n\n")
		for _, p := range r.Problems {
			fmt.Fprintf(&b, "- %s\n", p)
		}
	}
	return b.String()
}
