// Package nstest is the harness for ferry's end-to-end tests and demo.
//
// It runs as root and builds small, private networks out of network
// namespaces it creates itself: a "host" namespace in which ferry runs (its
// only outside link, if any, is a veth the harness made), a "guest" made by an
// unprivileged test user with `unshare -U -r -n`, and optional "server"
// namespaces joined to the host by veth pairs. No traffic ever leaves these
// namespaces or the loopback.
//
// Everything a helper creates is torn down through the [TB] it is given:
// *testing.T satisfies it, and [Teardown] does for programs that are not
// tests. Every wait is bounded.
//
// One job per file:
//   - tb.go: the [TB] interface and [Teardown].
//   - lab.go: [Lab], which ties the pieces below together for one test.
//   - user.go: the unprivileged test user and /dev/net/tun's mode.
//   - build.go: building or locating the ferry binary.
//   - run.go: running commands with a bound and capturing their output.
//   - netns.go: named network namespaces.
//   - veth.go: veth pairs between namespaces.
//   - guest.go: the guest process and its user+network namespaces.
//   - ferry.go: running `ferry attach` as the test user.
//   - socket.go: Go sockets created inside a given namespace.
//   - servers.go: HTTP and DNS servers on a namespace's loopback.
//   - leftovers.go: checks that no process or namespace was left behind.
package nstest
