package bridge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ferrynet/ferry/portspec"
)

// Manager makes and removes ferry networks recorded in one state
// directory. Its methods are safe to call from concurrent processes: each
// holds the directory's lock throughout, and first repairs whatever an
// earlier call left half done (see reconcile).
type Manager struct {
	dir string
}

// NewManager returns a Manager for stateDir (DefaultStateDir if empty).
func NewManager(stateDir string) (*Manager, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	return &Manager{dir: abs}, nil
}

// StateDir is the manager's state directory, absolute.
func (m *Manager) StateDir() string { return m.dir }

// session is one call's view: the state under the lock and the kernel.
type session struct {
	dir   string
	st    *state
	ch    *changes
	rules *rules
}

// do runs fn under the lock after reconciling.
func (m *Manager) do(ctx context.Context, fn func(s *session) error) error {
	unlock, err := lock(ctx, m.dir)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := loadState(m.dir)
	if err != nil {
		return err
	}
	ch := newChanges()
	r, err := newRules(ch)
	if err != nil {
		return err
	}
	s := &session{dir: m.dir, st: st, ch: ch, rules: r}
	if err := s.reconcile(); err != nil {
		return fmt.Errorf("repair earlier state: %w", err)
	}
	return fn(s)
}

func (s *session) save() error { return s.st.save(s.dir) }

// CreateOptions describe a new network.
type CreateOptions struct {
	Name string
	// Driver is "bridge" (the default) or "macvlan".
	Driver string
	// Subnet is picked among free private ranges when not valid.
	Subnet netip.Prefix
	// Gateway defaults to the subnet's first address on a bridge network;
	// a macvlan network has none unless given.
	Gateway netip.Addr
	// IPv6 makes a dual-stack network: Subnet6 (a random unique local
	// /64 when not valid) with Gateway6 (default: its ::1 on a bridge
	// network, none on a macvlan network).
	IPv6     bool
	Subnet6  netip.Prefix
	Gateway6 netip.Addr
	// Parent is the host interface a macvlan network's interfaces sit on.
	Parent string
	// IPRange, when valid, limits the addresses handed out.
	IPRange netip.Prefix
	// Internal networks have no route out: no MASQUERADE, and traffic
	// leaving the subnet is dropped.
	Internal bool
	// MTU defaults to 1500.
	MTU int
	// BridgeName defaults to fbr-ID.
	BridgeName string
	// NoMasquerade leaves out the MASQUERADE of traffic leaving the
	// subnet (CNI's "ipMasq": false); NoIsolation the rules that keep
	// other ferry networks out (CNI's "isolate": false).
	NoMasquerade bool
	NoIsolation  bool
}

var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

func randomID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Create makes a network: its bridge with the gateway address, its
// iptables rules and its DNS responder.
func (m *Manager) Create(ctx context.Context, o CreateOptions) (*Network, error) {
	var out *Network
	err := m.do(ctx, func(s *session) error {
		n, err := s.plan(o)
		if err != nil {
			return err
		}
		s.st.Networks[n.Name] = n
		if err := s.save(); err != nil {
			return err
		}
		if err := s.build(n); err != nil {
			s.rollbackNetwork(n)
			return err
		}
		out = n
		return nil
	})
	return out, err
}

