//go:build amd64 || arm64

package sandbox

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// allowedCommon are the syscalls ferry may make once confined, on every
// architecture, the hot ones first (the kernel caches allowed syscalls
// whose verdict does not depend on arguments, so the order matters only
// for the first call). They are what the Go runtime, cgo's thread start
// (glibc), the net and os packages, gVisor's netstack, the TAP, the API
// socket and `ferry run`'s supervision of its command use; the list was
// taken from strace of the integration suite and checked with a build
// whose default verdict is SECCOMP_RET_LOG (see [defaultAction]).
var allowedCommon = []uintptr{
	// I/O on the TAP, host sockets, the API socket, pipes, logs.
	unix.SYS_FUTEX, unix.SYS_EPOLL_PWAIT, unix.SYS_EPOLL_PWAIT2, unix.SYS_EPOLL_CTL, unix.SYS_EPOLL_CREATE1,
	unix.SYS_READ, unix.SYS_WRITE, unix.SYS_READV, unix.SYS_WRITEV, unix.SYS_PREAD64, unix.SYS_PWRITE64,
	unix.SYS_PREADV, unix.SYS_PWRITEV, unix.SYS_PREADV2, unix.SYS_PWRITEV2,
	// The TAP's reads in batches, on a ring made before the filter and
	// restricted to them (tap/uring.go): io_uring_setup and
	// io_uring_register stay refused.
	unix.SYS_IO_URING_ENTER,
	unix.SYS_RECVFROM, unix.SYS_SENDTO, unix.SYS_RECVMSG, unix.SYS_SENDMSG, unix.SYS_RECVMMSG, unix.SYS_SENDMMSG,
	unix.SYS_PPOLL, unix.SYS_PSELECT6, unix.SYS_SPLICE, unix.SYS_TEE, unix.SYS_SENDFILE, unix.SYS_COPY_FILE_RANGE,
	unix.SYS_EVENTFD2, unix.SYS_PIPE2, unix.SYS_CLOSE, unix.SYS_CLOSE_RANGE, unix.SYS_DUP, unix.SYS_DUP3,
	unix.SYS_FCNTL, unix.SYS_IOCTL, unix.SYS_LSEEK, unix.SYS_FSYNC, unix.SYS_FDATASYNC, unix.SYS_FTRUNCATE,
	// Sockets.
	unix.SYS_SOCKET, unix.SYS_SOCKETPAIR, unix.SYS_CONNECT, unix.SYS_BIND, unix.SYS_LISTEN, unix.SYS_ACCEPT,
	unix.SYS_ACCEPT4, unix.SYS_SHUTDOWN, unix.SYS_GETSOCKNAME, unix.SYS_GETPEERNAME,
	unix.SYS_SETSOCKOPT, unix.SYS_GETSOCKOPT,
	// Threads, signals, scheduling, time.
	unix.SYS_SCHED_YIELD, unix.SYS_NANOSLEEP, unix.SYS_CLOCK_NANOSLEEP, unix.SYS_CLOCK_GETTIME,
	unix.SYS_CLOCK_GETRES, unix.SYS_GETTIMEOFDAY, unix.SYS_GETTID, unix.SYS_GETPID, unix.SYS_GETPPID, unix.SYS_TGKILL,
	unix.SYS_TKILL, unix.SYS_RT_SIGACTION, unix.SYS_RT_SIGPROCMASK, unix.SYS_RT_SIGRETURN, unix.SYS_SIGALTSTACK,
	unix.SYS_RT_SIGPENDING, unix.SYS_RT_SIGTIMEDWAIT, unix.SYS_RT_SIGSUSPEND, unix.SYS_RESTART_SYSCALL,
	unix.SYS_SET_ROBUST_LIST, unix.SYS_GET_ROBUST_LIST, unix.SYS_RSEQ, unix.SYS_SET_TID_ADDRESS, unix.SYS_MEMBARRIER,
	unix.SYS_SCHED_GETAFFINITY, unix.SYS_SCHED_SETAFFINITY, unix.SYS_SCHED_GETPARAM, unix.SYS_SCHED_GETSCHEDULER,
	unix.SYS_GETCPU, unix.SYS_TIMER_CREATE, unix.SYS_TIMER_SETTIME, unix.SYS_TIMER_GETTIME, unix.SYS_TIMER_DELETE,
	unix.SYS_TIMERFD_CREATE, unix.SYS_TIMERFD_SETTIME, unix.SYS_TIMERFD_GETTIME,
	unix.SYS_SETITIMER, unix.SYS_GETITIMER, unix.SYS_EXIT, unix.SYS_EXIT_GROUP,
	// Memory.
	unix.SYS_MMAP, unix.SYS_MUNMAP, unix.SYS_MPROTECT, unix.SYS_MADVISE, unix.SYS_MREMAP, unix.SYS_MINCORE,
	unix.SYS_BRK, unix.SYS_MLOCK, unix.SYS_MUNLOCK,
	// Files: the pcap file, resolv.conf, the time zone; removing the API
	// socket. (Landlock and the private root bound where they reach.)
	unix.SYS_OPENAT, unix.SYS_OPENAT2, unix.SYS_NEWFSTATAT, unix.SYS_FSTAT, unix.SYS_STATX, unix.SYS_FSTATFS,
	unix.SYS_STATFS, unix.SYS_GETDENTS64, unix.SYS_READLINKAT, unix.SYS_FACCESSAT, unix.SYS_FACCESSAT2,
	unix.SYS_UNLINKAT, unix.SYS_GETCWD, unix.SYS_UMASK, unix.SYS_FCHMOD, unix.SYS_FCHMODAT, unix.SYS_FLOCK,
	// Identity and limits (read only), randomness, process control.
	unix.SYS_GETUID, unix.SYS_GETEUID, unix.SYS_GETGID, unix.SYS_GETEGID, unix.SYS_GETGROUPS,
	unix.SYS_GETRESUID, unix.SYS_GETRESGID, unix.SYS_CAPGET, unix.SYS_GETRLIMIT, unix.SYS_PRLIMIT64,
	unix.SYS_GETRUSAGE, unix.SYS_SYSINFO, unix.SYS_UNAME, unix.SYS_GETRANDOM, unix.SYS_PRCTL,
	unix.SYS_GETPGID, unix.SYS_GETSID, unix.SYS_GETPRIORITY,
	// Waiting for and signalling ferry run's command and the target.
	unix.SYS_WAIT4, unix.SYS_WAITID, unix.SYS_KILL, unix.SYS_PIDFD_OPEN, unix.SYS_PIDFD_SEND_SIGNAL,
}

