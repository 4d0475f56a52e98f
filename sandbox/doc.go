// Package sandbox confines a running ferry (--enable-sandbox,
// --enable-seccomp).
//
// The sandbox is two stages in one process, because callers inspect the PID
// they started. Stage 1 is ferry's ordinary start: it does everything that
// needs the caller's view of the system (the TAP, through the namespace
// helper; the API socket; a pidfd of the target; the DNS upstreams from
// /etc/resolv.conf), then re-executes ferry in place with
// [github.com/ferrynet/ferry/nsenter.ExecSandboxed], keeping those fds and
// passing a [State]. A C constructor confines the new image before its Go
// runtime starts (see nsenter/sandbox.c): the target's user namespace, a
// new mount namespace whose root holds only /etc, /run and the resolv.conf
// target, and no capability but CAP_NET_BIND_SERVICE. Stage 2 is the same
// command line run again: it finds the State with [Resumed], installs the
// seccomp filter when asked, and serves on the inherited fds.
//
// The seccomp filter ([InstallSeccomp]) is a deny-list installed with
// SECCOMP_FILTER_FLAG_TSYNC, so that every thread of the process carries
// it. It is a deny-list because an allow-list for the Go runtime, gVisor's
// netstack and the standard library is long and changes with their
// versions (a syscall a new Go release starts using would kill ferry in
// production); denying the syscalls that widen the kernel's attack surface
// or escape the sandbox (namespaces, mounts, ptrace, keyrings, BPF, module
// and kexec loading, io_uring, ...) keeps working across upgrades.
//
// Debugging hook, for tests only: with FERRY_DEBUG_SECCOMP_PROBE=1 in the
// environment, a seccomp-confined ferry tries denied syscalls from several
// OS threads just before it signals readiness, and logs the outcome of each
// as a "seccomp probe" line at warning level (see [Probe]). It changes
// nothing else.
package sandbox
