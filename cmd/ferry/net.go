package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrynet/ferry/bridge"
	"github.com/ferrynet/ferry/portspec"
)

// netTimeout bounds one `ferry net` call, waiting for the lock included.
const netTimeout = 2 * time.Minute

// errNeedsRoot is what every `ferry net` command says without CAP_NET_ADMIN.
var errNeedsRoot = errors.New("net: needs root (CAP_NET_ADMIN) to make bridges, veths and iptables rules; use 'ferry run' or 'ferry attach' for rootless networking")

// netCommon are the flags every `ferry net` command takes.
type netCommon struct {
	stateDir string
}

func (c *netCommon) manager() (*bridge.Manager, error) {
	return bridge.NewManager(c.stateDir)
}

func newNetCommand() *cobra.Command {
	c := &netCommon{}
	cmd := &cobra.Command{
		Use:   "net",
		Short: "Manage bridge networks on the host (root): the privileged path, like docker network",
		Long: `Manage Docker-style bridge networks made of kernel objects: a Linux bridge
with a gateway address, a veth pair into each connected namespace, iptables
MASQUERADE and DNAT in ferry's own chains (FERRY, FERRY-ISOLATION-1,
FERRY-ISOLATION-2, FERRY-POSTROUTING), and a DNS responder on each
network's gateway that answers the names of connected namespaces.

This needs root (CAP_NET_ADMIN). Every call first repairs what an earlier,
interrupted call left behind.`,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if !hasCapNetAdmin() {
				return errNeedsRoot
			}
			return nil
		},
	}
	cmd.PersistentFlags().StringVar(&c.stateDir, "state-dir", bridge.DefaultStateDir, "directory of ferry's network state and its lock")
	cmd.AddCommand(newNetCreateCommand(c), newNetConnectCommand(c), newNetDisconnectCommand(c),
		newNetLsCommand(c), newNetInspectCommand(c), newNetRmCommand(c), newNetPruneCommand(c),
		newNetServeDNSCommand(c))
	return cmd
}

// hasCapNetAdmin reports whether this process has CAP_NET_ADMIN in its
// effective set.
func hasCapNetAdmin() bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return os.Geteuid() == 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<12) != 0
		}
	}
	return false
}

// netContext is the context of one call: bounded, and cancelled by
// SIGINT/SIGTERM.
func netContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, netTimeout)
	return ctx, func() { cancel(); stop() }
}

// exactArgs is cobra.ExactArgs with an error that says what is wanted.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("want %s, got %d argument(s) (see '%s --help')", what, len(args), cmd.CommandPath())
		}
		return nil
	}
}

func minArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return fmt.Errorf("want %s (see '%s --help')", what, cmd.CommandPath())
		}
		return nil
	}
}

type netCreateFlags struct {
	subnets, gateways []string
	ipRange           string
	internal, ipv6    bool
	mtu               int
	driver            string
	opts              []string
}

func newNetCreateCommand(c *netCommon) *cobra.Command {
	f := &netCreateFlags{}
	cmd := &cobra.Command{
		Use:   "create [flags] NAME",
		Short: "Create a bridge or macvlan network",
		Long: `Create a network: a Linux bridge holding the gateway address, the iptables
rules that NAT its traffic out (unless --internal) and isolate it from other
ferry networks, and a DNS responder on the gateway. Without --subnet, the
first free range of 172.17.0.0/16 ... 172.31.0.0/16, 192.168.0.0/20 ... that
no route of the host covers is used.

With --ipv6 the network is dual stack: an IPv6 --subnet as well (default: a
random unique local /64), gateway ::1 of it on the bridge, and the same rules
in ip6tables.

With -d macvlan -o parent=IF there is no bridge, no rule and no DNS
responder: each connected namespace gets a macvlan (mode bridge) on IF with
an address of --subnet (required: IF's LAN or a part of it) and a default
route via --gateway when given.`,
		Example: `  ferry net create web
  ferry net create --subnet 10.88.0.0/24 --internal backend
  ferry net create --ipv6 --subnet 172.30.0.0/24 --subnet fd42:30::/64 dual
  ferry net create -d macvlan -o parent=eth0 --subnet 192.168.1.0/24 --ip-range 192.168.1.192/27 --gateway 192.168.1.1 lan`,
		Args: exactArgs(1, "the network's NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := f.options(args[0])
			if err != nil {
				return err
			}
			m, err := c.manager()
			if err != nil {
				return err
			}
			ctx, cancel := netContext(cmd)
			defer cancel()
			n, err := m.Create(ctx, o)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), n.ID)
			return nil
		},
	}
	fl := cmd.Flags()
	listVar(fl, &f.subnets, "subnet", "the network's subnet in CIDR form (default: a free private range); with --ipv6, repeat it for the IPv6 subnet")
	listVar(fl, &f.gateways, "gateway", "the gateway address (default: the subnet's first address on a bridge, none on macvlan); one per family")
	fl.StringVar(&f.ipRange, "ip-range", "", "hand out addresses only from this CIDR range inside the subnet")
	fl.BoolVar(&f.internal, "internal", false, "no route out of the network: no MASQUERADE, traffic leaving the subnet is dropped")
	fl.BoolVar(&f.ipv6, "ipv6", false, "dual stack: an IPv6 subnet too (default: a random unique local /64)")
	fl.IntVar(&f.mtu, "mtu", 0, "MTU of the bridge and the veths (default 1500)")
	fl.StringVarP(&f.driver, "driver", "d", "bridge", "network driver: bridge or macvlan")
	listVarP(fl, &f.opts, "opt", "o", "driver option KEY=VALUE: name=BRIDGE names the bridge, mtu=N; parent=IF (macvlan), macvlan_mode=bridge")
	return cmd
}