// cloneNamespaces are the clone(2) flags that make namespaces: clone(2) is
// allowed without them. clone3(2) passes its flags in memory a filter
// cannot read, so it gets ENOSYS, which makes the Go runtime and libc fall
// back to clone(2). (CLONE_NEWTIME is left out: clone(2)'s low byte is the
// exit signal.)
const cloneNamespaces = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
	unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

// Offsets in struct seccomp_data.
const (
	offNr   = 0
	offArch = 4
	offArg0 = 16 // low 32 bits on a little-endian machine
)

// bpf opcodes.
const (
	ldAbsW = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	jeqK   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	jgeK   = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
	jsetK  = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
	retK   = unix.BPF_RET | unix.BPF_K
)

// insn is a filter instruction whose jumps name labels.
type insn struct {
	code   uint16
	k      uint32
	jt, jf string // labels; "" is the next instruction
	label  string // this instruction's label
}

// Allowed returns the syscalls the filter allows on this architecture
// (clone(2) aside, which it allows without namespace flags).
func Allowed() []uintptr {
	return append(append([]uintptr{}, allowedCommon...), allowedArch...)
}

// logUnlisted, set to "1" at link time (-ldflags "-X
// github.com/ferrynet/ferry/sandbox.logUnlisted=1"), makes the filter log
// and allow syscalls outside the allow-list instead of refusing them: a
// build for finding what the list misses (the kernel logs each as an audit
// record of type 1326 naming the syscall). Never for production.
var logUnlisted string

