package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ferrynet/ferry/nsenter"
	"github.com/ferrynet/ferry/sandbox"
	"github.com/ferrynet/ferry/stack"
)

// slirpUsage is slirp4netns 1.2's help text, option for option: callers
// detect features by searching it.
const slirpUsage = `Usage: slirp4netns [OPTION]... PID|PATH [TAPNAME]
User-mode networking for unprivileged network namespaces.

-c, --configure          bring up the interface
-e, --exit-fd=FD         specify the FD for terminating slirp4netns
-r, --ready-fd=FD        specify the FD to write to when the network is configured
-m, --mtu=MTU            specify MTU (default=1500, max=65521)
-6, --enable-ipv6        enable IPv6 (experimental)
-a, --api-socket=PATH    specify API socket path
--cidr=CIDR              specify network address CIDR (default=10.0.2.0/24)
--disable-host-loopback  prohibit connecting to 127.0.0.1:* on the host namespace
--netns-type=TYPE 	 specify network namespace type ([path|pid|tapfd], default=pid)
--userns-path=PATH	 specify user namespace path
--enable-sandbox         create a new mount namespace (and drop all caps except CAP_NET_BIND_SERVICE if running as the root)
--enable-seccomp         enable seccomp to limit syscalls (experimental)
--outbound-addr=IPv4     sets outbound ipv4 address to bound to (experimental)
--outbound-addr6=IPv6    sets outbound ipv6 address to bound to (experimental)
--disable-dns            disables 10.0.2.3 (or configured internal ip) to host dns redirect (experimental)
--macaddress=MAC         specify the MAC address of the TAP (only valid with -c)
--target-type=TYPE       specify the target type ([netns|bess], default=netns)
-h, --help               show this help and exit
-v, --version            show version and exit

This is ferry's slirp4netns mode: gVisor's netstack instead of libslirp.
`

// slirpVersion is the slirp4netns release whose interface ferry keeps.
const slirpVersion = "1.2.0"

// slirpOptions are slirp4netns's command-line options.
type slirpOptions struct {
	configure, ipv6, help, version          bool
	disableHostLoopback, disableDNS         bool
	sandbox, seccomp                        bool
	exitFD, readyFD, mtu                    int
	apiSocket, cidr, netnsType, usernsPath  string
	outboundAddr, outboundAddr6, macAddress string
	targetType                              string
}

