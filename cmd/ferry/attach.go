package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ferrynet/ferry/forward"
	"github.com/ferrynet/ferry/nsenter"
	"github.com/ferrynet/ferry/sandbox"
	"github.com/ferrynet/ferry/spawn"
	"github.com/ferrynet/ferry/stack"
	"github.com/ferrynet/ferry/tap"
)

// attachFlags are the flags of `ferry attach`.
type attachFlags struct {
	net        netFlags
	publish    publishFlags
	configure  bool
	readyFD    int
	exitFD     int
	netnsType  string
	usernsPath string
	sandbox    bool
	seccomp    bool
	noSandbox  bool
	explicit   bool // --enable-sandbox or --enable-seccomp given explicitly
}

func newAttachCommand(g *globalFlags) *cobra.Command {
	f := &attachFlags{}
	cmd := &cobra.Command{
		Use:   "attach [flags] PID|PATH [TAPNAME]",
		Short: "Give an existing network namespace a network (the per-container helper, like slirp4netns)",
		Long: `Attach to the network namespace of process PID (or, with --netns-type=path,
the namespace bind-mounted at PATH), create the TAP device TAPNAME (default
tap0) inside it, and NAT its traffic through this process until the target
process exits, --exit-fd hangs up, or ferry gets SIGTERM or SIGINT.

ferry joins the user namespace that owns the network namespace (or
--userns-path), so it runs as the same unprivileged user as the container.

Once set up, ferry confines itself by default (same PID): it re-executes in
place inside that user namespace with a private root holding only /etc and
/run (and the --pcap file), drops every capability but
CAP_NET_BIND_SERVICE, restricts the file system further with Landlock
where the kernel offers it, and installs a seccomp filter on every thread.
--no-sandbox turns all of it off. When the namespaces cannot be set up
ferry says so in one warning line and serves without them (seccomp still
applies); with --enable-sandbox or --enable-seccomp given explicitly a
failure is an error instead.`,
		Example: `  unshare -U -r -n sleep infinity &
  ferry attach -c $! tap0`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) == 0:
				return fmt.Errorf("missing the target: a PID, or a network namespace PATH with --netns-type=path (see '%s --help')", cmd.CommandPath())
			case len(args) > 2:
				return fmt.Errorf("too many arguments %q: want PID|PATH [TAPNAME] (see '%s --help')", args[2:], cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			f.explicit = cmd.Flags().Changed("enable-sandbox") || cmd.Flags().Changed("enable-seccomp")
			return runAttach(cmd.Context(), f, args, log)
		},
	}
	fl := cmd.Flags()
	fl.BoolVarP(&f.configure, "configure", "c", false, "bring up lo and the TAP in the namespace with the guest address and a default route")
	f.net.register(fl)
	f.publish.register(fl)
	fl.IntVarP(&f.readyFD, "ready-fd", "r", -1, "write \"1\" to this fd and close it once the network is up")
	fl.IntVarP(&f.exitFD, "exit-fd", "e", -1, "exit when this fd hangs up or becomes readable")
	fl.StringVar(&f.netnsType, "netns-type", "pid", "how to read the target: pid (a process ID) or path (a network namespace file)")
	fl.StringVar(&f.usernsPath, "userns-path", "", "user namespace to join (default: the one owning the network namespace)")
	fl.BoolVar(&f.sandbox, "enable-sandbox", true, "after setup, confine ferry (same PID): the target's user namespace, a mount namespace holding only /etc and /run, no capability but CAP_NET_BIND_SERVICE, Landlock where offered")
	fl.BoolVar(&f.seccomp, "enable-seccomp", true, "after setup, refuse syscalls ferry does not need on every thread with seccomp")
	fl.BoolVar(&f.noSandbox, "no-sandbox", false, "run without the sandbox, Landlock and seccomp, whatever other flags say")
	return cmd
}

