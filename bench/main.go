// Command bench is `make bench`: ferry side by side with slirp4netns and
// pasta on this machine, run rootless as an unprivileged user inside a
// private "host" network namespace whose only route is a dead-end veth, so
// that no packet leaves the machine, with ferry's privileged path (`ferry
// net`: a bridge, a veth and iptables NAT, as root) as the kernel
// reference.
//
// It measures TCP throughput both ways (iperf3; host to guest through a
// published port), 1-byte request/response latency and connections per
// second through the NAT to a server on the host's loopback (its own load
// generator, run inside the guest), UDP throughput and loss at a fixed
// offered rate, the helper's CPU seconds per GB moved, its RSS idle and
// with many open connections, and its time from start to ready. Every run
// starts a fresh guest and helper; the tools take turns within each run.
// It prints a markdown table and writes it with the raw numbers as JSON to
// bench/results/.
//
// The same binary is its own load generator: `bench serve|rr|cps|hold`.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		sub := map[string]func([]string) error{"serve": serveMain, "rr": rrMain, "cps": cpsMain, "hold": holdMain, "flood": floodMain}
		if f, ok := sub[os.Args[1]]; ok {
			if err := f(os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "bench %s: %v\n", os.Args[1], err)
				os.Exit(1)
			}
			return
		}
	}
	if err := benchMain(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// report is what a bench run writes as JSON.
type report struct {
	Started  string                      `json:"started"`
	Quick    bool                        `json:"quick"`
	CPUs     int                         `json:"cpus"`
	Config   config                      `json:"config"`
	Builds   map[string]string           `json:"builds"`
	Tools    []tool                      `json:"tools"`
	Summary  map[string]map[string]*stat `json:"summary"`
	Ratios   map[string]float64          `json:"ratios"` // "FERRY/PEER metric": ferry's median over the peer's
	Problems []string                    `json:"problems,omitempty"`
	Flood    int                         `json:"flood_rate"` // the hostile row's -flood-rate
}

func benchMain() error {
	c := config{}
	ferry := flag.String("ferry", "bin/ferry", "the ferry binary to measure")
	flag.IntVar(&c.Runs, "runs", 5, "runs of each tool")
	flag.IntVar(&c.Secs, "secs", 3, "seconds per throughput, latency and connection-rate measurement")
	flag.StringVar(&c.UDPRate, "udp-rate", "1G", "UDP offered rate (iperf3 -b)")
	flag.IntVar(&c.UDPLen, "udp-len", 1400, "UDP datagram size, bytes (fits MTU 1500)")
	flag.IntVar(&c.Conns, "conns", 10000, "connections held open for the RSS measurement")
	flag.IntVar(&c.CPSWorkers, "cps-workers", 4, "concurrent workers of the connection-rate test")
	flag.IntVar(&c.HoldPar, "hold-par", 64, "connections the guest opens in parallel for the RSS measurement")
	flag.IntVar(&c.HoldSecs, "hold-timeout", 15, "seconds the guest may take to open -conns connections")
	flag.StringVar(&c.Measure, "measure", "", "comma-separated subset of tcp,udp,rr,cps,hold,hostile,kernel (default all)")
	flag.IntVar(&floodRate, "flood-rate", floodRate, "hostile row: SYNs and UDP datagrams a second, each, the guest floods with")
	quick := flag.Bool("quick", false, "one short run of each (CI): -runs 1 -secs 1 -conns 2000 -hold-timeout 10 unless given")
	toolList := flag.String("tools", "", "comma-separated subset of "+toolNames()+" (default all)")
	outDir := flag.String("out", "bench/results", "directory for the JSON and markdown results")
	userName := flag.String("user", envOr("BENCH_USER", "ferrybench"), "unprivileged user that runs the helpers (created when missing)")
	verbose := flag.Bool("v", false, "log every command")
	flag.Parse()
	if *quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]*int{"runs": &c.Runs, "secs": &c.Secs, "conns": &c.Conns, "hold-timeout": &c.HoldSecs} {
			if !set[name] {
				*v = map[string]int{"runs": 1, "secs": 1, "conns": 2000, "hold-timeout": 10}[name]
			}
		}
	}
	if c.Runs < 1 || c.Secs < 1 || c.Conns < 1 || c.CPSWorkers < 1 || c.HoldPar < 1 || c.HoldSecs < 1 {
		return fmt.Errorf("-runs, -secs, -conns, -cps-workers, -hold-par and -hold-timeout must be positive")
	}
	tools, err := pickTools(*toolList)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("bench needs root (it creates namespaces and a user, then runs the helpers as that user)")
	}
	if _, err := os.Stat(*ferry); err != nil {
		return fmt.Errorf("ferry binary: %w (run make build, or pass -ferry)", err)
	}
	raiseNofile() // children inherit it: 10,000 connections need more than 1024 fds

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := install(ctx); err != nil {
		return err
	}
	e := &env{verbose: *verbose}
	defer e.cleanup()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "bench: %v: cleaning up\n", s)
		e.cleanup()
		os.Exit(130)
	}()
	if err := e.ensureUser(*userName); err != nil {
		return err
	}
	if err := e.makeHost(); err != nil {
		return err
	}
	if err := e.stageBinaries(*ferry); err != nil {
		return err
	}

	r := &report{Started: time.Now().Format(time.RFC3339), Quick: *quick, CPUs: runtime.NumCPU(), Config: c,
		Builds: builds(*ferry), Tools: tools, Summary: map[string]map[string]*stat{}, Ratios: map[string]float64{}, Flood: floodRate}
	server, err := e.start("load server", e.asUser(e.self, "serve", "-addr", fmt.Sprintf("127.0.0.1:%d", loadPort)), nil, nil, nil)
	if err != nil {
		return err
	}
	if err := waitListening(server, loadPort); err != nil {
		return fmt.Errorf("load server: %w", err)
	}

	values := map[string]map[string][]float64{}
	// ours are the problems of ferry's own rows (ferry and bridge), which
	// fail a quick run: CI runs one so that the harness cannot rot, and a
	// peer's trouble (slirp4netns running out of connections) is not ours.
	var ours []string
	problem := func(t tool, p string) {
		r.Problems = append(r.Problems, p)
		if t.Kind == "ferry" || t.Kind == "bridge" {
			ours = append(ours, p)
		}
	}
	port := 5300
	begin := time.Now()
	for run := 1; run <= c.Runs; run++ {
		for _, t := range tools {
			port++
			t0 := time.Now()
			m, problems, err := e.measureOnce(t, port, c)
			if e.stopping() {
				select {} // the signal handler cleans up and exits
			}
			for _, p := range problems {
				problem(t, fmt.Sprintf("%s run %d: %s", t.Name, run, p))
			}
			if err != nil {
				problem(t, fmt.Sprintf("%s run %d: %v", t.Name, run, err))
				fmt.Fprintf(os.Stderr, "bench: run %d/%d %-18s failed: %v\n", run, c.Runs, t.Name, err)
				continue
			}
			if c.does("hostile") && t.Kind == "ferry" {
				for _, p := range e.measureHostile(t, port+2000, c, m) {
					problem(t, fmt.Sprintf("%s run %d: %s", t.Name, run, p))
				}
			}
			for _, p := range e.kernelModeRow(t, run, port+3000, c, m) {
				problem(t, p)
			}
			if values[t.Name] == nil {
				values[t.Name] = map[string][]float64{}
			}
			for k, v := range m {
				values[t.Name][k] = append(values[t.Name][k], v)
			}
			fmt.Fprintf(os.Stderr, "bench: run %d/%d %-18s %5.1fs  out %.2f in %.2f Gbit/s, udp %.0f Mbit/s loss %.1f%%, rr p50 %.0fµs, %.0f conn/s, rss %.1f/%.1f MiB, ready %.0fms%s\n",
				run, c.Runs, t.Name, time.Since(t0).Seconds(), m[mTCPOut], m[mTCPIn], m[mUDP], m[mUDPLoss], m[mRRp50], m[mCPS],
				m[mRSSIdle], m[mRSSConns], m[mReady], problemNote(problems))
		}
	}
	for name, ms := range values {
		r.Summary[name] = map[string]*stat{}
		for k, vs := range ms {
			r.Summary[name][k] = summarize(vs)
		}
	}
	for _, g := range groups(tools) {
		for _, p := range g.Peers {
			for _, m := range metrics {
				if q := ratio(r.Summary, g.Ferry, p, m.key); q > 0 {
					r.Ratios[g.Ferry+"/"+p+" "+m.key] = q
				}
			}
		}
	}
	hostileRatios(r)
	kernelRatios(r)
	md := markdown(r)
	fmt.Println(md)
	fmt.Fprintf(os.Stderr, "bench: measured in %.0fs\n", time.Since(begin).Seconds())
	if err := writeResults(*outDir, r, md); err != nil {
		return err
	}
	if len(values) == 0 {
		return fmt.Errorf("no tool could be measured")
	}
	if *quick && len(ours) > 0 {
		return fmt.Errorf("quick run: %d problem(s) in ferry's rows: %s", len(ours), strings.Join(ours, "; "))
	}
	return nil
}

func problemNote(ps []string) string {
	if len(ps) == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d problem(s): %s)", len(ps), strings.Join(ps, "; "))
}

func writeResults(dir string, r *report, md string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	name := "bench-"
	if r.Quick {
		name = "quick-"
	}
	name += time.Now().Format("20060102-150405")
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	jp := filepath.Join(dir, name+".json")
	if err := os.WriteFile(jp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, name+".md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s and .md\n", jp)
	return nil
}

func toolNames() string {
	var n []string
	for _, t := range allTools {
		n = append(n, t.Name)
	}
	return strings.Join(n, ",")
}

func pickTools(list string) ([]tool, error) {
	if list == "" {
		return allTools, nil
	}
	var out []tool
	for _, n := range strings.Split(list, ",") {
		found := false
		for _, t := range allTools {
			if t.Name == strings.TrimSpace(n) {
				out, found = append(out, t), true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown tool %q: want some of %s", n, toolNames())
		}
	}
	return out, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
