//go:build amd64 || arm64

package sandbox

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// deniedCommon are the syscalls the filter refuses with EPERM on every
// architecture. ferry needs none of them once set up: they change
// namespaces and mounts, reach into other processes, load code into the
// kernel, or open large kernel attack surfaces.
var deniedCommon = []uintptr{
	// Namespaces and mounts: escaping or reshaping the sandbox.
	unix.SYS_MOUNT, unix.SYS_UMOUNT2, unix.SYS_PIVOT_ROOT, unix.SYS_CHROOT,
	unix.SYS_SETNS, unix.SYS_UNSHARE,
	unix.SYS_FSOPEN, unix.SYS_FSCONFIG, unix.SYS_FSMOUNT, unix.SYS_FSPICK,
	unix.SYS_MOVE_MOUNT, unix.SYS_OPEN_TREE, unix.SYS_MOUNT_SETATTR,
	unix.SYS_OPEN_BY_HANDLE_AT, unix.SYS_NAME_TO_HANDLE_AT,
	// Other processes.
	unix.SYS_PTRACE, unix.SYS_PROCESS_VM_READV, unix.SYS_PROCESS_VM_WRITEV,
	unix.SYS_PIDFD_GETFD, unix.SYS_KCMP,
	// Kernel code and global state.
	unix.SYS_KEXEC_LOAD, unix.SYS_KEXEC_FILE_LOAD,
	unix.SYS_INIT_MODULE, unix.SYS_FINIT_MODULE, unix.SYS_DELETE_MODULE,
	unix.SYS_REBOOT, unix.SYS_SWAPON, unix.SYS_SWAPOFF, unix.SYS_ACCT,
	unix.SYS_QUOTACTL, unix.SYS_QUOTACTL_FD, unix.SYS_NFSSERVCTL,
	unix.SYS_SETTIMEOFDAY, unix.SYS_CLOCK_SETTIME, unix.SYS_CLOCK_ADJTIME, unix.SYS_ADJTIMEX,
	unix.SYS_SETHOSTNAME, unix.SYS_SETDOMAINNAME, unix.SYS_SYSLOG, unix.SYS_VHANGUP,
	unix.SYS_LOOKUP_DCOOKIE,
	// Large attack surfaces ferry never uses.
	unix.SYS_BPF, unix.SYS_PERF_EVENT_OPEN, unix.SYS_USERFAULTFD,
	unix.SYS_KEYCTL, unix.SYS_ADD_KEY, unix.SYS_REQUEST_KEY,
	unix.SYS_IO_URING_SETUP, unix.SYS_IO_URING_ENTER, unix.SYS_IO_URING_REGISTER,
	unix.SYS_FANOTIFY_INIT,
}

// cloneNamespaces are the clone(2) flags that make namespaces. clone3(2)
// passes its flags in memory a filter cannot read, so it gets ENOSYS, which
// makes the Go runtime and libc fall back to clone(2). (CLONE_NEWTIME is
// left out: clone(2)'s low byte is the exit signal.)
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

// Filter returns the seccomp program for this architecture.
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
		p = append(p, insn{code: jsetK, k: syscallBitMask, jt: "deny"})
	}
	for _, nr := range append(append([]uintptr{}, deniedCommon...), deniedArch...) {
		p = append(p, insn{code: jeqK, k: uint32(nr), jt: "deny"})
	}
	p = append(p,
		insn{code: jeqK, k: unix.SYS_CLONE3, jt: "enosys"},
		insn{code: jeqK, k: unix.SYS_CLONE, jf: "allow"},
		insn{code: ldAbsW, k: offArg0},
		insn{code: jsetK, k: cloneNamespaces, jt: "deny"},
		insn{label: "allow", code: retK, k: unix.SECCOMP_RET_ALLOW},
		insn{label: "deny", code: retK, k: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
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
