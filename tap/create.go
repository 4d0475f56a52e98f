package tap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/songgao/water"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Config describes the TAP device to create and, when Configure is set, the
// guest's addressing on it.
type Config struct {
	// Name is the TAP's interface name, e.g. tap0.
	Name string `json:"name"`
	// MTU of the TAP device.
	MTU int `json:"mtu"`
	// Configure brings lo and the TAP up, sets Addr and a default route via
	// Gateway, as slirp4netns -c does.
	Configure bool `json:"configure,omitempty"`
	// MAC is the TAP's hardware address; empty means one the kernel picks.
	MAC string `json:"mac,omitempty"`
	// Addr is the guest's address with the network's prefix length.
	Addr netip.Prefix `json:"addr"`
	// Gateway is the default route's next hop.
	Gateway netip.Addr `json:"gateway"`
	// Addr6 and Gateway6, when valid, are the guest's IPv6 address (added
	// without duplicate address detection, so it is usable at once) and
	// the IPv6 default route's next hop.
	Addr6    netip.Prefix `json:"addr6,omitzero"`
	Gateway6 netip.Addr   `json:"gateway6,omitzero"`
	// Plain asks for a TAP without IFF_VNET_HDR and offloads.
	Plain bool `json:"plain,omitempty"`
}

// Queue is a TAP device's queue.
type Queue struct {
	File *os.File
	// VNet says frames carry virtio-net headers, with TSO and checksum
	// offloads on (see NewEndpoint).
	VNet bool
	// Fallback, when set, is why the offloads could not be had.
	Fallback error
}

// Create opens /dev/net/tun and creates the TAP device cfg.Name in the
// calling process's network namespace, then configures it when
// cfg.Configure is set. It asks for virtio-net headers and offloads first,
// unless cfg.Plain is set, and falls back to a plain TAP when they are
// refused.
func Create(cfg Config) (Queue, error) {
	// An existing TUN/TAP device is attached to, as TUNSETIFF does: RootlessKit
	// creates tap0 itself before starting slirp4netns.
	if l, err := netlink.LinkByName(cfg.Name); err == nil && l.Type() != "tuntap" {
		return Queue{}, fmt.Errorf("create TAP device: an interface named %q already exists in the namespace: pass another TAPNAME", cfg.Name)
	}
	var q Queue
	if !cfg.Plain {
		f, err := createVNet(cfg.Name)
		switch {
		case err == nil:
			q = Queue{File: f, VNet: true}
		case errors.Is(err, unix.EACCES), errors.Is(err, unix.ENOENT), errors.Is(err, unix.EBUSY), errors.Is(err, unix.EPERM):
			return Queue{}, explainOpenError(cfg.Name, err)
		default:
			q.Fallback = err // offloads refused: a plain TAP still works
		}
	}
	if q.File == nil {
		f, err := createPlain(cfg.Name)
		if err != nil {
			return Queue{}, err
		}
		q.File = f
	}
	if err := configure(cfg); err != nil {
		q.File.Close()
		return Queue{}, err
	}
	return q, nil
}

// createVNet creates the TAP with IFF_VNET_HDR and TSO and checksum
// offloads.
func createVNet(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnetHdrLen); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETVNETHDRSZ: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, unix.TUN_F_CSUM|unix.TUN_F_TSO4|unix.TUN_F_TSO6); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETOFFLOAD: %w", err)
	}
	return os.NewFile(uintptr(fd), "tap"), nil
}

// createPlain creates a TAP without offloads, with songgao/water.
func createPlain(name string) (*os.File, error) {
	ifce, err := water.New(water.Config{
		DeviceType:             water.TAP,
		PlatformSpecificParams: water.PlatformSpecificParams{Name: name},
	})
	if err != nil {
		return nil, explainOpenError(name, err)
	}
	f, ok := ifce.ReadWriteCloser.(*os.File)
	if !ok {
		ifce.Close()
		return nil, fmt.Errorf("create TAP device %q: unexpected device type %T", name, ifce.ReadWriteCloser)
	}
	return f, nil
}

// explainOpenError turns the errors of opening /dev/net/tun and TUNSETIFF
// into sentences that name the fix.
func explainOpenError(name string, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		return fmt.Errorf("open /dev/net/tun: %w: the TUN/TAP device is missing: load the tun module (modprobe tun) or create it (mknod /dev/net/tun c 10 200)", err)
	case errors.Is(err, unix.EACCES):
		return fmt.Errorf("open /dev/net/tun: %w: the device must be readable and writable by you (mode 0666, the usual distro default)", err)
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("create TAP device %q: %w: the name is already in use in the namespace: pass another TAPNAME", name, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("create TAP device %q: %w: ferry needs CAP_NET_ADMIN in the namespace's user namespace", name, err)
	}
	return fmt.Errorf("create TAP device %q: %w", name, err)
}

// configure sets up lo and the TAP link as cfg says.
func configure(cfg Config) error {
	link, err := netlink.LinkByName(cfg.Name)
	if err != nil {
		return fmt.Errorf("find TAP device %q: %w", cfg.Name, err)
	}
	if cfg.MTU > 0 {
		if err := netlink.LinkSetMTU(link, cfg.MTU); err != nil {
			return fmt.Errorf("set MTU %d on %q: %w", cfg.MTU, cfg.Name, err)
		}
	}
	if cfg.MAC != "" {
		hw, err := net.ParseMAC(cfg.MAC)
		if err != nil {
			return fmt.Errorf("invalid MAC address %q: %w", cfg.MAC, err)
		}
		if err := netlink.LinkSetHardwareAddr(link, hw); err != nil {
			return fmt.Errorf("set MAC address %s on %q: %w", hw, cfg.Name, err)
		}
	}
	if !cfg.Configure {
		return nil
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %q up: %w", cfg.Name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   cfg.Addr.Addr().AsSlice(),
		Mask: net.CIDRMask(cfg.Addr.Bits(), cfg.Addr.Addr().BitLen()),
	}}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add address %s to %q: %w", cfg.Addr, cfg.Name, err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: cfg.Gateway.AsSlice()}
	if err := netlink.RouteAdd(route); err != nil {
		return fmt.Errorf("add default route via %s: %w", cfg.Gateway, err)
	}
	if !cfg.Addr6.IsValid() {
		return nil
	}
	addr6 := &netlink.Addr{
		IPNet: &net.IPNet{IP: cfg.Addr6.Addr().AsSlice(), Mask: net.CIDRMask(cfg.Addr6.Bits(), 128)},
		Flags: unix.IFA_F_NODAD,
	}
	if err := netlink.AddrAdd(link, addr6); err != nil {
		return fmt.Errorf("add address %s to %q: %w", cfg.Addr6, cfg.Name, err)
	}
	route6 := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: cfg.Gateway6.AsSlice(), Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}}
	if err := netlink.RouteAdd(route6); err != nil {
		return fmt.Errorf("add IPv6 default route via %s: %w", cfg.Gateway6, err)
	}
	return nil
}
