package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ferrynet/ferry/nsenter"
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
--userns-path), so it runs as the same unprivileged user as the container.`,
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
	c := &attachConfig{net: nc, readyFD: f.readyFD, exitFD: f.exitFD, tapFD: -1}
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

// resolve checks that the target exists and the fds are open.
func (c *attachConfig) resolve() error {
	var err error
	switch {
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
	var n *network
	var err error
	if c.tapFD >= 0 {
		f := os.NewFile(uintptr(c.tapFD), "tap")
		n, err = startNetworkOn(f, tap.HasVNetHeader(c.tapFD), c.net, log)
	} else {
		n, err = startNetwork(ctx, c.target, c.net, log)
	}
	if err != nil {
		return err
	}
	defer n.Close()
	pub, err := startPublishing(ctx, n, pf, log)
	if err != nil {
		return err
	}
	defer pub.Close()
	log.Info("network up", "target", c.target.NetnsPath, "tap", c.net.tap.Name)
	if c.banner != nil {
		c.banner(n)
	}
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

// waitForEnd blocks until the target process exits, exit-fd hangs up, or
// ctx ends (a signal).
func waitForEnd(ctx context.Context, c *attachConfig, log *slog.Logger) string {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reason := make(chan string, 2)
	if c.target.PID != 0 {
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

// signalReady writes "1" to the ready fd and closes it.
func signalReady(fd int) error {
	f := os.NewFile(uintptr(fd), "ready-fd")
	defer f.Close()
	if _, err := f.Write([]byte("1")); err != nil {
		return fmt.Errorf("write to ready-fd %d: %w", fd, err)
	}
	return nil
}
