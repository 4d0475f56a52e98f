// Package bridge is ferry's privileged path: Docker-style bridge networks
// for network namespaces, made of kernel objects (a Linux bridge, veth
// pairs, iptables rules) rather than a userspace stack. It never imports
// gVisor. A network may be dual stack (an IPv6 subnet too, with the same
// rules in ip6tables), or a macvlan network: no bridge, no rules, a
// macvlan on a host interface in each connected namespace.
//
// A [Manager] owns a state directory. Every call takes the directory's file
// lock, reconciles the recorded state with the kernel, then makes its own
// change, recording what it is about to do before it does it, so that a
// crash at any point leaves a record the next call completes or undoes.
//
// One concept per file:
//   - manager.go: [Manager] and its calls (create, connect, disconnect, rm,
//     prune, ls, inspect).
//   - state.go: the state file, its lock and its records.
//   - ipam.go: subnets and addresses.
//   - link.go: the bridge, the veth pairs and the macvlans (netlink).
//   - rules.go: ferry's iptables and ip6tables chains and the rules of a
//     network, an attachment and a published port.
//   - ports.go: choosing host ports for published ports.
//   - reconcile.go: repairing the kernel from the state after a crash or a
//     namespace that went away.
//   - dns.go and dnsproc.go: the per-network DNS responder and its process.
//   - kernel.go: the counter of kernel changes and its crash hook for tests.
//   - inspect.go: Docker-like JSON views.
package bridge
