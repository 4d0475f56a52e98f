// Package cni is ferry as a CNI plugin (spec 1.1.0, and the versions
// libcni negotiates down to): ADD, DEL, CHECK, VERSION, STATUS and GC on
// top of package bridge, with the protocol left to the skel and types
// packages of github.com/containernetworking/cni.
//
// A network configuration names a ferry bridge network, made on the
// first ADD and removed with its last attachment:
//
//	{"cniVersion": "1.0.0", "name": "web", "type": "ferry",
//	 "subnet": "172.31.230.0/24", "gateway": "172.31.230.1",
//	 "ipMasq": true, "isolate": true, "mtu": 1500,
//	 "capabilities": {"portMappings": true}}
//
// subnet is picked among free private ranges when left out, gateway
// defaults to the subnet's first address, ipMasq and isolate default to
// true (MASQUERADE of traffic leaving the subnet; no traffic to or from
// other ferry networks), mtu to 1500. "bridge" names the Linux bridge
// (fbr-ID by default). "stateDir" is ferry's state directory, shared with
// `ferry net` (default: env FERRY_STATE_DIR, else /run/ferry); networks
// of one host namespace must share it. The portMappings runtime
// capability takes the reference portmap plugin's entries
// ({"hostPort", "containerPort", "protocol", "hostIP"}) and publishes
// them as ferry DNAT rules.
package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"

	"github.com/ferrynet/ferry/bridge"
	"github.com/ferrynet/ferry/portspec"
)

// EnvStateDir names ferry's state directory when the configuration has
// no "stateDir".
const EnvStateDir = "FERRY_STATE_DIR"

// Versions are the CNI spec versions the plugin speaks.
var Versions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// timeout bounds one call, waiting for ferry's state lock included.
const timeout = 2 * time.Minute

