// Package forward publishes ports of the guest on the host: one interface,
// Publisher, to add, list and remove published ports; the userspace
// implementation behind it (host listeners proxying into ferry's stack); and
// the slirp4netns-compatible API socket (server and client) that drives a
// Publisher at run time.
package forward

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/ferrynet/ferry/portspec"
)

// Spec is one port to publish: a parsed -p mapping and, optionally, the
// guest address to forward to.
type Spec struct {
	portspec.Mapping
	// GuestAddr is where connections go; the zero Addr means the guest's
	// own address.
	GuestAddr netip.Addr
}

// Forward is one published port on one host address.
type Forward struct {
	// ID identifies the forward for Remove; IDs start at 1 and increase.
	ID    int
	Proto portspec.Proto
	// HostAddr is the address listened on (0.0.0.0 or :: for all).
	HostAddr netip.Addr
	// HostPort is the port actually bound (the chosen one for random and
	// range forms).
	HostPort  uint16
	GuestAddr netip.Addr
	GuestPort uint16
}

// Host is the listening address, e.g. "127.0.0.1:8080" or "[::]:8080".
func (f Forward) Host() string {
	return netip.AddrPortFrom(f.HostAddr, f.HostPort).String()
}

// String is the forward as `docker port` prints it:
// "80/tcp -> 127.0.0.1:8080".
func (f Forward) String() string {
	return strconv.Itoa(int(f.GuestPort)) + "/" + string(f.Proto) + " -> " + f.Host()
}

// Publisher publishes ports. Add publishes one spec on every address family
// it names (a spec without a host address listens on both 0.0.0.0 and [::],
// one Forward each) and returns what it bound; it publishes all of it or
// nothing. Remove withdraws one forward, closing its listener and the
// connections it carried. Forwards already published keep working whatever
// a later Add does.
type Publisher interface {
	Add(ctx context.Context, s Spec) ([]Forward, error)
	List() []Forward
	Remove(id int) error
	Close() error
	// Stats counts what the published ports carry.
	Stats() Stats
}

// ErrNotFound is returned by Remove for an unknown ID.
type ErrNotFound struct{ ID int }

func (e ErrNotFound) Error() string { return fmt.Sprintf("no published port with ID %d", e.ID) }
