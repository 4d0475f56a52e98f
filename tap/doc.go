// Package tap creates the TAP device inside a namespace, configures the
// guest's side of the link, and turns the TAP's file descriptor into a gVisor
// link endpoint for package stack.
package tap