// PortMapping is one entry of the portMappings runtime capability.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// NetConf is the plugin's network configuration.
type NetConf struct {
	types.NetConf
	Subnet        string `json:"subnet,omitempty"`
	Gateway       string `json:"gateway,omitempty"`
	IPMasq        *bool  `json:"ipMasq,omitempty"`
	Isolate       *bool  `json:"isolate,omitempty"`
	MTU           int    `json:"mtu,omitempty"`
	Bridge        string `json:"bridge,omitempty"`
	StateDir      string `json:"stateDir,omitempty"`
	RuntimeConfig struct {
		PortMappings []PortMapping `json:"portMappings,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// Main runs the plugin on the CNI_* environment, stdin and stdout, and
// returns the process's exit status.
func Main() int {
	funcs := skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus}
	if err := skel.PluginMainFuncsWithError(funcs, Versions, "ferry CNI plugin: bridge networks from ferry's privileged path"); err != nil {
		if err := err.Print(); err != nil {
			fmt.Fprintf(os.Stderr, "ferry: write CNI error: %v\n", err)
		}
		return 1
	}
	return 0
}

func errorf(code uint, format string, args ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, args...), "")
}

// bridgeError turns an error of package bridge into a CNI error.
func bridgeError(err error) *types.Error {
	switch {
	case errors.Is(err, bridge.ErrNetnsMissing):
		return errorf(types.ErrUnknownContainer, "%v", err)
	case errors.Is(err, context.DeadlineExceeded):
		return errorf(types.ErrTryAgainLater, "%v", err)
	}
	return errorf(types.ErrInternal, "%v", err)
}

// parseConf decodes stdin. With full, the network's own settings are
// validated too (ADD, CHECK); DEL and GC need only the name and state.
func parseConf(data []byte, full bool) (*NetConf, *types.Error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, errorf(types.ErrDecodingFailure, "decode the network configuration: %v", err)
	}
	if conf.Name == "" {
		return nil, errorf(types.ErrInvalidNetworkConfig, `network configuration has no "name"`)
	}
	if !full {
		return conf, nil
	}
	if _, err := conf.createOptions(); err != nil {
		return nil, err
	}
	if _, err := conf.ports(); err != nil {
		return nil, err
	}
	return conf, nil
}

func (c *NetConf) manager() (*bridge.Manager, *types.Error) {
	dir := c.StateDir
	if dir == "" {
		dir = os.Getenv(EnvStateDir)
	}
	m, err := bridge.NewManager(dir)
	if err != nil {
		return nil, errorf(types.ErrInvalidNetworkConfig, "stateDir %q: %v", dir, err)
	}
	return m, nil
}

// createOptions is the network the configuration describes.
func (c *NetConf) createOptions() (bridge.CreateOptions, *types.Error) {
	o := bridge.CreateOptions{Name: c.Name, MTU: c.MTU, BridgeName: c.Bridge}
	if c.Subnet != "" {
		p, err := netip.ParsePrefix(c.Subnet)
		if err != nil || !p.Addr().Is4() {
			return o, errorf(types.ErrInvalidNetworkConfig, `"subnet": %q is not an IPv4 CIDR such as 172.31.230.0/24`, c.Subnet)
		}
		o.Subnet = p
	}
	if c.Gateway != "" {
		ip, err := netip.ParseAddr(c.Gateway)
		if err != nil || !ip.Is4() {
			return o, errorf(types.ErrInvalidNetworkConfig, `"gateway": %q is not an IPv4 address`, c.Gateway)
		}
		if !o.Subnet.IsValid() {
			return o, errorf(types.ErrInvalidNetworkConfig, `"gateway" needs "subnet"`)
		}
		if !o.Subnet.Contains(ip) {
			return o, errorf(types.ErrInvalidNetworkConfig, `"gateway" %s is not in "subnet" %s`, ip, o.Subnet)
		}
		o.Gateway = ip
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return o, errorf(types.ErrInvalidNetworkConfig, `"mtu": %d is not between 68 and 65535`, c.MTU)
	}
	if len(c.Bridge) > 15 {
		return o, errorf(types.ErrInvalidNetworkConfig, `"bridge": %q is longer than 15 characters`, c.Bridge)
	}
	o.NoMasquerade = c.IPMasq != nil && !*c.IPMasq
	o.NoIsolation = c.Isolate != nil && !*c.Isolate
	return o, nil
}

// ports turns the portMappings capability into -p mappings, through the
// -p grammar so that they are validated as ferry's own are.
func (c *NetConf) ports() ([]portspec.Mapping, *types.Error) {
	var out []portspec.Mapping
	for _, pm := range c.RuntimeConfig.PortMappings {
		proto := strings.ToLower(pm.Protocol)
		if proto == "" {
			proto = "tcp"
		}
		if pm.HostPort < 0 || pm.HostPort > 65535 || pm.ContainerPort < 1 || pm.ContainerPort > 65535 {
			return nil, errorf(types.ErrInvalidNetworkConfig, "portMappings: %+v: ports must be 1 to 65535", pm)
		}
		host := ""
		if pm.HostPort != 0 {
			host = strconv.Itoa(pm.HostPort)
		}
		spec := strconv.Itoa(pm.ContainerPort) + "/" + proto
		switch {
		case pm.HostIP != "":
			ip, err := netip.ParseAddr(pm.HostIP)
			if err != nil {
				return nil, errorf(types.ErrInvalidNetworkConfig, "portMappings: hostIP %q is not an IP address", pm.HostIP)
			}
			if !ip.Is4() && !ip.IsUnspecified() {
				return nil, errorf(types.ErrInvalidNetworkConfig, "portMappings: hostIP %s: ferry networks are IPv4 only: publish on an IPv4 address", ip)
			}
			if ip.Is4() {
				spec = ip.String() + ":" + host + ":" + spec
			} else if host != "" {
				spec = host + ":" + spec
			}
		case host != "":
			spec = host + ":" + spec
		}
		ms, err := portspec.Parse(spec)
		if err != nil {
			return nil, errorf(types.ErrInvalidNetworkConfig, "portMappings: %+v: %v", pm, err)
		}
		out = append(out, ms...)
	}
	return out, nil
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, cerr := parseConf(args.StdinData, true)
	if cerr != nil {
		return cerr
	}
	var prev *types100.Result
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.NetConf); err != nil {
			return errorf(types.ErrDecodingFailure, "prevResult: %v", err)
		}
		r, err := types100.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return errorf(types.ErrDecodingFailure, "prevResult: %v", err)
		}
		prev = r
	}
	if _, err := os.Stat(args.Netns); err != nil {
		return errorf(types.ErrUnknownContainer, "network namespace %s: %v", args.Netns, err)
	}
	m, cerr := conf.manager()
	if cerr != nil {
		return cerr
	}
	co, _ := conf.createOptions()
	ports, _ := conf.ports()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	n, a, err := m.AttachContainer(ctx, bridge.OwnerCNI, co, bridge.ConnectOptions{
		Netns: args.Netns, Interface: args.IfName, ContainerID: args.ContainerID, Ports: ports,
	})
	if err != nil {
		return bridgeError(err)
	}
	result := &types100.Result{CNIVersion: types100.ImplementedSpecVersion}
	if prev != nil {
		result = prev
	}
	base := len(result.Interfaces)
	for _, name := range []string{n.Bridge, a.HostVeth} {
		iface := &types100.Interface{Name: name}
		if l, err := netlink.LinkByName(name); err == nil {
			iface.Mac = l.Attrs().HardwareAddr.String()
		}
		result.Interfaces = append(result.Interfaces, iface)
	}
	result.Interfaces = append(result.Interfaces, &types100.Interface{Name: a.Interface, Mac: a.MAC, Sandbox: args.Netns})
	idx := base + 2
	result.IPs = append(result.IPs, &types100.IPConfig{
		Interface: &idx,
		Address:   net.IPNet{IP: net.IP(a.IP.AsSlice()), Mask: net.CIDRMask(n.Subnet.Bits(), 32)},
		Gateway:   net.IP(n.Gateway.AsSlice()),
	})
	result.Routes = append(result.Routes, &types.Route{
		Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: net.IP(n.Gateway.AsSlice()),
	})
	if len(result.DNS.Nameservers) == 0 {
		result.DNS.Nameservers = []string{n.Gateway.String()}
	}
	return types.PrintResult(result, conf.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	conf, cerr := parseConf(args.StdinData, false)
	if cerr != nil {
		return cerr
	}
	m, cerr := conf.manager()
	if cerr != nil {
		return cerr
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := m.DetachContainer(ctx, conf.Name, args.ContainerID, args.IfName); err != nil {
		return bridgeError(err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, cerr := parseConf(args.StdinData, true)
	if cerr != nil {
		return cerr
	}
	if conf.RawPrevResult == nil {
		return errorf(types.ErrInvalidNetworkConfig, "CHECK needs a prevResult: the runtime gives the result of ADD")
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return errorf(types.ErrDecodingFailure, "prevResult: %v", err)
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return errorf(types.ErrDecodingFailure, "prevResult: %v", err)
	}
	m, cerr := conf.manager()
	if cerr != nil {
		return cerr
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, a, err := m.CheckContainer(ctx, conf.Name, args.ContainerID, args.Netns, args.IfName)
	if err != nil {
		return bridgeError(err)
	}
	for _, ip := range prev.IPs {
		if got, ok := netip.AddrFromSlice(ip.Address.IP); ok && got.Unmap() == a.IP {
			return nil
		}
	}
	return errorf(types.ErrInternal, "prevResult lacks address %s of container %s", a.IP, args.ContainerID)
}

func cmdGC(args *skel.CmdArgs) error {
	conf, cerr := parseConf(args.StdinData, false)
	if cerr != nil {
		return cerr
	}
	m, cerr := conf.manager()
	if cerr != nil {
		return cerr
	}
	valid := map[types.GCAttachment]bool{}
	for _, v := range conf.ValidAttachments {
		valid[v] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := m.GCContainers(ctx, conf.Name, func(id, ifname string) bool {
		return valid[types.GCAttachment{ContainerID: id, IfName: ifname}]
	})
	if err != nil {
		return bridgeError(err)
	}
	return nil
}

// pluginNotAvailable is the spec's code for STATUS when the plugin cannot
// add containers.
const pluginNotAvailable = 50

func cmdStatus(args *skel.CmdArgs) error {
	conf, cerr := parseConf(args.StdinData, false)
	if cerr != nil {
		return cerr
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		return errorf(pluginNotAvailable, "iptables is not installed: install the iptables package (iptables-nft or legacy)")
	}
	m, cerr := conf.manager()
	if cerr != nil {
		return cerr
	}
	if err := os.MkdirAll(m.StateDir(), 0o700); err != nil {
		return errorf(pluginNotAvailable, "state directory: %v", err)
	}
	return nil
}
