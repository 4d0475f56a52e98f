// Package spawn starts the command of `ferry run` in namespaces of its own:
// a new user namespace mapping the caller to root, a mount namespace in
// which generated /etc/resolv.conf and /etc/hosts are bind-mounted over the
// originals, a UTS namespace for the hostname, and a network namespace (new,
// the host's, or another process's). The child waits, stopped before exec,
// until the parent has mapped its IDs and given it a network.
//
// A binary that uses this package must call [MaybeRunInit] early in main.
package spawn