func (f *netCreateFlags) options(name string) (bridge.CreateOptions, error) {
	o := bridge.CreateOptions{Name: name, Driver: f.driver, Internal: f.internal, MTU: f.mtu}
	var err error
	o.IPv6 = f.ipv6
	for _, sub := range f.subnets {
		p, err := netip.ParsePrefix(sub)
		if err != nil {
			return o, fmt.Errorf("invalid --subnet %q: want CIDR notation such as 10.88.0.0/16 or fd42:88::/64", sub)
		}
		dst := &o.Subnet
		if p.Addr().Is6() {
			dst = &o.Subnet6
		}
		if dst.IsValid() {
			return o, fmt.Errorf("--subnet %s: only one subnet per family (%s already given)", sub, dst)
		}
		*dst = p
	}
	for _, gw := range f.gateways {
		ip, err := netip.ParseAddr(gw)
		if err != nil {
			return o, fmt.Errorf("invalid --gateway %q: want an IP address such as 10.88.0.1", gw)
		}
		dst := &o.Gateway
		if ip.Is6() {
			dst = &o.Gateway6
		}
		if dst.IsValid() {
			return o, fmt.Errorf("--gateway %s: only one gateway per family (%s already given)", gw, dst)
		}
		*dst = ip
	}
	if f.ipRange != "" {
		if o.IPRange, err = netip.ParsePrefix(f.ipRange); err != nil {
			return o, fmt.Errorf("invalid --ip-range %q: want CIDR notation such as 10.88.0.128/25", f.ipRange)
		}
	}
	for _, kv := range f.opts {
		k, v, ok := strings.Cut(kv, "=")
		switch {
		case !ok:
			return o, fmt.Errorf("invalid -o %q: want KEY=VALUE", kv)
		case k == "name" || k == "com.docker.network.bridge.name":
			o.BridgeName = v
		case k == "mtu" || k == "com.docker.network.driver.mtu":
			if o.MTU, err = strconv.Atoi(v); err != nil {
				return o, fmt.Errorf("invalid -o %q: the MTU must be a number", kv)
			}
		case k == "parent":
			o.Parent = v
		case k == "macvlan_mode":
			if v != "bridge" {
				return o, fmt.Errorf("-o macvlan_mode=%s: only mode bridge is supported", v)
			}
		default:
			return o, fmt.Errorf("unknown driver option %q: use name=BRIDGE, mtu=N or parent=IF", k)
		}
	}
	return o, nil
}

// netnsTarget turns a PID or a path into a namespace path and a PID.
func netnsTarget(arg string) (string, int) {
	if pid, err := strconv.Atoi(arg); err == nil && pid > 0 {
		return "/proc/" + arg + "/ns/net", pid
	}
	return arg, 0
}

type netConnectFlags struct {
	ip, ip6 string
	publish []string
	name    string
	aliases []string
}

