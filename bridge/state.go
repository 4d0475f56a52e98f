package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferrynet/ferry/portspec"
)

// DefaultStateDir is where ferry keeps its networks unless told otherwise.
const DefaultStateDir = "/run/ferry"

const (
	stateFile = "state.json"
	lockFile  = "lock"
)

// The drivers of a network.
const (
	DriverBridge  = "bridge"
	DriverMacvlan = "macvlan"
)

// IPv6 reports whether n is dual stack.
func (n *Network) IPv6() bool { return n.Subnet6.IsValid() }

// Macvlan reports whether n is a macvlan network: no bridge, no rules, no
// DNS responder.
func (n *Network) Macvlan() bool { return n.Driver == DriverMacvlan }

// Status says whether a record describes something complete or an
// operation that was under way. A record not Ready when a call starts means
// the call that wrote it crashed: reconcile undoes Creating records (a
// network being created, a namespace being connected) and finishes
// Removing ones (rm, disconnect).
type Status string

// The statuses of a network or an attachment.
const (
	Creating Status = "creating" // network: create under way; attachment: connect under way
	Ready    Status = "ready"
	Removing Status = "removing" // network: rm under way; attachment: disconnect under way
)

// state is the content of the state file.
type state struct {
	Networks map[string]*Network `json:"networks"` // by name
}

// Network is one ferry network as recorded in the state.
type Network struct {
	ID     string       `json:"id"`
	Name   string       `json:"name"`
	Driver string       `json:"driver"`
	Bridge string       `json:"bridge"`
	Subnet netip.Prefix `json:"subnet"`
	// Gateway is the bridge's address; on a macvlan network the router
	// given with --gateway, invalid when none was.
	Gateway netip.Addr `json:"gateway,omitzero"`
	// Subnet6 and Gateway6 are the IPv6 side of a dual-stack (--ipv6)
	// network, invalid otherwise.
	Subnet6  netip.Prefix `json:"subnet6,omitzero"`
	Gateway6 netip.Addr   `json:"gateway6,omitzero"`
	// Parent is the host interface of a macvlan network.
	Parent   string       `json:"parent,omitempty"`
	IPRange  netip.Prefix `json:"ipRange,omitzero"`
	Internal bool         `json:"internal,omitempty"`
	MTU      int          `json:"mtu,omitempty"`
	Created  time.Time    `json:"created"`
	Status   Status       `json:"status"`
	// DNSPID is the process ID of the network's DNS responder, 0 when none.
	DNSPID int `json:"dnsPid,omitempty"`
	// NoMasquerade and NoIsolation: see CreateOptions.
	NoMasquerade bool `json:"noMasquerade,omitempty"`
	NoIsolation  bool `json:"noIsolation,omitempty"`
	// Owner is who made the network when not `ferry net create`: "cni"
	// for the CNI plugin, which removes it with its last attachment.
	Owner       string                 `json:"owner,omitempty"`
	Attachments map[string]*Attachment `json:"attachments"` // by ID
}

// Attachment is a namespace connected to a network.
type Attachment struct {
	ID      string   `json:"id"`
	Name    string   `json:"name,omitempty"`
	Aliases []string `json:"aliases,omitempty"`
	// Netns is the namespace's path as given (/proc/PID/ns/net or a
	// bind mount), NetnsID its device and inode, which identify it.
	Netns   string `json:"netns"`
	NetnsID string `json:"netnsId"`
	PID     int    `json:"pid,omitempty"`
	// ContainerID is the runtime's container ID (CNI), when given.
	ContainerID string `json:"containerId,omitempty"`
	// HostVeth is the host end of the veth pair, Interface the end inside
	// the namespace (eth0, eth1, ...). On a macvlan network there is no
	// host end: Interface is the macvlan itself.
	HostVeth  string          `json:"hostVeth,omitempty"`
	Interface string          `json:"interface"`
	IP        netip.Addr      `json:"ip"`
	IP6       netip.Addr      `json:"ip6,omitzero"`
	MAC       string          `json:"mac"`
	Ports     []PublishedPort `json:"ports,omitempty"`
	Status    Status          `json:"status"`
}

// PublishedPort is one published port with its host port chosen.
type PublishedPort struct {
	Proto     portspec.Proto `json:"proto"`
	HostIP    netip.Addr     `json:"hostIp,omitzero"`
	HostPort  uint16         `json:"hostPort"`
	GuestPort uint16         `json:"guestPort"`
}

// loadState reads the state file of dir; a missing file is an empty state.
func loadState(dir string) (*state, error) {
	st := &state{Networks: map[string]*Network{}}
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ferry state: %w", err)
	}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("read ferry state %s: %w: move the file away and run 'ferry net prune' to start afresh", filepath.Join(dir, stateFile), err)
	}
	if st.Networks == nil {
		st.Networks = map[string]*Network{}
	}
	for _, n := range st.Networks {
		if n.Attachments == nil {
			n.Attachments = map[string]*Attachment{}
		}
	}
	return st, nil
}

// save writes the state file of dir atomically.
func (st *state) save(dir string) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("write ferry state: %w", err)
	}
	tmp, err := os.CreateTemp(dir, stateFile+".*")
	if err != nil {
		return fmt.Errorf("write ferry state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write ferry state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write ferry state: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFile)); err != nil {
		return fmt.Errorf("write ferry state: %w", err)
	}
	return nil
}

// network returns the network named or identified by nameOrID.
func (st *state) network(nameOrID string) (*Network, error) {
	if n, ok := st.Networks[nameOrID]; ok {
		return n, nil
	}
	for _, n := range st.Networks {
		if n.ID == nameOrID {
			return n, nil
		}
	}
	return nil, fmt.Errorf("network %q not found: see 'ferry net ls'", nameOrID)
}

// lock takes the exclusive lock of dir, creating dir if needed, waiting
// until ctx is done. unlock releases it.
func lock(ctx context.Context, dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("state lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("state lock %s: another ferry net call still holds it: %w", f.Name(), ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
