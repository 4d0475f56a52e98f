package sandbox

import "golang.org/x/sys/unix"

const auditArch = unix.AUDIT_ARCH_X86_64

// syscallBitMask marks x32 syscalls, which the filter refuses.
const syscallBitMask = 0x40000000

// deniedArch are the amd64-only syscalls the filter refuses.
var deniedArch = []uintptr{
	unix.SYS_IOPL, unix.SYS_IOPERM, unix.SYS_USELIB, unix.SYS__SYSCTL,
	unix.SYS_CREATE_MODULE, unix.SYS_GET_KERNEL_SYMS, unix.SYS_QUERY_MODULE,
	unix.SYS_MODIFY_LDT,
}
