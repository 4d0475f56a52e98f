package bridge

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// defaultMTU is a network's MTU unless --mtu says otherwise.
const defaultMTU = 1500

// routedPrefixes lists the IPv4 destinations routed in the main table of
// the current namespace, default routes excepted.
func routedPrefixes() ([]netip.Prefix, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		if ok && ones > 0 {
			out = append(out, netip.PrefixFrom(a.Unmap(), ones))
		}
	}
	return out, nil
}

// linkExists reports whether the current namespace has a link named name.
func linkExists(name string) (bool, error) {
	_, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &nf):
		return false, nil
	default:
		return false, fmt.Errorf("look up link %s: %w", name, err)
	}
}

// createBridge makes n's bridge with the gateway address, route_localnet
// on (so DNAT to a published 127.0.0.1 port can leave through it) and up.
func createBridge(n *Network, ch *changes) error {
	// A MAC address of its own keeps the bridge from taking its ports'.
	mac := make(net.HardwareAddr, 6)
	rand.Read(mac)
	mac[0] = mac[0]&^1 | 2
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Bridge, MTU: n.MTU, HardwareAddr: mac}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s: %w", n.Bridge, err)
	}
	ch.done("add bridge " + n.Bridge)
	addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.Gateway, n.Subnet.Bits()))}
	if err := netlink.AddrAdd(br, addr); err != nil {
		return fmt.Errorf("address bridge %s: %w", n.Bridge, err)
	}
	ch.done("address bridge " + n.Bridge)
	if err := writeSysctl("net/ipv4/conf/"+n.Bridge+"/route_localnet", "1", ch); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bring bridge %s up: %w", n.Bridge, err)
	}
	ch.done("bridge " + n.Bridge + " up")
	return nil
}

// deleteLink removes the link named name from the current namespace; a
// link already gone is not an error.
func deleteLink(name string, ch *changes) error {
	l, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up link %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	ch.done("delete link " + name)
	return nil
}

// writeSysctl sets /proc/sys/KEY to value unless it already has it.
func writeSysctl(key, value string, ch *changes) error {
	p := "/proc/sys/" + key
	if cur, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set %s to %s: %w", strings.ReplaceAll(key, "/", "."), value, err)
	}
	ch.done("sysctl " + key)
	return nil
}

// netnsID identifies the namespace at path by device and inode.
func netnsID(path string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", fmt.Errorf("network namespace %s: %w: give a running process's PID or a bind-mounted namespace path", path, err)
	}
	return strconv.FormatUint(st.Dev, 10) + ":" + strconv.FormatUint(st.Ino, 10), nil
}

// nextInterface returns the first ethN not yet used in the namespace h.
func nextInterface(h *netlink.Handle) (string, error) {
	links, err := h.LinkList()
	if err != nil {
		return "", fmt.Errorf("list the namespace's links: %w", err)
	}
	used := map[string]bool{}
	for _, l := range links {
		used[l.Attrs().Name] = true
	}
	for i := 0; ; i++ {
		if name := "eth" + strconv.Itoa(i); !used[name] {
			return name, nil
		}
	}
}

// openNetns opens the namespace at path with a netlink handle inside it.
func openNetns(path string) (netns.NsHandle, *netlink.Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return 0, nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return 0, nil, fmt.Errorf("netlink in namespace %s: %w", path, err)
	}
	return ns, h, nil
}

// createVeth connects the namespace ns (with netlink handle h) to n: a
// veth pair whose host end joins the bridge and whose other end, a's
// Interface, gets a's address and MAC, n's MTU, and a default route via
// the gateway when the namespace has none.
func createVeth(n *Network, a *Attachment, ns netns.NsHandle, h *netlink.Handle, ch *changes) error {
	br, err := netlink.LinkByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("network %s: bridge %s: %w", n.Name, n.Bridge, err)
	}
	mac, _ := net.ParseMAC(a.MAC)
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: a.HostVeth, MTU: n.MTU, MasterIndex: br.Attrs().Index},
		PeerName:         a.Interface,
		PeerHardwareAddr: mac,
		PeerMTU:          uint32(n.MTU),
		PeerNamespace:    netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth pair %s/%s: %w", a.HostVeth, a.Interface, err)
	}
	ch.done("add veth " + a.HostVeth)
	host, err := netlink.LinkByName(a.HostVeth)
	if err != nil {
		return fmt.Errorf("veth %s: %w", a.HostVeth, err)
	}
	if err := netlink.LinkSetHairpin(host, true); err != nil {
		return fmt.Errorf("hairpin on %s: %w", a.HostVeth, err)
	}
	ch.done("hairpin " + a.HostVeth)
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("bring %s up: %w", a.HostVeth, err)
	}
	ch.done("up " + a.HostVeth)
	peer, err := h.LinkByName(a.Interface)
	if err != nil {
		return fmt.Errorf("veth %s in the namespace: %w", a.Interface, err)
	}
	if err := h.AddrAdd(peer, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a.IP, n.Subnet.Bits()))}); err != nil {
		return fmt.Errorf("address %s in the namespace: %w", a.Interface, err)
	}
	ch.done("address " + a.Interface)
	if err := h.LinkSetUp(peer); err != nil {
		return fmt.Errorf("bring %s up in the namespace: %w", a.Interface, err)
	}
	ch.done("up " + a.Interface)
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list the namespace's routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() && r.Dst.Mask != nil && isZeroMask(r.Dst.Mask) {
			return nil // the namespace has a default route: it stays
		}
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: net.IP(n.Gateway.AsSlice())}); err != nil {
		return fmt.Errorf("default route in the namespace: %w", err)
	}
	ch.done("default route via " + a.Interface)
	return nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