// attachConfig is the validated form of attach's flags and arguments.
type attachConfig struct {
	target  nsenter.Target
	tapFD   int // an already open TAP (slirp4netns's --netns-type=tapfd), or -1
	net     netConfig
	readyFD int
	exitFD  int
	// banner, when set, is printed on stdout once the network is up (the
	// slirp4netns mode's "Starting slirp" lines).
	banner func(*network)
	// onEnd, when set, is told why ferry stops.
	onEnd func(reason string)
	// sandbox and seccomp are --enable-sandbox and --enable-seccomp;
	// lenient says they are on by default rather than asked for, so that a
	// failure to confine is a warning, not an error (slirp4netns mode,
	// whose flags are always explicit, leaves it false).
	sandbox, seccomp, lenient bool
	// resumed is set when this process is the sandboxed re-execution
	// (stage 2): what stage 1 set up, by fd.
	resumed *sandbox.State
	// runChild, for `ferry run`, is the command, held before exec, that
	// stage 2 releases and waits for (the target is its process).
	runChild *spawn.Child
}

// parseAttach validates flags and arguments, without side effects.
func parseAttach(f *attachFlags, args []string) (*attachConfig, error) {
	tapName := "tap0"
	if len(args) > 1 {
		tapName = args[1]
	}
	nc, err := f.net.parse(tapName, f.configure)
	if err != nil {
		return nil, err
	}
	if f.noSandbox {
		f.sandbox, f.seccomp = false, false
	}
	c := &attachConfig{net: nc, readyFD: f.readyFD, exitFD: f.exitFD, tapFD: -1,
		sandbox: f.sandbox, seccomp: f.seccomp, lenient: !f.explicit}
	switch f.netnsType {
	case "pid":
		pid, err := strconv.Atoi(args[0])
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("PID must be a positive integer: %q (use --netns-type=path for a namespace file)", args[0])
		}
		c.target = nsenter.Target{PID: pid, UsernsPath: f.usernsPath}
	case "path":
		c.target = nsenter.Target{NetnsPath: args[0], UsernsPath: f.usernsPath}
	default:
		return nil, fmt.Errorf("invalid --netns-type %q: use pid or path", f.netnsType)
	}
	return c, nil
}

// runAttach attaches to the target and serves its network until the target
// exits, exit-fd hangs up, or a signal arrives.
func runAttach(ctx context.Context, f *attachFlags, args []string, log *slog.Logger) error {
	c, err := parseAttach(f, args)
	if err != nil {
		return err
	}
	if err := c.resolve(); err != nil {
		return err
	}
	return serveAttach(ctx, c, &f.publish, log)
}

// resolve checks that the target exists and the fds are open. In the
// sandboxed stage 2 the target was checked (and is held open) by stage 1.
func (c *attachConfig) resolve() error {
	var err error
	c.resumed, err = sandbox.Resumed()
	switch {
	case err != nil:
	case c.resumed != nil:
		if c.target.PID != 0 { // for the logs
			c.target.NetnsPath = "/proc/" + strconv.Itoa(c.target.PID) + "/ns/net"
		}
	case c.tapFD >= 0:
		if _, err := unix.FcntlInt(uintptr(c.tapFD), unix.F_GETFD, 0); err != nil {
			return fmt.Errorf("TAP file descriptor %d is not open: %w", c.tapFD, err)
		}
	case c.target.PID != 0:
		c.target, err = nsenter.PIDTarget(c.target.PID, c.target.UsernsPath)
	default:
		c.target, err = nsenter.PathTarget(c.target.NetnsPath, c.target.UsernsPath)
	}
	if err != nil {
		return err
	}
	for _, fd := range []int{c.readyFD, c.exitFD} {
		if fd < 0 {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return fmt.Errorf("file descriptor %d (from --ready-fd or --exit-fd) is not open: %w", fd, err)
		}
	}
	return nil
}

