package bridge

import (
	"net/netip"
	"slices"
	"strconv"
	"time"
)

// NetworkView is what ls and inspect show of a network, shaped like
// `docker network inspect`.
type NetworkView struct {
	Name       string                  `json:"Name"`
	ID         string                  `json:"Id"`
	Created    time.Time               `json:"Created"`
	Driver     string                  `json:"Driver"`
	EnableIPv6 bool                    `json:"EnableIPv6"`
	IPAM       IPAMView                `json:"IPAM"`
	Internal   bool                    `json:"Internal"`
	Containers map[string]EndpointView `json:"Containers"`
	Options    map[string]string       `json:"Options"`
	DNS        string                  `json:"DNS,omitempty"`
}

// IPAMView is a network's address configuration.
type IPAMView struct {
	Driver string       `json:"Driver"`
	Config []IPAMConfig `json:"Config"`
}

// IPAMConfig is one subnet of a network.
type IPAMConfig struct {
	Subnet  string `json:"Subnet"`
	Gateway string `json:"Gateway"`
	IPRange string `json:"IPRange,omitempty"`
}

// EndpointView is one attached namespace.
type EndpointView struct {
	Name        string     `json:"Name"`
	Aliases     []string   `json:"Aliases,omitempty"`
	Netns       string     `json:"Netns"`
	PID         int        `json:"Pid,omitempty"`
	Interface   string     `json:"Interface"`
	HostVeth    string     `json:"HostVeth"`
	MacAddress  string     `json:"MacAddress"`
	IPv4Address string     `json:"IPv4Address"`
	IPv6Address string     `json:"IPv6Address"`
	Ports       []PortView `json:"Ports,omitempty"`
}

// PortView is one published port, as `docker port` words it.
type PortView struct {
	Proto     string `json:"Proto"`
	HostIP    string `json:"HostIp"`
	HostPort  string `json:"HostPort"`
	GuestPort int    `json:"ContainerPort"`
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func view(n *Network) NetworkView {
	v := NetworkView{
		Name: n.Name, ID: n.ID, Created: n.Created, Driver: n.Driver, Internal: n.Internal, EnableIPv6: n.IPv6(),
		IPAM:       IPAMView{Driver: "default", Config: []IPAMConfig{{Subnet: n.Subnet.String(), Gateway: addrString(n.Gateway)}}},
		Containers: map[string]EndpointView{},
		Options:    map[string]string{"mtu": strconv.Itoa(n.MTU)},
	}
	if n.Macvlan() {
		v.Options["parent"] = n.Parent
		v.Options["macvlan_mode"] = "bridge"
	} else {
		v.Options["name"] = n.Bridge
		v.DNS = n.Gateway.String() + ":53"
	}
	if n.IPRange.IsValid() {
		v.IPAM.Config[0].IPRange = n.IPRange.String()
	}
	if n.IPv6() {
		v.IPAM.Config = append(v.IPAM.Config, IPAMConfig{Subnet: n.Subnet6.String(), Gateway: addrString(n.Gateway6)})
	}
	for id, a := range n.Attachments {
		e := EndpointView{
			Name: a.Name, Aliases: slices.Clone(a.Aliases), Netns: a.Netns, PID: a.PID,
			Interface: a.Interface, HostVeth: a.HostVeth, MacAddress: a.MAC,
			IPv4Address: netip.PrefixFrom(a.IP, n.Subnet.Bits()).String(),
		}
		if a.IP6.IsValid() {
			e.IPv6Address = netip.PrefixFrom(a.IP6, n.Subnet6.Bits()).String()
		}
		for _, p := range a.Ports {
			hip := ""
			if p.HostIP.IsValid() {
				hip = p.HostIP.String()
			}
			e.Ports = append(e.Ports, PortView{Proto: string(p.Proto), HostIP: hip, HostPort: strconv.Itoa(int(p.HostPort)), GuestPort: int(p.GuestPort)})
		}
		v.Containers[id] = e
	}
	return v
}