func newNetConnectCommand(c *netCommon) *cobra.Command {
	f := &netConnectFlags{}
	cmd := &cobra.Command{
		Use:   "connect [flags] NETWORK PID|PATH",
		Short: "Connect a network namespace to a network",
		Long: `Connect the network namespace of process PID (or the one bind-mounted at PATH)
to NETWORK: a veth pair with one end in the namespace (eth0, or the next
free ethN), an address of the network (and an IPv6 one on a dual-stack
network), its MTU, a default route via the gateway if the namespace has none,
and DNAT rules for each -p. On a macvlan network the interface is a macvlan
on the network's parent, and nothing is published.`,
		Example: `  ferry net connect web 1234 -p 8080:80 --name api
  ferry net connect web /run/netns/blue --ip 172.18.0.10`,
		Args: exactArgs(2, "NETWORK and PID|PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, pid := netnsTarget(args[1])
			o := bridge.ConnectOptions{Netns: path, PID: pid, Name: f.name, Aliases: f.aliases}
			if f.ip != "" {
				ip, err := netip.ParseAddr(f.ip)
				if err != nil || !ip.Is4() {
					return fmt.Errorf("invalid --ip %q: want an IPv4 address", f.ip)
				}
				o.IP = ip
			}
			if f.ip6 != "" {
				ip, err := netip.ParseAddr(f.ip6)
				if err != nil || !ip.Is6() || ip.Is4In6() {
					return fmt.Errorf("invalid --ip6 %q: want an IPv6 address", f.ip6)
				}
				o.IP6 = ip
			}
			for _, spec := range f.publish {
				ms, err := portspec.Parse(spec)
				if err != nil {
					return err
				}
				o.Ports = append(o.Ports, ms...)
			}
			m, err := c.manager()
			if err != nil {
				return err
			}
			ctx, cancel := netContext(cmd)
			defer cancel()
			_, err = m.Connect(ctx, args[0], o)
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.ip, "ip", "", "the namespace's address (default: the next free one)")
	fl.StringVar(&f.ip6, "ip6", "", "the namespace's IPv6 address on a dual-stack network (default: the next free one)")
	listVarP(fl, &f.publish, "publish", "p", "publish a port, Docker's syntax: [[HOSTIP:][HOSTPORT]:]PORT[/udp] (repeatable)")
	fl.StringVar(&f.name, "name", "", "a name other namespaces on the network resolve to this one")
	listVar(fl, &f.aliases, "alias", "another name for this namespace on the network (repeatable)")
	return cmd
}

func newNetDisconnectCommand(c *netCommon) *cobra.Command {
	return &cobra.Command{
		Use:   "disconnect NETWORK PID|PATH|NAME",
		Short: "Disconnect a network namespace from a network",
		Args:  exactArgs(2, "NETWORK and PID|PATH|NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := c.manager()
			if err != nil {
				return err
			}
			ctx, cancel := netContext(cmd)
			defer cancel()
			path, _ := netnsTarget(args[1])
			if path != args[1] {
				if _, err := os.Stat(path); err != nil {
					path = args[1]
				}
			}
			return m.Disconnect(ctx, args[0], path)
		},
	}
}

func newNetLsCommand(c *netCommon) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List networks",
		Args:    exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := c.manager()
			if err != nil {
				return err
			}
			ctx, cancel := netContext(cmd)
			defer cancel()
			ns, err := m.List(ctx)
			if err != nil {
				return err
			}
			if quiet {
				for _, n := range ns {
					fmt.Fprintln(cmd.OutOrStdout(), n.Name)
				}
				return nil
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			fmt.Fprintln(w, "NETWORK ID\tNAME\tDRIVER\tSUBNET\tGATEWAY\tBRIDGE\tNAMESPACES")
			for _, n := range ns {
				var subs, gws []string
				for _, c := range n.IPAM.Config {
					subs = append(subs, c.Subnet)
					if c.Gateway != "" {
						gws = append(gws, c.Gateway)
					}
				}
				link := n.Options["name"]
				if p, ok := n.Options["parent"]; ok {
					link = "parent " + p
				}
				gw := strings.Join(gws, ",")
				if gw == "" {
					gw = "-"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", n.ID, n.Name, n.Driver,
					strings.Join(subs, ","), gw, link, len(n.Containers))
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print network names only")
	return cmd
}

func newNetInspectCommand(c *netCommon) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NETWORK...",
		Short: "Show networks as JSON: subnet, gateway, attached namespaces, published ports",
		Args:  minArgs(1, "at least one NETWORK"),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := c.manager()
			if err != nil {
				return err
			}
			ctx, cancel := netContext(cmd)
			defer cancel()
			ns, err := m.Inspect(ctx, args)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "    ")
			return enc.Encode(ns)
		},
	}
}

func newNetRmCommand(c *netCommon) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "rm [flags] NETWORK...",
		Aliases: []string{"remove"},
		Short:   "Remove networks, with their bridge, rules and DNS responder",
		Args:    minArgs(1, "at least one NETWORK"),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := c.manager()
			if err != nil {
				return err
			}
			ctx, cancel := netContext(cmd)
			defer cancel()
			return m.Remove(ctx, args, force)
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "disconnect attached namespaces first")
	return cmd
}

func newNetPruneCommand(c *netCommon) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove every network no namespace is connected to",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := c.manager()
			if err != nil {
				return err
			}
			ctx, cancel := netContext(cmd)
			defer cancel()
			removed, err := m.Prune(ctx)
			for _, name := range removed {
				fmt.Fprintln(cmd.OutOrStdout(), name)
			}
			return err
		},
	}
	cmd.Flags().BoolP("force", "f", false, "accepted for Docker compatibility; prune never asks")
	return cmd
}

// newNetServeDNSCommand is the hidden command `ferry net create` starts
// as a detached child: the DNS responder of one network.
func newNetServeDNSCommand(c *netCommon) *cobra.Command {
	return &cobra.Command{
		Use:    bridge.ServeDNSCommand + " NETWORK-ID",
		Hidden: true,
		Args:   exactArgs(1, "the network's ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ready := os.NewFile(3, "ready")
			return bridge.ServeDNS(ctx, c.stateDir, args[0], ready)
		},
	}
}