// plan validates o and returns the network record to build.
func (s *session) plan(o CreateOptions) (*Network, error) {
	if !validName.MatchString(o.Name) {
		return nil, fmt.Errorf("invalid network name %q: use letters, digits, '_', '.' and '-'", o.Name)
	}
	if _, ok := s.st.Networks[o.Name]; ok {
		return nil, fmt.Errorf("network %s already exists: choose another name or remove it with 'ferry net rm %s'", o.Name, o.Name)
	}
	n := &Network{
		ID: randomID(), Name: o.Name, Driver: DriverBridge, Internal: o.Internal, MTU: o.MTU,
		NoMasquerade: o.NoMasquerade, NoIsolation: o.NoIsolation,
		Created: time.Now().UTC(), Status: Creating, Attachments: map[string]*Attachment{},
	}
	switch o.Driver {
	case "", DriverBridge:
		if o.Parent != "" {
			return nil, errors.New("-o parent is for the macvlan driver: add -d macvlan")
		}
	case DriverMacvlan:
		n.Driver = DriverMacvlan
		if err := planMacvlan(n, o); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown driver %q: use bridge or macvlan", o.Driver)
	}
	if n.MTU == 0 {
		n.MTU = defaultMTU
	}
	if n.MTU < 68 || n.MTU > 65535 {
		return nil, fmt.Errorf("invalid --mtu %d: use 68 to 65535", o.MTU)
	}
	var taken, taken6 []netip.Prefix
	for _, other := range s.st.Networks {
		taken = append(taken, other.Subnet)
		if other.IPv6() {
			taken6 = append(taken6, other.Subnet6)
		}
	}
	var routed, routed6 []netip.Prefix
	if !n.Macvlan() {
		// A macvlan network's subnet is its parent's LAN, routed or not.
		var err error
		if routed, err = routedPrefixes(netlink.FAMILY_V4); err != nil {
			return nil, err
		}
		if o.IPv6 || o.Subnet6.IsValid() {
			if routed6, err = routedPrefixes(netlink.FAMILY_V6); err != nil {
				return nil, err
			}
		}
	}
	if o.Subnet.IsValid() {
		if !o.Subnet.Addr().Is4() {
			return nil, fmt.Errorf("--subnet %s: give IPv6 subnets with --ipv6, alongside an IPv4 one or none", o.Subnet)
		}
		if o.Subnet.Bits() > 30 {
			return nil, fmt.Errorf("--subnet %s is too small: use /30 or larger", o.Subnet)
		}
		if overlapsAny(o.Subnet, taken) {
			return nil, fmt.Errorf("--subnet %s overlaps another ferry network's subnet: see 'ferry net ls'", o.Subnet)
		}
		if overlapsAny(o.Subnet, routed) {
			return nil, fmt.Errorf("--subnet %s overlaps a route of this host: choose a free range, or leave --subnet out to have one picked", o.Subnet)
		}
		n.Subnet = o.Subnet.Masked()
	} else if n.Macvlan() {
		return nil, errors.New("a macvlan network needs --subnet: its parent's LAN, or a part of it")
	} else {
		var err error
		if n.Subnet, err = pickSubnet(routed, taken); err != nil {
			return nil, err
		}
	}
	if !n.Macvlan() {
		n.Gateway = firstHost(n.Subnet)
	}
	if o.Gateway.IsValid() {
		n.Gateway = o.Gateway
		if !n.Subnet.Contains(n.Gateway) || n.Gateway == n.Subnet.Addr() || n.Gateway == broadcast(n.Subnet) {
			return nil, fmt.Errorf("--gateway %s is not a host address of subnet %s", o.Gateway, n.Subnet)
		}
	}
	if o.IPRange.IsValid() {
		if !n.Subnet.Contains(o.IPRange.Addr()) || o.IPRange.Bits() < n.Subnet.Bits() {
			return nil, fmt.Errorf("--ip-range %s is not inside subnet %s", o.IPRange, n.Subnet)
		}
		n.IPRange = o.IPRange.Masked()
	}
	if err := planIPv6(n, o, routed6, taken6); err != nil {
		return nil, err
	}
	if n.Macvlan() {
		return n, nil
	}
	n.Bridge = o.BridgeName
	if n.Bridge == "" {
		n.Bridge = "fbr-" + n.ID[:8]
	}
	if len(n.Bridge) > 15 {
		return nil, fmt.Errorf("bridge name %q is longer than 15 characters", n.Bridge)
	}
	if ok, err := linkExists(n.Bridge); err != nil {
		return nil, err
	} else if ok {
		return nil, fmt.Errorf("a link named %s already exists: choose another bridge name with -o name=BRIDGE", n.Bridge)
	}
	return n, nil
}

// planMacvlan checks the options of a macvlan network and records its
// parent; its MTU defaults to the parent's.
func planMacvlan(n *Network, o CreateOptions) error {
	switch {
	case o.Parent == "":
		return errors.New("a macvlan network needs its parent interface: add -o parent=IF")
	case o.BridgeName != "":
		return errors.New("-o name names a bridge, and a macvlan network has none")
	case o.Internal:
		return errors.New("--internal is for bridge networks: a macvlan network has no rules, its traffic goes straight out of its parent")
	}
	parent, err := netlink.LinkByName(o.Parent)
	if err != nil {
		return fmt.Errorf("-o parent=%s: %w: give an interface of this host (see 'ip link')", o.Parent, err)
	}
	pmtu := parent.Attrs().MTU
	if n.MTU == 0 {
		n.MTU = pmtu
	}
	if n.MTU > pmtu {
		return fmt.Errorf("--mtu %d is larger than parent %s's MTU %d", n.MTU, o.Parent, pmtu)
	}
	n.Parent = o.Parent
	return nil
}

