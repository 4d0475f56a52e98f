package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ferrynet/ferry/nsenter"
	"github.com/ferrynet/ferry/sandbox"
	"github.com/ferrynet/ferry/spawn"
)

// runFlags are the flags of `ferry run`.
type runFlags struct {
	net        netFlags
	publish    publishFlags
	mode       string
	dns        []string
	dnsSearch  []string
	dnsOptions []string
	addHosts   []string
	hostname   string
	noSandbox  bool
}

func newRunCommand(g *globalFlags) *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARGS...]",
		Short: "Run a command in its own user, mount and network namespaces with a network",
		Long: `Run CMD in new user (you are root inside), mount and network namespaces, with
ferry's userspace network up as 'ferry attach -c' sets it, a generated
/etc/resolv.conf (nameserver 10.0.2.3) and /etc/hosts bind-mounted over the
originals inside, and exit with CMD's status. Nothing is left behind.

--net selects the network as Docker's modes do:
  (default)       ferry's userspace network
  none            a network namespace with only lo
  host            the host's network namespace
  container:PID   the network namespace of process PID, with the user
                  namespace owning it
  ns:PATH         the network namespace bind-mounted at PATH, likewise`,
		Example: `  ferry run -- curl -s http://10.0.2.2:8080/
  ferry run --hostname web1 --add-host db:10.1.2.3 -- sh`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return fmt.Errorf("missing the command to run: ferry run [flags] -- CMD [ARGS...] (see '%s --help')", cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			code, err := runRun(cmd.Context(), f, args, log)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false)
	f.net.register(fl)
	f.publish.register(fl)
	fl.StringVar(&f.mode, "net", "", "network: the userspace network (default), none, host, container:PID or ns:PATH")
	listVar(fl, &f.dns, "dns", "extra nameserver IP for the command's resolv.conf (repeatable)")
	listVar(fl, &f.dnsSearch, "dns-search", "search domain for the command's resolv.conf (repeatable)")
	listVar(fl, &f.dnsOptions, "dns-option", "resolver option for the command's resolv.conf, e.g. ndots:2 (repeatable)")
	listVar(fl, &f.addHosts, "add-host", "add NAME:IP to the command's /etc/hosts; IP may be host-gateway (repeatable)")
	fl.BoolVar(&f.noSandbox, "no-sandbox", false, "do not confine ferry itself (by default it re-executes inside the command's user namespace with a private root, no capabilities but CAP_NET_BIND_SERVICE, Landlock and a seccomp allow-list; the command is never filtered)")
	fl.StringVar(&f.hostname, "hostname", "", "the command's hostname (in its own UTS namespace)")
	return cmd
}

// runConfig is the validated form of run's flags.
type runConfig struct {
	spawn   spawn.Config
	net     netConfig
	userNet bool // ferry's userspace network serves the command
}

// parseRun validates flags and arguments, without side effects.
func parseRun(f *runFlags, args []string) (*runConfig, error) {
	nc, err := f.net.parse("tap0", true)
	if err != nil {
		return nil, err
	}
	c := &runConfig{net: nc, spawn: spawn.Config{Args: args, Hostname: f.hostname}}
	if f.hostname != "" && !validHostname(f.hostname) {
		return nil, fmt.Errorf("invalid --hostname %q: use letters, digits, '-' and '.', at most 64 characters", f.hostname)
	}
	switch mode := f.mode; {
	case mode == "" || mode == "default" || mode == "ferry":
		c.spawn.Net, c.userNet = spawn.NetNew, true
	case mode == "none":
		c.spawn.Net = spawn.NetNew
	case mode == "host":
		c.spawn.Net = spawn.NetHost
	case strings.HasPrefix(mode, "container:"):
		pid, err := strconv.Atoi(strings.TrimPrefix(mode, "container:"))
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("invalid --net %q: container:PID needs a positive PID", mode)
		}
		c.spawn.Net, c.spawn.Join = spawn.NetJoin, nsenter.Target{PID: pid}
	case strings.HasPrefix(mode, "ns:"):
		p := strings.TrimPrefix(mode, "ns:")
		if p == "" {
			return nil, fmt.Errorf("invalid --net %q: ns:PATH needs a path", mode)
		}
		c.spawn.Net, c.spawn.Join = spawn.NetJoin, nsenter.Target{NetnsPath: p}
	default:
		return nil, fmt.Errorf("invalid --net %q: use none, host, container:PID or ns:PATH (or leave it out for ferry's network)", mode)
	}

	network := c.net.stack.Network
	var nameservers []netip.Addr
	if c.userNet && !c.net.stack.DisableDNS {
		nameservers = append(nameservers, network.DNS)
		if network.IPv6() {
			nameservers = append(nameservers, network.DNS6)
		}
	}
	for _, s := range f.dns {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("invalid --dns %q: not an IP address", s)
		}
		nameservers = append(nameservers, a)
	}
	if c.spawn.Net != spawn.NetHost || len(f.dns) > 0 || len(f.dnsSearch) > 0 || len(f.dnsOptions) > 0 {
		c.spawn.ResolvConf = resolvConf(nameservers, f.dnsSearch, f.dnsOptions)
	}
	hosts, err := parseAddHosts(f.addHosts, network.Gateway)
	if err != nil {
		return nil, err
	}
	var self netip.Addr
	if c.userNet {
		self = network.Guest
	}
	c.spawn.Hosts = hostsFile(f.hostname, self, hosts)
	return c, nil
}