// newSlirp4netnsCommand is `ferry slirp4netns ...`, which takes its
// arguments exactly as slirp4netns does.
func newSlirp4netnsCommand() *cobra.Command {
	return &cobra.Command{
		Use:                "slirp4netns [OPTION]... PID|PATH [TAPNAME]",
		Short:              "Run as slirp4netns 1.2 (its command line, API socket and behaviour); also when ferry is started as 'slirp4netns'",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := runSlirp4netns(cmd.Context(), "slirp4netns", args, os.Stdout, os.Stderr); code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
}

// runSlirp4netns runs ferry's slirp4netns mode and returns the exit status.
func runSlirp4netns(ctx context.Context, prog string, args []string, stdout, stderr io.Writer) int {
	var o slirpOptions
	fl := pflag.NewFlagSet("slirp4netns", pflag.ContinueOnError)
	fl.SetOutput(io.Discard)
	fl.Usage = func() {}
	fl.BoolVarP(&o.configure, "configure", "c", false, "")
	fl.IntVarP(&o.exitFD, "exit-fd", "e", -1, "")
	fl.IntVarP(&o.readyFD, "ready-fd", "r", -1, "")
	fl.IntVarP(&o.mtu, "mtu", "m", 1500, "")
	fl.BoolVarP(&o.ipv6, "enable-ipv6", "6", false, "")
	fl.StringVarP(&o.apiSocket, "api-socket", "a", "", "")
	fl.StringVar(&o.cidr, "cidr", stack.DefaultCIDR, "")
	fl.BoolVar(&o.disableHostLoopback, "disable-host-loopback", false, "")
	fl.StringVar(&o.netnsType, "netns-type", "pid", "")
	fl.StringVar(&o.usernsPath, "userns-path", "", "")
	fl.BoolVar(&o.sandbox, "enable-sandbox", false, "")
	fl.BoolVar(&o.seccomp, "enable-seccomp", false, "")
	fl.StringVar(&o.outboundAddr, "outbound-addr", "", "")
	fl.StringVar(&o.outboundAddr6, "outbound-addr6", "", "")
	fl.BoolVar(&o.disableDNS, "disable-dns", false, "")
	fl.StringVar(&o.macAddress, "macaddress", "", "")
	fl.StringVar(&o.targetType, "target-type", "netns", "")
	fl.BoolVarP(&o.help, "help", "h", false, "")
	fl.BoolVarP(&o.version, "version", "v", false, "")

	usageErr := func(msg string) int {
		if msg != "" {
			fmt.Fprintln(stderr, msg)
		}
		fmt.Fprint(stdout, slirpUsage)
		return 1
	}
	if err := fl.Parse(args); err != nil {
		return usageErr(getoptError(prog, err))
	}
	switch {
	case o.help:
		fmt.Fprint(stdout, slirpUsage)
		return 0
	case o.version:
		fmt.Fprintf(stdout, "slirp4netns version %s\ncommit: %s\nlibslirp: 4.7.0\nSLIRP_CONFIG_VERSION_MAX: 4\nlibseccomp: 2.5.4\nferry: %s (gVisor netstack; libslirp and libseccomp are not used)\n",
			slirpVersion, revision(), version)
		return 0
	}
	c, msg := o.config(fl.Args(), stderr)
	if msg != "" {
		return usageErr(msg)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c.sandbox, c.seccomp = o.sandbox, o.seccomp
	if err := c.resolve(); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	c.banner = func(n *network) { printSlirpBanner(stdout, c, o, n) }
	c.onEnd = func(reason string) {
		if reason == "exitfd event" {
			fmt.Fprintln(stderr, reason)
		}
	}
	if err := serveAttach(ctx, c, &publishFlags{apiSocket: o.apiSocket}, log); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return 1
	}
	return 0
}

// getoptError words a flag parsing error as getopt_long does.
func getoptError(prog string, err error) string {
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "unknown flag: "):
		return fmt.Sprintf("%s: unrecognized option '%s'", prog, strings.TrimPrefix(msg, "unknown flag: "))
	case strings.HasPrefix(msg, "unknown shorthand flag: "):
		// pflag: unknown shorthand flag: 'x' in -x
		if i := strings.Index(msg, "'"); i >= 0 && len(msg) > i+2 {
			return fmt.Sprintf("%s: invalid option -- '%c'", prog, msg[i+1])
		}
	case strings.HasPrefix(msg, "flag needs an argument: "):
		name := strings.TrimPrefix(msg, "flag needs an argument: ")
		if strings.HasPrefix(name, "'") && len(name) > 1 { // -e
			return fmt.Sprintf("%s: option requires an argument -- %s", prog, strings.Fields(name)[0])
		}
		return fmt.Sprintf("%s: option '%s' requires an argument", prog, name)
	}
	return prog + ": " + msg
}

