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
	"golang.org/x/sys/unix"
)

// defaultMTU is a network's MTU unless --mtu says otherwise.
const defaultMTU = 1500

// routedPrefixes lists the destinations of family (netlink.FAMILY_V4 or
// FAMILY_V6) routed in the main table of the current namespace, default
// routes, link-local and multicast excepted.
func routedPrefixes(family int) ([]netip.Prefix, error) {
	routes, err := netlink.RouteList(nil, family)
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
		if ok && ones > 0 && !a.IsLinkLocalUnicast() && !a.IsMulticast() {
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
	if n.IPv6() {
		if err := writeSysctl("net/ipv6/conf/"+n.Bridge+"/disable_ipv6", "0", ch); err != nil {
			return err
		}
		addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.Gateway6, n.Subnet6.Bits())), Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrAdd(br, addr); err != nil {
			return fmt.Errorf("IPv6 address of bridge %s: %w", n.Bridge, err)
		}
		ch.done("IPv6 address bridge " + n.Bridge)
	}
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
	return configure(n, a, h, peer, ch)
}

// configure gives the interface link of the namespace h a's addresses
// (IPv6 without duplicate address detection, as ferry hands it out),
// brings it up and, for each family with a gateway, adds a default route
// via it unless the namespace has one already.
func configure(n *Network, a *Attachment, h *netlink.Handle, link netlink.Link, ch *changes) error {
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a.IP, n.Subnet.Bits()))}); err != nil {
		return fmt.Errorf("address %s in the namespace: %w", a.Interface, err)
	}
	ch.done("address " + a.Interface)
	if a.IP6.IsValid() {
		addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a.IP6, n.Subnet6.Bits())), Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("IPv6 address %s in the namespace (is IPv6 disabled there?): %w", a.Interface, err)
		}
		ch.done("IPv6 address " + a.Interface)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up in the namespace: %w", a.Interface, err)
	}
	ch.done("up " + a.Interface)
	for _, gw := range []netip.Addr{n.Gateway, n.Gateway6} {
		if !gw.IsValid() || gw.Is6() && !a.IP6.IsValid() {
			continue
		}
		family := netlink.FAMILY_V4
		if gw.Is6() {
			family = netlink.FAMILY_V6
		}
		if ok, err := hasDefaultRoute(h, family); err != nil {
			return err
		} else if ok {
			continue // the namespace has a default route: it stays
		}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(gw.AsSlice())}); err != nil {
			return fmt.Errorf("default route via %s in the namespace: %w", gw, err)
		}
		ch.done("default route via " + gw.String())
	}
	return nil
}

// hasDefaultRoute reports whether the namespace h has a default route of
// family.
func hasDefaultRoute(h *netlink.Handle, family int) (bool, error) {
	routes, err := h.RouteList(nil, family)
	if err != nil {
		return false, fmt.Errorf("list the namespace's routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() && r.Dst.Mask != nil && isZeroMask(r.Dst.Mask) {
			return true, nil
		}
	}
	return false, nil
}

// createMacvlan makes a's interface in the namespace ns: a macvlan in
// bridge mode on n's parent, created right inside the namespace with a's
// name and MAC, then configured as a veth's end would be.
func createMacvlan(n *Network, a *Attachment, ns netns.NsHandle, h *netlink.Handle, ch *changes) error {
	parent, err := netlink.LinkByName(n.Parent)
	if err != nil {
		return fmt.Errorf("network %s: parent %s: %w", n.Name, n.Parent, err)
	}
	mac, _ := net.ParseMAC(a.MAC)
	mv := &netlink.Macvlan{
		LinkAttrs: netlink.LinkAttrs{
			Name: a.Interface, MTU: n.MTU, HardwareAddr: mac,
			ParentIndex: parent.Attrs().Index, Namespace: netlink.NsFd(int(ns)),
		},
		Mode: netlink.MACVLAN_MODE_BRIDGE,
	}
	if err := netlink.LinkAdd(mv); err != nil {
		return fmt.Errorf("create macvlan %s on %s: %w", a.Interface, n.Parent, err)
	}
	ch.done("add macvlan " + a.Interface)
	link, err := h.LinkByName(a.Interface)
	if err != nil {
		return fmt.Errorf("macvlan %s in the namespace: %w", a.Interface, err)
	}
	return configure(n, a, h, link, ch)
}

// macvlanIn returns a's macvlan in the namespace h: the macvlan named
// a.Interface with a's MAC, nil when there is none.
func macvlanIn(h *netlink.Handle, a *Attachment) (netlink.Link, error) {
	l, err := h.LinkByName(a.Interface)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s in the namespace: %w", a.Interface, err)
	}
	if l.Type() != "macvlan" || l.Attrs().HardwareAddr.String() != a.MAC {
		return nil, nil
	}
	return l, nil
}

// deleteMacvlan removes a's macvlan from its namespace; a namespace gone,
// or one without it, is not an error.
func deleteMacvlan(a *Attachment, ch *changes) error {
	if id, err := netnsID(a.Netns); err != nil || id != a.NetnsID {
		return nil // the namespace went away, and the macvlan with it
	}
	ns, h, err := openNetns(a.Netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	defer h.Close()
	l, err := macvlanIn(h, a)
	if err != nil || l == nil {
		return err
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("delete macvlan %s: %w", a.Interface, err)
	}
	ch.done("delete macvlan " + a.Interface)
	return nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
