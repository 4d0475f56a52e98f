// Package sandbox confines a running ferry: `ferry attach` by default (off
// with --no-sandbox), slirp4netns mode with --enable-sandbox and
// --enable-seccomp, and `ferry run`'s seccomp filter.
//
// The sandbox is two stages in one process, because callers inspect the PID
// they started. Stage 1 is ferry's ordinary start: it does everything that
// needs the caller's view of the system (the TAP, through the namespace
// helper; the API socket, bound at its path; a pidfd of the target; the DNS
// upstreams from /etc/resolv.conf; the --pcap file, created), then
// re-executes ferry in place with [Exec], keeping those fds and passing a
// [State]. A C constructor confines the new image before its Go runtime
// starts (see nsenter/sandbox.c): the target's user namespace, a new mount
// namespace whose root is a read-only tmpfs holding only /etc, /run, the
// resolv.conf target and the --pcap file (bound writable), no capability but
// CAP_NET_BIND_SERVICE, no_new_privs, and Landlock. Stage 2 is the same
// command line run again: it finds the State with [Resumed], installs the
// seccomp filter, and serves on the inherited fds.
//
// # Landlock
//
// Where the kernel offers Landlock (any ABI; ABI 7 on Linux 6.18), the
// constructor restricts the file system to reading /etc and /run, writing
// (and truncating) the --pcap file, and removing files from the API
// socket's directory (ferry removes its socket at exit through an fd of
// that directory). Everything else is refused with EACCES, including what
// the mount namespace alone lets through: the inherited directory fd leads
// out of the private root, and Landlock rules follow inodes, not the
// mount namespace. With ABI 6 and later, abstract UNIX sockets and signals
// are scoped to ferry's own domain as well. The network is not restricted
// (ABI 4 could): ferry connects wherever the guest asks and binds ports
// that change at run time. landlock_restrict_self(2) confines the calling
// thread only (LANDLOCK_RESTRICT_SELF_TSYNC needs a newer kernel than 6.18),
// so it is applied in the constructor, while the process has one thread:
// every thread the Go runtime starts afterwards inherits the domain.
// Landlock is best effort: without it ferry logs the reason at debug level
// and the "network up" line says landlock=0.
//
// # When the sandbox cannot be built
//
// If the constructor cannot build the namespaces (a user or mount namespace
// refused, pivot_root impossible, ...), it undoes its mounts and executes
// ferry again without them: stage 2 logs one warning line with the reason
// and serves unconfined but for seccomp. That is the default's behaviour; a
// sandbox or filter asked for explicitly (--enable-sandbox,
// --enable-seccomp, and always in slirp4netns mode, as slirp4netns does)
// makes the same failure an error that ends ferry.
//
// # The seccomp filter
//
// [InstallSeccomp] installs an allow-list with SECCOMP_FILTER_FLAG_TSYNC,
// so that every thread of the process carries it (and no_new_privs, which
// TSYNC carries too). Syscalls outside the list get EPERM rather than a
// kill: a rare path the list misses fails that call (and ferry reports
// the error as it would any other) instead of ending ferry, while
// everything an attacker would want and ferry does not use (namespaces,
// mounts, ptrace, process_vm_*, execve, keyrings, BPF, making or
// registering io_uring rings, perf_event_open, module loading, ...) is
// refused. io_uring_enter(2) passes for the one ring the TAP endpoint made
// before the filter, which it restricted to reading the TAP (tap/uring.go).
// clone(2) passes
// without namespace flags; clone3(2) gets ENOSYS (its flags are out of the
// filter's reach), which makes Go and glibc fall back to clone(2); another
// architecture's syscalls kill the process. The list (see allowedCommon)
// is what the Go runtime, cgo's thread start, the net and os packages,
// gVisor's netstack, the TAP, the API socket and `ferry run`'s
// supervision use, taken from strace of the integration suite; a build
// linked with -X github.com/ferrynet/ferry/sandbox.logUnlisted=1 logs and
// allows unlisted syscalls instead (audit records of type 1326 in the
// kernel log), which is how the list is checked against the whole suite
// after a Go or gVisor upgrade. The arm64 list is the same minus the
// legacy amd64-only calls.
//
// # Test hooks
//
// With FERRY_DEBUG_SECCOMP_PROBE=1 in the environment, a confined ferry
// tries, from several OS threads just before it signals readiness,
// syscalls the filter refuses and file accesses Landlock refuses (see
// [Probe]), and logs the outcome of each as a "seccomp probe" line at
// warning level. With FERRY_DEBUG_SANDBOX_FAIL set, the constructor fails
// on purpose just before pivot_root, to exercise the fallback. Neither
// changes anything else.
package sandbox