// planIPv6 records the IPv6 subnet and gateway of a dual-stack network.
func planIPv6(n *Network, o CreateOptions, routed6, taken6 []netip.Prefix) error {
	if !o.IPv6 {
		if o.Subnet6.IsValid() || o.Gateway6.IsValid() {
			return errors.New("an IPv6 --subnet or --gateway needs --ipv6")
		}
		return nil
	}
	if o.Subnet6.IsValid() {
		p := o.Subnet6
		switch {
		case !p.Addr().Is6() || p.Addr().Is4In6():
			return fmt.Errorf("--subnet %s is not an IPv6 subnet", p)
		case p.Bits() > 124:
			return fmt.Errorf("--subnet %s is too small: use /124 or larger (/64 is usual)", p)
		case p.Addr().IsLinkLocalUnicast() || p.Addr().IsMulticast() || p.Addr().IsLoopback():
			return fmt.Errorf("--subnet %s is link-local, multicast or loopback: use a unique local (fd00::/8) or global range", p)
		case overlapsAny(p, taken6):
			return fmt.Errorf("--subnet %s overlaps another ferry network's IPv6 subnet: see 'ferry net ls'", p)
		case overlapsAny(p, routed6):
			return fmt.Errorf("--subnet %s overlaps an IPv6 route of this host: choose a free range", p)
		}
		n.Subnet6 = p.Masked()
	} else if n.Macvlan() {
		return errors.New("a dual-stack macvlan network needs an IPv6 --subnet: its parent's LAN prefix")
	} else {
		var err error
		if n.Subnet6, err = pickSubnet6(routed6, taken6); err != nil {
			return err
		}
	}
	if !n.Macvlan() {
		n.Gateway6 = n.Subnet6.Addr().Next()
	}
	if o.Gateway6.IsValid() {
		if !n.Subnet6.Contains(o.Gateway6) || o.Gateway6 == n.Subnet6.Addr() {
			return fmt.Errorf("--gateway %s is not a host address of subnet %s", o.Gateway6, n.Subnet6)
		}
		n.Gateway6 = o.Gateway6
	}
	return nil
}

// build makes the kernel objects of a network recorded as creating, and
// records it ready.
func (s *session) build(n *Network) error {
	if n.Macvlan() {
		// Nothing on the host: each connect makes a macvlan in its
		// namespace.
		n.Status = Ready
		return s.save()
	}
	if err := writeSysctl("net/ipv4/ip_forward", "1", s.ch); err != nil {
		return err
	}
	if n.IPv6() {
		if err := writeSysctl("net/ipv6/conf/all/forwarding", "1", s.ch); err != nil {
			return err
		}
	}
	if err := createBridge(n, s.ch); err != nil {
		return err
	}
	if err := s.rules.ensureBase(n.IPv6()); err != nil {
		return err
	}
	if err := s.rules.add(networkTag(n), networkRules(n)); err != nil {
		return err
	}
	pid, err := startDNS(s.dir, n, s.ch)
	if err != nil {
		return err
	}
	n.DNSPID = pid
	n.Status = Ready
	return s.save()
}

// deleteAttachmentLink removes a's veth pair, or its macvlan.
func deleteAttachmentLink(n *Network, a *Attachment, ch *changes) error {
	if n.Macvlan() {
		return deleteMacvlan(a, ch)
	}
	return deleteLink(a.HostVeth, ch)
}

// dropUnusedBase removes ferry's chains from both families when no network
// is left, from ip6tables when no IPv6 network is.
func (s *session) dropUnusedBase() error {
	if len(s.st.Networks) == 0 {
		return s.rules.removeBase()
	}
	for _, n := range s.st.Networks {
		if n.IPv6() && !n.Macvlan() {
			return nil
		}
	}
	if ok, err := s.rules.base6Exists(); err != nil || !ok {
		return err
	}
	return s.rules.removeBase6()
}

// rollbackNetwork undoes a network after a failure, best effort: the next
// call's reconcile finishes what this cannot.
func (s *session) rollbackNetwork(n *Network) {
	if s.teardownNetwork(n) == nil {
		delete(s.st.Networks, n.Name)
		if s.save() == nil {
			s.dropUnusedBase()
		}
	}
}

