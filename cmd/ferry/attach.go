package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ferrynet/ferry/nsenter"
	"github.com/ferrynet/ferry/stack"
	"github.com/ferrynet/ferry/tap"
)

// attachFlags are the flags of `ferry attach`.
type attachFlags struct {
	configure           bool
	mtu                 int
	cidr                string
	disableHostLoopback bool
	readyFD             int
	exitFD              int
	netnsType           string
	usernsPath          string
	disableDNS          bool
	dnsUpstreams        []string
	udpIdleTimeout      time.Duration
}

// MTU bounds: IPv4's minimum, and the largest a TAP frame fits in 64 KiB.
const (
	minMTU = 68
	maxMTU = 65521
)

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
		Args: cobra.RangeArgs(1, 2),
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
	fl.IntVarP(&f.mtu, "mtu", "m", 65520, fmt.Sprintf("MTU of the TAP device (%d-%d)", minMTU, maxMTU))
	fl.StringVar(&f.cidr, "cidr", stack.DefaultCIDR, "IPv4 network of the namespace: gateway +2, DNS +3, guest +100 (prefix length 1-25)")
	fl.BoolVar(&f.disableHostLoopback, "disable-host-loopback", false, "refuse connections to the gateway instead of reaching the host's 127.0.0.1")
	fl.IntVarP(&f.readyFD, "ready-fd", "r", -1, "write \"1\" to this fd and close it once the network is up")
	fl.IntVarP(&f.exitFD, "exit-fd", "e", -1, "exit when this fd hangs up or becomes readable")
	fl.StringVar(&f.netnsType, "netns-type", "pid", "how to read the target: pid (a process ID) or path (a network namespace file)")
	fl.StringVar(&f.usernsPath, "userns-path", "", "user namespace to join (default: the one owning the network namespace)")
	fl.BoolVar(&f.disableDNS, "disable-dns", false, "do not answer DNS at the DNS address (it stays silent)")
	fl.StringArrayVar(&f.dnsUpstreams, "dns-upstream", nil, "DNS server ADDR[:PORT] the DNS forwarder asks (repeatable; default: the host's /etc/resolv.conf)")
	fl.DurationVar(&f.udpIdleTimeout, "udp-idle-timeout", stack.DefaultUDPIdleTimeout, "close UDP flows idle for this long")
	return cmd
}

// attachConfig is the validated form of attach's flags and arguments.
type attachConfig struct {
	target    nsenter.Target
	tap       tap.Config
	stack     stack.Config
	readyFD   int
	exitFD    int
	upstreams []string
}

// parseAttach validates flags and arguments, without side effects.
func parseAttach(f *attachFlags, args []string) (*attachConfig, error) {
	if f.mtu < minMTU || f.mtu > maxMTU {
		return nil, fmt.Errorf("invalid MTU %d: MTU must be between %d and %d", f.mtu, minMTU, maxMTU)
	}
	prefix, err := stack.ParseCIDR(f.cidr)
	if err != nil {
		return nil, err
	}
	if f.udpIdleTimeout <= 0 {
		return nil, fmt.Errorf("invalid --udp-idle-timeout %s: must be positive", f.udpIdleTimeout)
	}
	network := stack.NewNetwork(prefix)
	c := &attachConfig{readyFD: f.readyFD, exitFD: f.exitFD}

	tapName := "tap0"
	if len(args) > 1 {
		tapName = args[1]
	}
	if len(tapName) == 0 || len(tapName) >= 16 {
		return nil, fmt.Errorf("invalid TAP name %q: must be 1 to 15 characters", tapName)
	}
	c.tap = tap.Config{
		Name:      tapName,
		MTU:       f.mtu,
		Configure: f.configure,
		Addr:      network.GuestPrefix(),
		Gateway:   network.Gateway,
	}
	for _, u := range f.dnsUpstreams {
		addr, err := stack.ParseUpstream(u)
		if err != nil {
			return nil, err
		}
		c.upstreams = append(c.upstreams, addr)
	}
	c.stack = stack.Config{
		Network:             network,
		DisableHostLoopback: f.disableHostLoopback,
		DisableDNS:          f.disableDNS,
		UDPIdleTimeout:      f.udpIdleTimeout,
	}

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
	if c.target.PID != 0 {
		c.target, err = nsenter.PIDTarget(c.target.PID, c.target.UsernsPath)
	} else {
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
	if len(c.upstreams) == 0 && !c.stack.DisableDNS {
		c.upstreams, err = stack.UpstreamsFromResolvConf("/etc/resolv.conf")
		if err != nil {
			log.Warn("no DNS upstream: DNS queries will fail; pass --dns-upstream", "err", err)
		}
	}
	c.stack.DNSUpstreams = c.upstreams

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	tapFile, err := nsenter.OpenTAP(ctx, c.target, c.tap)
	if err != nil {
		return err
	}
	defer tapFile.Close()
	link, err := tap.NewEndpoint(int(tapFile.Fd()), uint32(c.tap.MTU), gatewayMAC(c.stack.Network))
	if err != nil {
		return err
	}
	c.stack.Link = link
	c.stack.Logger = log
	st, err := stack.New(c.stack)
	if err != nil {
		return err
	}
	defer st.Close()
	log.Info("network up", "target", c.target.NetnsPath, "tap", c.tap.Name, "mtu", c.tap.MTU,
		"network", c.stack.Network.Prefix, "gateway", c.stack.Network.Gateway, "dns", c.stack.Network.DNS)

	if c.readyFD >= 0 {
		if err := signalReady(c.readyFD); err != nil {
			return err
		}
	}
	return waitForEnd(ctx, c, log)
}

// waitForEnd blocks until the target process exits, exit-fd hangs up, or
// ctx ends (a signal).
func waitForEnd(ctx context.Context, c *attachConfig, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reason := make(chan string, 2)
	waiters := 0
	if c.target.PID != 0 {
		waiters++
		go func() {
			if err := c.target.WaitExit(ctx); err == nil {
				reason <- "target process exited"
			} else {
				reason <- ""
			}
		}()
	}
	if c.exitFD >= 0 {
		waiters++
		go func() {
			if err := nsenter.WaitHangup(ctx, c.exitFD); err == nil {
				reason <- "exitfd event"
			} else if !errors.Is(err, context.Canceled) {
				log.Error("watch exit-fd", "err", err)
				reason <- ""
			} else {
				reason <- ""
			}
		}()
	}
	select {
	case r := <-reason:
		if r != "" {
			log.Info("shutting down", "reason", r)
		}
	case <-ctx.Done():
		log.Info("shutting down", "reason", "signal")
	}
	cancel()
	return nil
}

// signalReady writes "1" to the ready fd and closes it.
func signalReady(fd int) error {
	f := os.NewFile(uintptr(fd), "ready-fd")
	if f == nil {
		return fmt.Errorf("ready-fd %d is not a valid file descriptor", fd)
	}
	defer f.Close()
	if _, err := f.Write([]byte("1")); err != nil {
		return fmt.Errorf("write to ready-fd %d: %w", fd, err)
	}
	return nil
}

// gatewayMAC is the link address of ferry's side of the TAP: 52:55 followed
// by the gateway's IPv4 address, as libslirp uses.
func gatewayMAC(n stack.Network) net.HardwareAddr {
	a := n.Gateway.As4()
	return net.HardwareAddr{0x52, 0x55, a[0], a[1], a[2], a[3]}
}
