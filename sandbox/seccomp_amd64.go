package sandbox

import "golang.org/x/sys/unix"

const auditArch = unix.AUDIT_ARCH_X86_64

// syscallBitMask marks x32 syscalls, which the filter refuses.
const syscallBitMask = 0x40000000

// allowedArch are the amd64-only syscalls the filter allows: the older
// forms that arm64 never had, which glibc and Go still use here.
var allowedArch = []uintptr{
	unix.SYS_EPOLL_WAIT, unix.SYS_POLL, unix.SYS_SELECT, unix.SYS_PIPE, unix.SYS_DUP2, unix.SYS_OPEN,
	unix.SYS_STAT, unix.SYS_LSTAT, unix.SYS_ACCESS, unix.SYS_READLINK, unix.SYS_UNLINK, unix.SYS_GETDENTS,
	unix.SYS_ARCH_PRCTL, unix.SYS_TIME, unix.SYS_EPOLL_CREATE, unix.SYS_GETPGRP, unix.SYS_ALARM,
}
