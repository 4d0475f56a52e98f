// Package nsenter enters other processes' namespaces on ferry's behalf.
//
// The kernel refuses setns(2) into another user namespace from a multithreaded
// process, and every Go process is one. So ferry re-executes itself as a
// helper; a C constructor (nsenter.c) joins the target's user and network
// namespaces before the Go runtime starts any thread, the helper's Go code then
// creates the TAP device there, and hands its file descriptor back to the
// parent over SCM_RIGHTS. Nothing else in ferry knows about file descriptors
// crossing namespaces.
//
// A binary that uses this package must call [MaybeRunHelper] first thing in
// main.
package nsenter
