package stack

import (
	"fmt"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// pinGuestSource keeps gVisor's IPv4 source check cheap for the guest's
// address. For every IPv4 packet it receives, gVisor's IPv4 endpoint
// looks the packet's source address up in the NIC's address table to
// refuse a subnet broadcast source; an address the table does not hold
// costs a walk over the whole table. The guest's address is never in it,
// and the table holds, besides ferry's own addresses, one temporary entry
// for each distinct destination the guest has a flow to (the spoofed
// local address of that flow's route): a guest with flows to a thousand
// addresses made every one of its packets walk a thousand entries (a
// guest flooding random addresses made that 13% of ferry's CPU).
//
// The guest's address is put in the table as an expired permanent
// address, held by the reference returned: the lookup then finds it at
// once and, as an expired address is not assigned, goes on as if it were
// absent; routes to it still leave through the NIC, and packets to it
// are accepted as before (promiscuous mode accepts any destination).
func pinGuestSource(s *stack.Stack, guest netip.Addr) (stack.AddressEndpoint, error) {
	if !guest.Is4() {
		return nil, nil
	}
	addr := tcpip.AddrFrom4(guest.As4())
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: addr.WithPrefix()}
	if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{PEB: stack.NeverPrimaryEndpoint}); err != nil {
		return nil, fmt.Errorf("add guest address %s: %s", guest, err)
	}
	nep, err := s.GetNetworkEndpoint(nicID, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("IPv4 endpoint: %s", err)
	}
	ae, ok := nep.(stack.AddressableEndpoint)
	if !ok {
		return nil, fmt.Errorf("IPv4 endpoint %T holds no addresses", nep)
	}
	ref := ae.AcquireAssignedAddress(addr, false, stack.NeverPrimaryEndpoint, false /* readOnly: take a reference */)
	if ref == nil {
		return nil, fmt.Errorf("guest address %s not in the table", guest)
	}
	if err := s.RemoveAddress(nicID, addr); err != nil {
		ref.DecRef()
		return nil, fmt.Errorf("expire guest address %s: %s", guest, err)
	}
	if k := ref.GetKind(); k != stack.PermanentExpired {
		ref.DecRef()
		return nil, fmt.Errorf("guest address %s is %v, not expired", guest, k)
	}
	return ref, nil
}
