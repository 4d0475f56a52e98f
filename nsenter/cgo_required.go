//go:build !cgo

package nsenter

// ferry needs cgo: the C constructors in nsenter.c and sandbox.c join the
// namespaces and build the sandbox before the Go runtime starts its
// threads, which Go code cannot do. Built without cgo (CGO_ENABLED=0, or
// no C compiler when cross-compiling), the build stops on this name first
// instead of on the helpers those files leave undefined.
var _ = ferry_needs_cgo__build_with_CGO_ENABLED_1_and_a_C_compiler