// runRun runs the command with its network and returns its exit status.
//
// With ferry's userspace network and the sandbox (the default), this is
// attach's two stages: stage 1 starts the command (held before exec) and
// what needs the caller's view of the system, then executes ferry anew
// inside the command's user namespace with a root of its own; stage 2
// (runResumed) serves the network, lets the command run and waits for it.
// The command stays ferry's child across the execution.
func runRun(ctx context.Context, f *runFlags, args []string, log *slog.Logger) (int, error) {
	c, err := parseRun(f, args)
	if err != nil {
		return 0, err
	}
	if _, err := f.publish.parse(); err != nil {
		return 0, err
	}
	if !c.userNet && (len(f.publish.specs) > 0 || f.publish.apiSocket != "") {
		return 0, fmt.Errorf("-p and --api-socket need ferry's own network, not --net %s", f.mode)
	}
	st, err := sandbox.Resumed()
	if err != nil {
		return 0, err
	}
	if st != nil {
		return runResumed(ctx, c, f, st, log)
	}
	if c.spawn.Net == spawn.NetJoin {
		if c.spawn.Join.PID != 0 {
			c.spawn.Join, err = nsenter.PIDTarget(c.spawn.Join.PID, "")
		} else {
			c.spawn.Join, err = nsenter.PathTarget(c.spawn.Join.NetnsPath, "")
		}
		if err != nil {
			return 0, err
		}
	}
	c.spawn.Stdin, c.spawn.Stdout, c.spawn.Stderr = os.Stdin, os.Stdout, os.Stderr
	sandboxed := c.userNet && !f.noSandbox
	if sandboxed {
		// The command dies with the thread that started it
		// (PR_SET_PDEATHSIG): start it from the thread that executes
		// stage 2, which lives on as the process's main thread.
		runtime.LockOSThread()
	}

	// Signals for the command are passed on from now on.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH)
	defer signal.Stop(sigs)

	child, err := spawn.Start(c.spawn)
	if err != nil {
		return 0, err
	}
	if c.userNet {
		target, err := nsenter.PIDTarget(child.PID(), "")
		if err != nil {
			child.Kill()
			return 0, err
		}
		if sandboxed {
			ac := &attachConfig{net: c.net, target: target, tapFD: -1, readyFD: -1, exitFD: -1,
				sandbox: true, seccomp: true, lenient: true, runChild: child}
			err := enterSandbox(ctx, ac, &f.publish, log) // returns on failure only
			child.Kill()
			return 1, err
		}
		n, err := startNetwork(ctx, target, c.net, log)
		if err != nil {
			child.Kill()
			return 0, err
		}
		defer n.Close()
		pub, err := startPublishing(ctx, n, &f.publish, log)
		if err != nil {
			child.Kill()
			return 0, err
		}
		defer pub.Close()
	}
	// The command runs; ferry now only relays traffic and signals: refuse
	// it every syscall it no longer needs (the command is not affected).
	return releaseAndWait(child, sigs, !f.noSandbox, log)
}

// runResumed is stage 2 of a sandboxed `ferry run`: the network on what
// stage 1 handed over, then the command.
func runResumed(ctx context.Context, c *runConfig, f *runFlags, st *sandbox.State, log *slog.Logger) (int, error) {
	if st.RunPID == 0 {
		return 0, errors.New("sandbox: no command handed over by stage 1")
	}
	child, err := spawn.Resume(st.RunPID, st.RunReleaseFD)
	if err != nil {
		return 0, err
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	n, _, err := startResumed(ctx, st, c.net, log)
	if err != nil {
		child.Kill()
		return 0, err
	}
	defer n.Close()
	stopPublishing, err := publishOn(ctx, n, &f.publish, st, log)
	if err != nil {
		child.Kill()
		return 0, err
	}
	defer stopPublishing()
	sandbox.Probe(log, st.APIDirFD)                // a test-only hook, off unless asked for
	return releaseAndWait(child, sigs, false, log) // seccomp is on already
}

// releaseAndWait lets the command run, installing ferry's seccomp filter
// first when withSeccomp says so, passes sigs on to it, and returns its
// exit status. A command that ended before it was released (its init
// failed, and said why) gives its own status.
func releaseAndWait(child *spawn.Child, sigs <-chan os.Signal, withSeccomp bool, log *slog.Logger) (int, error) {
	if err := child.Release(); err != nil {
		if code, werr := child.Wait(); werr == nil && code != 0 {
			return code, nil
		}
		return 0, err
	}
	if withSeccomp {
		if err := sandbox.InstallSeccomp(); err != nil {
			log.Warn("running without seccomp", "err", err)
		}
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case s := <-sigs:
				child.Signal(s)
			case <-done:
				return
			}
		}
	}()
	return child.Wait()
}
