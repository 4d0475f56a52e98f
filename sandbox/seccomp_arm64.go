package sandbox

import "golang.org/x/sys/unix"

const auditArch = unix.AUDIT_ARCH_AARCH64

const syscallBitMask = 0

// allowedArch are the arm64-only syscalls the filter allows.
var allowedArch []uintptr
