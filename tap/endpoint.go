package tap

import (
	"fmt"
	"net"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// NewEndpoint returns a gVisor link endpoint reading and writing Ethernet
// frames on the TAP queue fd: ferry's own with GSO and checksum offloads
// when the TAP was made with virtio-net headers (vnet), else gVisor's
// fdbased. mac is the address of ferry's side of the link (the gateway's).
// fd must stay open until the endpoint is detached.
func NewEndpoint(fd int, mtu uint32, mac net.HardwareAddr, vnet bool) (stack.LinkEndpoint, error) {
	if vnet {
		return newVNetEndpoint(fd, mtu, mac)
	}
	ep, err := fdbased.New(&fdbased.Options{
		FDs:                []int{fd},
		MTU:                mtu,
		EthernetHeader:     true,
		Address:            tcpip.LinkAddress(mac),
		PacketDispatchMode: fdbased.Readv,
		RXChecksumOffload:  true,
	})
	if err != nil {
		return nil, fmt.Errorf("TAP link endpoint: %w", err)
	}
	return ep, nil
}
