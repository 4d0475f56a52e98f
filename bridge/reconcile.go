package bridge

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// reconcile makes the kernel agree with the state before a call does its
// own work. Every operation records its intent before touching the kernel,
// so whatever a crash left behind is named by a record:
//   - a network still creating is undone, one removing is finished;
//   - an attachment still connecting is undone, one disconnecting is
//     finished, and one whose namespace has gone (its veth vanished with
//     it, or its path now names another namespace) is released: address,
//     rules and veth;
//   - a network whose DNS responder died gets a new one, and a responder
//     that belongs to no network is stopped;
//   - with no network left, ferry's chains and jumps are removed, and
//     with no IPv6 network left, those of ip6tables.
func (s *session) reconcile() error {
	dirty := false
	var errs []error
	for _, n := range sortedNetworks(s.st) {
		if n.Status != Ready {
			if err := s.teardownNetwork(n); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(s.st.Networks, n.Name)
			dirty = true
			continue
		}
		for id, a := range n.Attachments {
			if a.Status == Ready && !gone(n, a) {
				continue
			}
			if err := s.teardownAttachment(n, a); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(n.Attachments, id)
			dirty = true
		}
	}
	if dirty {
		if err := s.save(); err != nil {
			return err
		}
	}
	if err := s.reconcileDNS(); err != nil {
		errs = append(errs, err)
	}
	if len(s.st.Networks) == 0 {
		if ok, err := s.rules.baseExists(); err != nil {
			errs = append(errs, err)
		} else if ok {
			errs = append(errs, s.rules.removeBase())
		}
	} else {
		errs = append(errs, s.dropUnusedBase())
	}
	return errors.Join(errs...)
}

// gone reports whether a's namespace has gone away, or its interface: the
// veth (which goes with the namespace), or the macvlan (which goes with
// its parent).
func gone(n *Network, a *Attachment) bool {
	if !n.Macvlan() {
		if ok, err := linkExists(a.HostVeth); err == nil && !ok {
			return true
		}
	}
	id, err := netnsID(a.Netns)
	if (err != nil || !isNetnsFile(a.Netns)) && !n.Macvlan() {
		// The path names no namespace here. That is a dead namespace,
		// or a live one pinned in a mount namespace this caller does not
		// share (podman as root under `ip netns exec` leaves an empty
		// file behind). The veth tells them apart: it dies with its
		// namespace, a moment later.
		return !vethOutlives(a.HostVeth, time.Second)
	}
	if err != nil || id != a.NetnsID {
		return true
	}
	if n.Macvlan() {
		ns, h, err := openNetns(a.Netns)
		if err != nil {
			return false
		}
		defer ns.Close()
		defer h.Close()
		l, err := macvlanIn(h, a)
		return err == nil && l == nil
	}
	return false
}

// isNetnsFile reports whether path is a namespace file (nsfs), as a
// bind-mounted namespace or /proc/PID/ns/net is.
func isNetnsFile(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// vethOutlives reports whether the link name still exists after wait,
// polling so that a veth whose namespace is being torn down is seen to go.
func vethOutlives(name string, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for {
		if ok, err := linkExists(name); err != nil || !ok {
			return false
		}
		if time.Now().After(deadline) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// reconcileDNS stops responders of no network (or duplicates) and starts
// the missing ones.
func (s *session) reconcileDNS() error {
	procs := dnsProcesses(s.dir)
	byID := map[string]*Network{}
	for _, n := range s.st.Networks {
		byID[n.ID] = n
	}
	dirty := false
	var errs []error
	for pid, id := range procs {
		n := byID[id]
		if n != nil && n.Macvlan() {
			n = nil // a macvlan network has no responder
		}
		if n != nil && n.DNSPID != pid && !alive(n.DNSPID) {
			n.DNSPID = pid // started by a call that crashed before recording it
			dirty = true
			continue
		}
		if n == nil || n.DNSPID != pid {
			errs = append(errs, stopDNS(pid, s.ch))
		}
	}
	for _, n := range sortedNetworks(s.st) {
		if n.Macvlan() || procs[n.DNSPID] == n.ID {
			continue
		}
		pid, err := startDNS(s.dir, n, s.ch)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		n.DNSPID = pid
		dirty = true
	}
	if dirty {
		errs = append(errs, s.save())
	}
	return errors.Join(errs...)
}