// teardownNetwork removes every kernel object of n and its attachments:
// the DNS responder, the rules, the veths and the bridge.
func (s *session) teardownNetwork(n *Network) error {
	var errs []error
	for pid, id := range dnsProcesses(s.dir) {
		if id == n.ID {
			errs = append(errs, stopDNS(pid, s.ch))
		}
	}
	prefix := networkTag(n)
	errs = append(errs, s.rules.removeTagged(func(tag string) bool {
		return tag == prefix || len(tag) > len(prefix) && tag[:len(prefix)+1] == prefix+":"
	}))
	for _, a := range n.Attachments {
		errs = append(errs, deleteAttachmentLink(n, a, s.ch))
	}
	if !n.Macvlan() {
		errs = append(errs, deleteLink(n.Bridge, s.ch))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove network %s: %w", n.Name, err)
	}
	os.Remove(dnsLog(s.dir, n.ID))
	return nil
}

// removeNetwork marks n removing, tears it down and forgets it.
func (s *session) removeNetwork(n *Network) error {
	n.Status = Removing
	if err := s.save(); err != nil {
		return err
	}
	if err := s.teardownNetwork(n); err != nil {
		return err
	}
	delete(s.st.Networks, n.Name)
	if err := s.save(); err != nil {
		return err
	}
	return s.dropUnusedBase()
}

// Remove removes the named networks. A network with attached namespaces
// is refused unless force, which disconnects them.
func (m *Manager) Remove(ctx context.Context, names []string, force bool) error {
	return m.do(ctx, func(s *session) error {
		var ns []*Network
		for _, name := range names {
			n, err := s.st.network(name)
			if err != nil {
				return err
			}
			if len(n.Attachments) > 0 && !force {
				return fmt.Errorf("network %s has %d attached namespace(s): disconnect them first, or use --force", n.Name, len(n.Attachments))
			}
			ns = append(ns, n)
		}
		for _, n := range ns {
			if err := s.removeNetwork(n); err != nil {
				return err
			}
		}
		return nil
	})
}

// Prune removes every network without attached namespaces and returns
// their names.
func (m *Manager) Prune(ctx context.Context) ([]string, error) {
	var removed []string
	err := m.do(ctx, func(s *session) error {
		for _, n := range sortedNetworks(s.st) {
			if len(n.Attachments) > 0 {
				continue
			}
			if err := s.removeNetwork(n); err != nil {
				return err
			}
			removed = append(removed, n.Name)
		}
		// Nothing left to prune may still leave chains of a crashed call.
		if len(s.st.Networks) == 0 {
			return s.rules.removeBase()
		}
		return nil
	})
	return removed, err
}

// ConnectOptions say how to connect a namespace to a network.
type ConnectOptions struct {
	// Netns is the namespace's path: /proc/PID/ns/net or a bind mount.
	Netns string
	// PID, when known, is recorded for inspect.
	PID int
	// IP is a static address; an address is allocated when not valid.
	// IP6 likewise on a dual-stack network.
	IP  netip.Addr
	IP6 netip.Addr
	// Ports are the parsed -p specs to publish.
	Ports []portspec.Mapping
	// Name and Aliases resolve to the namespace's address through the
	// network's DNS responder.
	Name    string
	Aliases []string
	// Interface names the interface inside the namespace; the first free
	// ethN when empty.
	Interface string
	// ContainerID, when set, is recorded so that the attachment can be
	// found again by container (see DetachContainer, GCContainers).
	ContainerID string
}

// Connect connects a namespace to the named network: a veth pair whose
// inner end (eth0, or the next free ethN) gets an address, the network's
// MTU and, when the namespace has none, a default route via the gateway;
// then DNAT rules for its published ports. ferry run uses it with
// Netns /proc/PID/ns/net.
func (m *Manager) Connect(ctx context.Context, network string, o ConnectOptions) (*Attachment, error) {
	var out *Attachment
	err := m.do(ctx, func(s *session) error {
		a, err := s.connect(network, o)
		out = a
		return err
	})
	return out, err
}

