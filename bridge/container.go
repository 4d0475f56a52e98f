package bridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Calls for container runtimes (the CNI plugin): attachments are found by
// container ID and interface name, and a network made on the way by
// AttachContainer is removed with its last attachment.

// OwnerCNI is the Owner of networks made by the CNI plugin.
const OwnerCNI = "cni"

// ErrNetnsMissing is returned (wrapped) by AttachContainer and
// CheckContainer when the namespace path does not exist.
var ErrNetnsMissing = errors.New("network namespace does not exist")

// AttachContainer connects a namespace to network n.Name, first creating
// the network from n, recorded as made by owner, when it does not exist.
// An existing network must have been made by the same owner and agree
// with the subnet and gateway of n when they are given. A network made by
// this call is removed again when the connect fails.
func (m *Manager) AttachContainer(ctx context.Context, owner string, n CreateOptions, o ConnectOptions) (*Network, *Attachment, error) {
	var nw *Network
	var att *Attachment
	err := m.do(ctx, func(s *session) error {
		if _, err := netnsID(o.Netns); err != nil {
			return fmt.Errorf("%w: %w", ErrNetnsMissing, err)
		}
		made := false
		existing, ok := s.st.Networks[n.Name]
		switch {
		case ok && existing.Owner != owner:
			return fmt.Errorf("network %s already exists and was made by 'ferry net create': give the CNI network another name", n.Name)
		case ok:
			if n.Subnet.IsValid() && n.Subnet.Masked() != existing.Subnet {
				return fmt.Errorf("network %s exists with subnet %s, not %s: remove its containers first to change it", n.Name, existing.Subnet, n.Subnet)
			}
			if n.Gateway.IsValid() && n.Gateway != existing.Gateway {
				return fmt.Errorf("network %s exists with gateway %s, not %s: remove its containers first to change it", n.Name, existing.Gateway, n.Gateway)
			}
		default:
			fresh, err := s.plan(n)
			if err != nil {
				return err
			}
			fresh.Owner = owner
			s.st.Networks[fresh.Name] = fresh
			if err := s.save(); err != nil {
				return err
			}
			if err := s.build(fresh); err != nil {
				s.rollbackNetwork(fresh)
				return err
			}
			made = true
		}
		if o.ContainerID != "" {
			for _, a := range s.st.Networks[n.Name].Attachments {
				if a.ContainerID == o.ContainerID && a.Interface == o.Interface {
					return fmt.Errorf("container %s is already attached to network %s as %s", o.ContainerID, n.Name, o.Interface)
				}
			}
		}
		a, err := s.connect(n.Name, o)
		if err != nil {
			if fresh := s.st.Networks[n.Name]; made && fresh != nil && len(fresh.Attachments) == 0 {
				s.removeNetwork(fresh)
			}
			return err
		}
		nw, att = s.st.Networks[n.Name], a
		return nil
	})
	return nw, att, err
}

// findContainer returns the attachment of containerID with interface
// ifname (any interface when ifname is empty) on n, or nil.
func findContainer(n *Network, containerID, ifname string) *Attachment {
	for _, a := range n.Attachments {
		if a.ContainerID == containerID && (ifname == "" || a.Interface == ifname) {
			return a
		}
	}
	return nil
}

// detach removes attachment a of n, then n itself when its owner made it
// for its attachments and none is left.
func (s *session) detach(n *Network, a *Attachment) error {
	if a != nil {
		a.Status = Removing
		if err := s.save(); err != nil {
			return err
		}
		if err := s.teardownAttachment(n, a); err != nil {
			return err
		}
		delete(n.Attachments, a.ID)
		if err := s.save(); err != nil {
			return err
		}
	}
	if n.Owner != "" && len(n.Attachments) == 0 {
		return s.removeNetwork(n)
	}
	return nil
}