// defaultAction is the verdict for a syscall outside the allow-list: EPERM,
// so that a rare path the list misses fails that one call instead of
// killing ferry.
func defaultAction() uint32 {
	if logUnlisted == "1" {
		return unix.SECCOMP_RET_LOG
	}
	return unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
}

// Filter returns the seccomp program for this architecture: the
// architecture is checked (another one kills the process: ferry makes no
// such call, an attacker would), syscalls in the allow-list pass, clone(2)
// passes without namespace flags, clone3(2) gets ENOSYS, anything else
// EPERM.
func Filter() ([]unix.SockFilter, error) {
	if auditArch == 0 {
		return nil, fmt.Errorf("seccomp: not supported on %s", runtime.GOARCH)
	}
	var p []insn
	p = append(p,
		insn{code: ldAbsW, k: offArch},
		insn{code: jeqK, k: auditArch, jf: "kill"},
		insn{code: ldAbsW, k: offNr},
	)
	if syscallBitMask != 0 { // x32 on amd64: a different ABI, refused whole
		// (ahead of the list, which would otherwise not match anyway)
		p = append(p, insn{code: jsetK, k: syscallBitMask, jt: "deny"})
	}
	for _, nr := range Allowed() {
		p = append(p, insn{code: jeqK, k: uint32(nr), jt: "allow"})
	}
	p = append(p,
		insn{code: jeqK, k: unix.SYS_CLONE3, jt: "enosys"},
		insn{code: jeqK, k: unix.SYS_CLONE, jf: "deny"},
		insn{code: ldAbsW, k: offArg0},
		insn{code: jsetK, k: cloneNamespaces, jt: "deny"},
		insn{label: "allow", code: retK, k: unix.SECCOMP_RET_ALLOW},
		insn{label: "deny", code: retK, k: defaultAction()},
		insn{label: "enosys", code: retK, k: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		insn{label: "kill", code: retK, k: unix.SECCOMP_RET_KILL_PROCESS},
	)
	at := map[string]int{}
	for i, in := range p {
		if in.label != "" {
			at[in.label] = i
		}
	}
	jump := func(i int, label string) (uint8, error) {
		if label == "" {
			return 0, nil
		}
		d := at[label] - i - 1
		if d < 0 || d > 255 {
			return 0, fmt.Errorf("seccomp: jump to %s out of range", label)
		}
		return uint8(d), nil
	}
	out := make([]unix.SockFilter, len(p))
	for i, in := range p {
		jt, err := jump(i, in.jt)
		if err != nil {
			return nil, err
		}
		jf, err := jump(i, in.jf)
		if err != nil {
			return nil, err
		}
		out[i] = unix.SockFilter{Code: in.code, Jt: jt, Jf: jf, K: in.k}
	}
	return out, nil
}

// InstallSeccomp installs the filter on every thread of the process
// (SECCOMP_FILTER_FLAG_TSYNC), setting no_new_privs first, which TSYNC
// carries to every thread as well.
func InstallSeccomp() error {
	filter, err := Filter()
	if err != nil {
		return err
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("seccomp: set no_new_privs: %w", err)
	}
	r, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC,
		uintptr(unsafe.Pointer(&prog)))
	runtime.KeepAlive(filter)
	switch {
	case errno != 0:
		if errors.Is(errno, unix.EINVAL) || errors.Is(errno, unix.ENOSYS) {
			return fmt.Errorf("seccomp: the kernel refuses the filter (needs Linux 3.17 with CONFIG_SECCOMP_FILTER): %w", errno)
		}
		return fmt.Errorf("seccomp: install the filter: %w", errno)
	case r != 0:
		return fmt.Errorf("seccomp: thread %d could not take the filter", r)
	}
	return nil
}
