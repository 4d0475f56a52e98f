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
// fd must stay open until the endpoint is detached. ring, which may be
// nil, is a ReadRing on fd: ferry's endpoint then reads bursts of frames
// through it, and closes it when closed; it is closed at once otherwise.
func NewEndpoint(fd int, mtu uint32, mac net.HardwareAddr, vnet bool, ring *ReadRing) (stack.LinkEndpoint, error) {
	var u *uring
	if ring != nil {
		u = ring.u
	}
	if vnet {
		ep, err := newVNetEndpoint(fd, mtu, mac, u)
		if err != nil && u != nil {
			u.close()
		}
		return ep, err
	}
	if u != nil {
		u.close()
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

// A ReadRing reads bursts of frames from a TAP with one system call each
// (an io_uring restricted to reading the TAP, see uring.go). Make it
// before a seccomp filter that refuses io_uring_setup, and hand it to
// NewEndpoint.
type ReadRing struct{ u *uring }

// NewReadRing returns a ReadRing on the TAP queue fd, or why the kernel
// or a filter refused one: io_uring can be off (kernel.io_uring_disabled)
// or filtered, as container runtimes' default seccomp profiles do, and
// then frames are read one readv at a time.
func NewReadRing(fd int) (*ReadRing, error) {
	u, err := newURing(fd, maxBatch)
	if err != nil {
		return nil, err
	}
	return &ReadRing{u: u}, nil
}

// Close closes a ring that was not handed to NewEndpoint.
func (r *ReadRing) Close() { r.u.close() }
