// Command demo shows ferry's main job with its defaults, in a private
// network that exists only for the demo: an unprivileged user makes a
// namespace with `unshare -U -r -n`, `ferry attach -c` gives it a network,
// and from inside it the demo fetches a page from the host's loopback
// through 10.0.2.2 and resolves a name through ferry's DNS at 10.0.2.3.
//
// It must run as root (it makes a "host" network namespace for ferry and the
// test user); `make demo` runs it. It cleans up after itself and exits 0
// only if every step worked.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/ferrynet/ferry/integration/nstest"
)

const (
	page     = "Hello from the host's 127.0.0.1, through ferry!\n"
	demoName = "ferry.demo."
	demoAddr = "10.0.2.2"
)

func main() {
	ferry := flag.String("ferry", "", "ferry binary to run (default: $FERRY_BIN, or build ./cmd/ferry)")
	verbose := flag.Bool("v", false, "print the harness's logs too")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: must run as root: it creates network namespaces and a test user (try: sudo make demo)")
		os.Exit(2)
	}
	td := &nstest.Teardown{Verbose: *verbose}
	err := run(td, *ferry)
	fmt.Println("\n== cleaning up")
	td.Run()
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "demo: FAILED: %v\n", err)
		os.Exit(1)
	case td.Failed():
		fmt.Fprintln(os.Stderr, "demo: FAILED while cleaning up")
		os.Exit(1)
	}
	fmt.Println("demo: OK")
}

// step prints a heading for what follows.
func step(format string, args ...any) {
	fmt.Printf("\n== "+format+"\n", args...)
}

func run(td *nstest.Teardown, ferry string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	step("preparing the test user and ferry")
	lab, err := nstest.NewLab(ctx, td, ferry)
	if err != nil {
		return err
	}
	fmt.Printf("test user: %s (uid %d)\nferry:     %s\n", lab.User.Name, lab.User.UID, lab.Ferry)

	host, err := lab.NewNetns(ctx, "host")
	if err != nil {
		return err
	}
	fmt.Printf("host namespace: %s (private; ferry runs here, its loopback is \"the host's\")\n", host.Name)
	guest, err := lab.StartGuest(ctx, host)
	if err != nil {
		return err
	}
	fmt.Printf("guest: PID %d, `unshare -U -r -n sleep` run by %s\n", guest.PID, lab.User.Name)

	httpPort, err := nstest.ServeHTTP(td, host.Path, "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, page)
	}))
	if err != nil {
		return err
	}
	fmt.Printf("web server: 127.0.0.1:%d in the host namespace\n", httpPort)
	dnsPort, err := nstest.ServeDNS(td, host.Path, "127.0.0.1", dns.HandlerFunc(answer))
	if err != nil {
		return err
	}
	fmt.Printf("DNS server: 127.0.0.1:%d in the host namespace (%s A %s, anything else NXDOMAIN)\n", dnsPort, demoName, demoAddr)

	args := []string{"-c", "--dns-upstream", "127.0.0.1:" + strconv.Itoa(dnsPort)}
	step("$ ferry attach %s -r 3 %d   (as %s, in %s)", strings.Join(args, " "), guest.PID, lab.User.Name, host.Name)
	f, err := lab.Attach(ctx, host, guest, args...)
	if err != nil {
		return err
	}
	fmt.Println("ferry is ready (it wrote \"1\" to fd 3)")

	var failed []string
	check := func(ok bool, what string) {
		if !ok {
			failed = append(failed, what)
			fmt.Printf("!! unexpected: %s\n", what)
		}
	}
	res, err := inGuest(ctx, guest, "ip", "-br", "addr")
	if err != nil {
		return err
	}
	check(res.ExitCode == 0 && strings.Contains(res.Stdout, "10.0.2.100/24"), "tap0 should have 10.0.2.100/24")

	res, err = inGuest(ctx, guest, "curl", "-s", "--max-time", "10", fmt.Sprintf("http://10.0.2.2:%d/", httpPort))
	if err != nil {
		return err
	}
	check(res.ExitCode == 0 && res.Stdout == page, "curl should print the host's page")

	res, err = inGuest(ctx, guest, "dig", "+short", "+time=3", "+tries=2", "@10.0.2.3", strings.TrimSuffix(demoName, "."))
	if err != nil {
		return err
	}
	check(res.ExitCode == 0 && strings.TrimSpace(res.Stdout) == demoAddr, "dig should print "+demoAddr)

	step("ferry's log (stderr)")
	fmt.Print(f.Stderr())
	if len(failed) > 0 {
		return fmt.Errorf("%d step(s) went wrong: %s", len(failed), strings.Join(failed, "; "))
	}
	return nil
}

// inGuest runs a command in the guest's network namespace and prints it
// with its output.
func inGuest(ctx context.Context, g *nstest.Guest, args ...string) (nstest.Result, error) {
	step("guest$ %s", strings.Join(args, " "))
	res, err := g.Exec(ctx, args...)
	if err != nil {
		return res, fmt.Errorf("run in guest: %w", err)
	}
	fmt.Print(res.Stdout)
	if res.Stderr != "" {
		fmt.Print(res.Stderr)
	}
	if res.ExitCode != 0 {
		fmt.Printf("(exit status %d)\n", res.ExitCode)
	}
	return res, nil
}

// answer is the demo's DNS server: demoName has an A record, nothing else
// exists.
func answer(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg).SetReply(q)
	m.Authoritative = true
	switch {
	case len(q.Question) != 1:
		m.Rcode = dns.RcodeFormatError
	case !strings.EqualFold(q.Question[0].Name, demoName):
		m.Rcode = dns.RcodeNameError
	case q.Question[0].Qtype == dns.TypeA:
		m.Answer = []dns.RR{&dns.A{
			Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
			A:   net.ParseIP(demoAddr),
		}}
	}
	w.WriteMsg(m)
}