func (s *session) connect(network string, o ConnectOptions) (*Attachment, error) {
	n, err := s.st.network(network)
	if err != nil {
		return nil, err
	}
	id, err := netnsID(o.Netns)
	if err != nil {
		return nil, err
	}
	for _, a := range n.Attachments {
		if a.NetnsID == id {
			return nil, fmt.Errorf("namespace %s is already connected to network %s (as %s)", o.Netns, n.Name, a.IP)
		}
	}
	names := append([]string{o.Name}, o.Aliases...)
	for _, nm := range names {
		if nm == "" {
			continue
		}
		for _, a := range n.Attachments {
			if answers(a, nm) {
				return nil, fmt.Errorf("name %q is already used on network %s: choose another --name or --alias", nm, n.Name)
			}
		}
	}
	a := &Attachment{
		ID: randomID(), Name: o.Name, Aliases: o.Aliases, Netns: o.Netns, NetnsID: id, PID: o.PID, Status: Creating,
		ContainerID: o.ContainerID,
	}
	if !n.Macvlan() {
		a.HostVeth = "fv" + a.ID[:10]
	} else if len(o.Ports) > 0 {
		return nil, fmt.Errorf("network %s is a macvlan network: it publishes no ports, the namespace's address is reachable on %s's network", n.Name, n.Parent)
	}
	if o.IP6.IsValid() {
		if err := checkStatic6(n, o.IP6); err != nil {
			return nil, err
		}
		a.IP6 = o.IP6
	} else if n.IPv6() {
		if a.IP6, err = allocate6(n); err != nil {
			return nil, err
		}
	}
	if o.IP.IsValid() {
		if err := checkStatic(n, o.IP); err != nil {
			return nil, err
		}
		a.IP = o.IP
	} else if a.IP, err = allocate(n); err != nil {
		return nil, err
	}
	a.MAC = macFor(a.IP).String()
	if a.Ports, err = choosePorts(s.st, o.Ports, n.IPv6()); err != nil {
		return nil, err
	}
	ns, h, err := openNetns(o.Netns)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	defer h.Close()
	if o.Interface != "" {
		if a.Interface, err = freeInterface(h, o.Interface); err != nil {
			return nil, err
		}
	} else if a.Interface, err = nextInterface(h); err != nil {
		return nil, err
	}
	n.Attachments[a.ID] = a
	if err := s.save(); err != nil {
		return nil, err
	}
	if n.Macvlan() {
		err = createMacvlan(n, a, ns, h, s.ch)
	} else {
		err = createVeth(n, a, ns, h, s.ch)
	}
	for _, p := range a.Ports {
		if err != nil {
			break
		}
		err = s.rules.add(attachmentTag(n, a), portRules(n, a, p))
	}
	if err == nil {
		a.Status = Ready
		err = s.save()
	}
	if err != nil {
		if s.teardownAttachment(n, a) == nil {
			delete(n.Attachments, a.ID)
			s.save()
		}
		return nil, fmt.Errorf("connect %s to network %s: %w", o.Netns, n.Name, err)
	}
	return a, nil
}

// teardownAttachment removes a's rules and veth pair (or macvlan).
func (s *session) teardownAttachment(n *Network, a *Attachment) error {
	tag := attachmentTag(n, a)
	err := s.rules.removeTagged(func(t string) bool { return t == tag })
	return errors.Join(err, deleteAttachmentLink(n, a, s.ch))
}

// Disconnect disconnects a namespace from the named network. target is
// the namespace's path (as given to Connect, or any path to the same
// namespace), or the attachment's name or ID.
func (m *Manager) Disconnect(ctx context.Context, network, target string) error {
	return m.do(ctx, func(s *session) error {
		n, err := s.st.network(network)
		if err != nil {
			return err
		}
		id, _ := netnsID(target)
		for _, a := range n.Attachments {
			if a.NetnsID == id || a.Netns == target || a.ID == target || a.Name != "" && a.Name == target {
				a.Status = Removing
				if err := s.save(); err != nil {
					return err
				}
				if err := s.teardownAttachment(n, a); err != nil {
					return err
				}
				delete(n.Attachments, a.ID)
				return s.save()
			}
		}
		return fmt.Errorf("%s is not connected to network %s: see 'ferry net inspect %s'", target, n.Name, n.Name)
	})
}

// List returns every network, by name.
func (m *Manager) List(ctx context.Context) ([]NetworkView, error) {
	var out []NetworkView
	err := m.do(ctx, func(s *session) error {
		for _, n := range sortedNetworks(s.st) {
			out = append(out, view(n))
		}
		return nil
	})
	return out, err
}

// Inspect returns the named networks.
func (m *Manager) Inspect(ctx context.Context, names []string) ([]NetworkView, error) {
	var out []NetworkView
	err := m.do(ctx, func(s *session) error {
		for _, name := range names {
			n, err := s.st.network(name)
			if err != nil {
				return err
			}
			out = append(out, view(n))
		}
		return nil
	})
	return out, err
}

func sortedNetworks(st *state) []*Network {
	var ns []*Network
	for _, n := range st.Networks {
		ns = append(ns, n)
	}
	slices.SortFunc(ns, func(a, b *Network) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return ns
}