// config validates the options as slirp4netns does, in its order and with
// its messages; msg is non-empty on an error.
func (o *slirpOptions) config(args []string, stderr io.Writer) (c *attachConfig, msg string) {
	if o.mtu <= 0 || o.mtu > 65521 {
		return nil, "MTU must be a positive integer (< 65522)"
	}
	if o.macAddress != "" && !o.configure {
		return nil, "--macaddr cannot be specified when --configure or -c is not specified"
	}
	if _, err := stack.ParseCIDR(o.cidr); err != nil {
		if strings.HasPrefix(err.Error(), "invalid CIDR") {
			return nil, "invalid CIDR: " + o.cidr
		}
		return nil, err.Error()
	}
	if o.targetType == "bess" {
		return nil, "--target-type=bess is not supported by ferry: use --target-type=netns"
	}
	if o.targetType != "netns" {
		return nil, fmt.Sprintf("invalid --target-type %q: use netns", o.targetType)
	}
	// In the sandbox (stage 2) the path is gone: stage 1 checked it.
	resumed, _ := sandbox.Resumed()
	if o.usernsPath != "" && resumed == nil {
		if _, err := os.Stat(o.usernsPath); err != nil {
			return nil, "userns path doesn't exist: " + o.usernsPath
		}
	}
	if len(args) < 1 {
		return nil, "missing PID|PATH"
	}
	if len(args) > 2 && resumed == nil {
		fmt.Fprintf(stderr, "slirp4netns: ignoring extra arguments %q\n", args[2:])
	}
	tapName := "tap0"
	if len(args) > 1 {
		tapName = args[1]
	}
	nf := netFlags{
		mtu:                 o.mtu,
		cidr:                o.cidr,
		disableHostLoopback: o.disableHostLoopback,
		disableDNS:          o.disableDNS,
		udpIdleTimeout:      stack.DefaultUDPIdleTimeout,
		outboundAddr:        o.outboundAddr,
		outboundAddr6:       o.outboundAddr6,
		macAddress:          o.macAddress,
		enableIPv6:          o.ipv6,
		maxTCPFlows:         stack.DefaultMaxTCPFlows,
		maxUDPFlows:         stack.DefaultMaxUDPFlows,
		maxSYNs:             stack.DefaultMaxInFlightSYNs,
		maxUDPUnanswered:    stack.DefaultMaxUnansweredUDP,
	}
	configure := o.configure && o.netnsType != "tapfd"
	nc, err := nf.parse(tapName, configure)
	if err != nil {
		return nil, err.Error()
	}
	// slirp4netns's -c sets no IPv6 address: the guest takes one by SLAAC.
	nc.tap.Addr6, nc.tap.Gateway6 = netip.Prefix{}, netip.Addr{}
	c = &attachConfig{net: nc, readyFD: o.readyFD, exitFD: o.exitFD, tapFD: -1}
	switch o.netnsType {
	case "pid":
		pid, err := strconv.Atoi(args[0])
		if err != nil || pid <= 0 {
			return nil, "PID must be a positive integer"
		}
		c.target = nsenter.Target{PID: pid, UsernsPath: o.usernsPath}
	case "path":
		c.target = nsenter.Target{NetnsPath: args[0], UsernsPath: o.usernsPath}
	case "tapfd":
		fd, err := strconv.Atoi(args[0])
		if err != nil || fd < 0 {
			return nil, "tapfd must be a non-negative integer"
		}
		c.tapFD = fd
	default:
		return nil, fmt.Sprintf("invalid --netns-type %q: use pid, path or tapfd", o.netnsType)
	}
	return c, ""
}

// printSlirpBanner prints the lines slirp4netns prints at start.
func printSlirpBanner(w io.Writer, c *attachConfig, o slirpOptions, n *network) {
	nw := n.stack.Network()
	mask := net.CIDRMask(nw.Prefix.Bits(), 32)
	fmt.Fprintln(w, "Starting slirp")
	fmt.Fprintf(w, "* MTU:             %d\n", c.net.tap.MTU)
	fmt.Fprintf(w, "* Network:         %s\n", nw.Prefix.Addr())
	fmt.Fprintf(w, "* Netmask:         %s\n", net.IP(mask).String())
	fmt.Fprintf(w, "* Gateway:         %s\n", nw.Gateway)
	fmt.Fprintf(w, "* DNS:             %s\n", nw.DNS)
	fmt.Fprintf(w, "* DHCP begin:      %s\n", stack.DHCPPoolStart(nw))
	fmt.Fprintf(w, "* DHCP end:        %s\n", stack.DHCPPoolEnd(nw))
	fmt.Fprintf(w, "* Recommended IP:  %s\n", nw.Guest)
	if o.apiSocket != "" {
		fmt.Fprintf(w, "* API Socket:      %s\n", o.apiSocket)
	}
	if !o.disableHostLoopback {
		fmt.Fprintf(w, "WARNING: 127.0.0.1:* on the host is accessible as %s (set --disable-host-loopback to prohibit connecting to 127.0.0.1:*)\n", nw.Gateway)
	}
}