// serveAttach brings the network up, publishes ports, signals readiness and
// serves until the end.
func serveAttach(ctx context.Context, c *attachConfig, pf *publishFlags, log *slog.Logger) error {
	if _, err := pf.parse(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	st := c.resumed
	if st == nil && c.sandbox {
		return enterSandbox(ctx, c, pf, log)
	}
	var (
		n        *network
		landlock int
		err      error
	)
	switch {
	case st != nil:
		n, landlock, err = startResumed(ctx, st, c.net, log)
	case c.tapFD >= 0:
		f := os.NewFile(uintptr(c.tapFD), "tap")
		vnet := tap.HasVNetHeader(c.tapFD)
		n, err = startNetworkOn(f, vnet, readRing(f, vnet, log), c.net, log)
	default:
		n, err = startNetwork(ctx, c.target, c.net, log)
	}
	if err != nil {
		return err
	}
	defer n.Close()
	if st == nil && c.seccomp {
		// Without the sandbox the filter goes on here, once the namespace
		// helper (which needs setns) is done.
		if err := installSeccomp(!c.lenient, log); err != nil {
			return err
		}
	}
	stopPublishing, err := publishOn(ctx, n, pf, st, log)
	if err != nil {
		return err
	}
	defer stopPublishing()
	sandboxed := st != nil && sandbox.Report().Failed == ""
	log.Info("network up", "target", c.target.NetnsPath, "tap", c.net.tap.Name, "sandbox", sandboxed,
		"landlock", landlock, "seccomp", c.seccomp, "tap_reads", n.tapReads)
	if c.banner != nil {
		c.banner(n)
	}
	apiDir := -1
	if st != nil {
		apiDir = st.APIDirFD
	}
	sandbox.Probe(log, apiDir) // a test-only hook, off unless asked for
	if c.readyFD >= 0 {
		if err := signalReady(c.readyFD); err != nil {
			return err
		}
	}
	reason := waitForEnd(ctx, c, log)
	if c.onEnd != nil {
		c.onEnd(reason)
	}
	return nil
}

// startResumed is the start of stage 2 (st is what stage 1 handed over):
// it receives the TAP, reports what confines this process, installs the
// seccomp filter before anything from the guest is handled, and starts the
// network on nc. It returns the Landlock ABI applied (0: none).
func startResumed(ctx context.Context, st *sandbox.State, nc netConfig, log *slog.Logger) (*network, int, error) {
	if st.TAPHelper != "" {
		// Before anything is logged: an error from the helper is then
		// ferry's only line, as when stage 1 waited for it.
		if err := pickUpTAP(ctx, st, log); err != nil {
			return nil, 0, err
		}
	}
	r := sandbox.Report()
	if r.Failed != "" {
		log.Warn("running without the sandbox: it could not be set up (--no-sandbox silences this)", "reason", r.Failed)
	} else if r.LandlockABI == 0 {
		log.Debug("running without Landlock", "reason", r.LandlockNote)
	}
	tapFile := os.NewFile(uintptr(st.TAPFD), "tap")
	ring := readRing(tapFile, st.VNet, log) // before the filter refuses it
	if st.Seccomp {
		if err := installSeccomp(st.Strict, log); err != nil {
			if ring != nil {
				ring.Close()
			}
			return nil, 0, err
		}
	}
	if len(st.DNSUpstreams) > 0 {
		nc.stack.DNSUpstreams = st.DNSUpstreams
	}
	if st.Pcap != "" {
		// The path stage 1 created; the sandbox binds it there.
		nc.pcap = st.Pcap
	}
	n, err := startNetworkOn(tapFile, st.VNet, ring, nc, log)
	if err == nil && nc.kernelPorts {
		if n.dialer, err = resumeDialer(n); err != nil { // started by stage 1
			n.Close()
		}
	}
	if err != nil {
		return nil, 0, err
	}
	return n, r.LandlockABI, nil
}

// publishOn publishes pf's ports into n and serves the API socket: the one
// stage 1 bound when st has it, else pf's. It returns what stops both.
func publishOn(ctx context.Context, n *network, pf *publishFlags, st *sandbox.State, log *slog.Logger) (func(), error) {
	pubFlags := pf
	if st != nil && st.APIFD >= 0 {
		// Stage 1 bound the API socket: serve that one.
		noAPI := *pf
		noAPI.apiSocket = ""
		pubFlags = &noAPI
	}
	pub, err := startPublishing(ctx, n, pubFlags, log)
	if err != nil {
		return nil, err
	}
	if st == nil || st.APIFD < 0 {
		return pub.Close, nil
	}
	plog := log.With("component", "publish")
	h := forward.NewAPI(pub.pub, n.stack.Network().Guest, plog)
	h.SetStats(pub.stats(n))
	api, err := sandbox.ServeAPI(st.APIFD, st.APIDirFD, st.APIName, h, plog)
	if err != nil {
		pub.Close()
		return nil, err
	}
	return func() { api.Close(); pub.Close() }, nil
}

// waitForEnd blocks until the target process exits, exit-fd hangs up, or
// ctx ends (a signal).
func waitForEnd(ctx context.Context, c *attachConfig, log *slog.Logger) string {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reason := make(chan string, 2)
	switch {
	case c.resumed != nil && c.resumed.PIDFD >= 0:
		// The sandbox has no /proc: stage 1 opened the pidfd.
		go func() {
			if err := nsenter.WaitHangup(ctx, c.resumed.PIDFD); err != nil {
				if !errors.Is(err, context.Canceled) {
					log.Error("watch target process", "err", err)
				}
				return
			}
			reason <- "target process exited"
		}()
	case c.resumed == nil && c.target.PID != 0:
		go func() {
			if err := c.target.WaitExit(ctx); err != nil {
				if !errors.Is(err, context.Canceled) {
					log.Error("watch target process", "err", err)
				}
				return
			}
			reason <- "target process exited"
		}()
	}
	if c.exitFD >= 0 {
		go func() {
			if err := nsenter.WaitHangup(ctx, c.exitFD); err != nil {
				if !errors.Is(err, context.Canceled) {
					log.Error("watch exit-fd", "err", err)
				}
				return
			}
			reason <- "exitfd event"
		}()
	}
	select {
	case r := <-reason:
		log.Info("shutting down", "reason", r)
		return r
	case <-ctx.Done():
		log.Info("shutting down", "reason", "signal")
		return "signal"
	}
}

// installSeccomp installs the filter; when confinement is ferry's default
// rather than asked for (strict), a kernel that refuses it earns a warning
// instead of an error.
func installSeccomp(strict bool, log *slog.Logger) error {
	err := sandbox.InstallSeccomp()
	if err != nil && !strict {
		log.Warn("running without seccomp (--no-sandbox silences this)", "err", err)
		return nil
	}
	return err
}

// signalReady writes "1" to the ready fd and closes it.
func signalReady(fd int) error {
	f := os.NewFile(uintptr(fd), "ready-fd")
	defer f.Close()
	if _, err := f.Write([]byte("1")); err != nil {
		return fmt.Errorf("write to ready-fd %d: %w", fd, err)
	}
	return nil
}

// enterSandbox is stage 1 of --enable-sandbox: it does what needs the
// caller's view of the system (the TAP, the API socket, a pidfd of the
// target, the DNS upstreams) and re-executes ferry in place into the
// sandbox, which serves on the inherited fds (see package sandbox). It
// returns only on failure, or when there is nothing left to serve.
func enterSandbox(ctx context.Context, c *attachConfig, pf *publishFlags, log *slog.Logger) error {
	st := sandbox.State{TAPFD: -1, APIFD: -1, APIDirFD: -1, PIDFD: -1, Seccomp: c.seccomp, Strict: !c.lenient}
	var closers []func()
	var tapHelper *nsenter.PendingTAP
	defer func() { // only reached on failure
		for _, f := range closers {
			f()
		}
	}()
	if c.target.PID != 0 {
		fd, err := unix.PidfdOpen(c.target.PID, 0)
		if errors.Is(err, unix.ESRCH) {
			log.Info("shutting down", "reason", "target process exited")
			if c.onEnd != nil {
				c.onEnd("target process exited")
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("pidfd_open %d: %w", c.target.PID, err)
		}
		st.PIDFD = fd
		closers = append(closers, func() { unix.Close(fd) })
	}
	if c.tapFD >= 0 {
		st.TAPFD, st.VNet = c.tapFD, tap.HasVNetHeader(c.tapFD)
	} else {
		// Started, not waited for: the helper creates the TAP while this
		// image goes on and the sandboxed one starts; stage 2 receives
		// the TAP (pickUpTAP).
		p, err := nsenter.StartTAP(c.target, c.net.tap)
		if err != nil {
			return err
		}
		closers = append(closers, func() { p.Close() })
		tapHelper = p
	}
	if pf.apiSocket != "" {
		sock, dir, err := sandbox.ListenAPI(pf.apiSocket)
		if err != nil {
			return err
		}
		closers = append(closers, func() {
			unix.Close(sock)
			unix.Close(dir)
			os.Remove(pf.apiSocket)
		})
		st.APIFD, st.APIDirFD, st.APIName = sock, dir, filepath.Base(pf.apiSocket)
	}
	if len(c.net.stack.DNSUpstreams) == 0 && !c.net.stack.DisableDNS {
		// Read here, with the caller's view of the file system; stage 2
		// reads the sandbox's /etc/resolv.conf only if this finds nothing.
		if up, err := stack.UpstreamsFromResolvConf("/etc/resolv.conf"); err == nil {
			st.DNSUpstreams = up
		}
	}
	var pcap *os.File
	if c.net.pcap != "" {
		// Created here, with the caller's view and rights; the sandbox
		// binds it writable at the same (absolute) path.
		abs, err := filepath.Abs(c.net.pcap)
		if err != nil {
			return fmt.Errorf("--pcap: %w", err)
		}
		pcap, err = os.OpenFile(abs, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("--pcap: %w", err)
		}
		closers = append(closers, func() { pcap.Close() })
		st.Pcap = abs
	}
	if ctx.Err() != nil {
		log.Info("shutting down", "reason", "signal")
		return nil
	}
	if c.net.kernelPorts {
		// The port helper joins the namespaces now, with the caller's
		// rights; stage 2 inherits its socket.
		d, err := nsenter.StartDialer(ctx, c.target)
		if err != nil {
			return err
		}
		closers = append(closers, func() { d.Close() })
		if err := d.KeepAcrossExec(); err != nil {
			return err
		}
	}
	if tapHelper != nil {
		token, err := tapHelper.KeepAcrossExec()
		if err != nil {
			return err
		}
		st.TAPHelper = token
	}
	if c.runChild != nil {
		fd, err := c.runChild.ReleaseFD()
		if err != nil {
			return err
		}
		st.RunPID, st.RunReleaseFD = c.runChild.PID(), fd
	}
	log.Debug("entering the sandbox", "seccomp", c.seccomp)
	return sandbox.Exec(st, c.target, pcap)
}

// pickUpTAP is stage 2's end of the TAP helper that stage 1 started and did
// not wait for (it ran while this image started): it receives the TAP (the
// helper is reaped in the background, or before an error is returned) and
// puts it in st as if stage 1 had handed it over.
func pickUpTAP(ctx context.Context, st *sandbox.State, log *slog.Logger) error {
	p, err := nsenter.ResumeTAP(st.TAPHelper)
	if err != nil {
		return err
	}
	st.TAPHelper = ""
	q, err := p.Wait(ctx)
	if err != nil {
		return err
	}
	if q.Fallback != "" {
		log.Info("TAP offloads refused: using a plain TAP (slower)", "reason", q.Fallback)
	}
	// A number of its own, as stage 1 handed the TAP over: the File
	// received is closed (and its finalizer with it).
	fd, err := unix.FcntlInt(q.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	q.Close()
	if err != nil {
		return fmt.Errorf("TAP: %w", err)
	}
	st.TAPFD, st.VNet = fd, q.VNet
	return nil
}