// DetachContainer disconnects the container's interface ifname from the
// network. What is already gone (the attachment, the network) is not an
// error. A network made by AttachContainer goes with its last attachment.
func (m *Manager) DetachContainer(ctx context.Context, network, containerID, ifname string) error {
	return m.do(ctx, func(s *session) error {
		n, ok := s.st.Networks[network]
		if !ok {
			return nil
		}
		return s.detach(n, findContainer(n, containerID, ifname))
	})
}

// GCContainers disconnects from the network every attachment with a
// container ID for which valid is false, and returns their container IDs.
func (m *Manager) GCContainers(ctx context.Context, network string, valid func(containerID, ifname string) bool) ([]string, error) {
	var removed []string
	err := m.do(ctx, func(s *session) error {
		n, ok := s.st.Networks[network]
		if !ok {
			return nil
		}
		var stale []*Attachment
		for _, a := range n.Attachments {
			if a.ContainerID != "" && !valid(a.ContainerID, a.Interface) {
				stale = append(stale, a)
			}
		}
		for _, a := range stale {
			if err := s.detach(n, a); err != nil {
				return err
			}
			removed = append(removed, a.ContainerID)
		}
		if len(stale) == 0 {
			return s.detach(n, nil)
		}
		return nil
	})
	return removed, err
}

// CheckContainer verifies that the container's interface ifname is
// attached to the network in namespace netnsPath as recorded: the host
// veth on the bridge and up, the interface in the namespace with its
// address.
func (m *Manager) CheckContainer(ctx context.Context, network, containerID, netnsPath, ifname string) (*Network, *Attachment, error) {
	var nw *Network
	var att *Attachment
	err := m.do(ctx, func(s *session) error {
		n, ok := s.st.Networks[network]
		if !ok {
			return fmt.Errorf("network %s does not exist", network)
		}
		a := findContainer(n, containerID, ifname)
		if a == nil {
			return fmt.Errorf("container %s has no interface %s on network %s", containerID, ifname, network)
		}
		id, err := netnsID(netnsPath)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrNetnsMissing, err)
		}
		if id != a.NetnsID {
			return fmt.Errorf("network namespace %s is not the one container %s was attached in", netnsPath, containerID)
		}
		if err := checkVeth(n, a); err != nil {
			return err
		}
		nw, att = n, a
		return nil
	})
	return nw, att, err
}

// checkVeth verifies a's veth pair in the kernel.
func checkVeth(n *Network, a *Attachment) error {
	br, err := netlink.LinkByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("bridge %s of network %s: %w", n.Bridge, n.Name, err)
	}
	host, err := netlink.LinkByName(a.HostVeth)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", a.HostVeth, err)
	}
	if host.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("host veth %s is not on bridge %s", a.HostVeth, n.Bridge)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host veth %s is down", a.HostVeth)
	}
	ns, h, err := openNetns(a.Netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	defer h.Close()
	peer, err := h.LinkByName(a.Interface)
	if err != nil {
		return fmt.Errorf("interface %s in the namespace: %w", a.Interface, err)
	}
	if peer.Attrs().HardwareAddr.String() != a.MAC {
		return fmt.Errorf("interface %s has MAC %s, want %s", a.Interface, peer.Attrs().HardwareAddr, a.MAC)
	}
	addrs, err := h.AddrList(peer, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("addresses of %s in the namespace: %w", a.Interface, err)
	}
	for _, ad := range addrs {
		if ip, ok := netip.AddrFromSlice(ad.IP); ok && ip.Unmap() == a.IP {
			return nil
		}
	}
	return fmt.Errorf("interface %s in the namespace lacks address %s", a.Interface, a.IP)
}

// freeInterface checks that the namespace h has no link named name.
func freeInterface(h *netlink.Handle, name string) (string, error) {
	if len(name) > 15 {
		return "", fmt.Errorf("interface name %q is longer than 15 characters", name)
	}
	_, err := h.LinkByName(name)
	var nf netlink.LinkNotFoundError
	switch {
	case err == nil:
		return "", fmt.Errorf("the namespace already has an interface named %s", name)
	case errors.As(err, &nf):
		return name, nil
	default:
		return "", fmt.Errorf("look up %s in the namespace: %w", name, err)
	}
}
