//go:build amd64 || arm64

package sandbox

import (
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFilterShape checks that the program assembles, checks the
// architecture first and ends in the four verdicts.
func TestFilterShape(t *testing.T) {
	f, err := Filter()
	if err != nil {
		t.Fatal(err)
	}
	if len(f) > 255 || f[0].K != offArch || f[1].K != auditArch {
		t.Fatalf("unexpected program start or length %d: %+v", len(f), f[:2])
	}
	want := []uint32{unix.SECCOMP_RET_ALLOW, unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM),
		unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS), unix.SECCOMP_RET_KILL_PROCESS}
	for i, k := range want {
		in := f[len(f)-len(want)+i]
		if in.Code != retK || in.K != k {
			t.Errorf("verdict %d: %+v, want ret %#x", i, in, k)
		}
	}
	for i, in := range f {
		if in.Code&0x07 == unix.BPF_JMP && (i+1+int(in.Jt) >= len(f) || i+1+int(in.Jf) >= len(f)) {
			t.Errorf("instruction %d jumps out of the program", i)
		}
	}
}

func TestSplitPath(t *testing.T) {
	for in, want := range map[string][2]string{
		"/tmp/x/api.sock": {"/tmp/x", "api.sock"},
		"/api.sock":       {"/", "api.sock"},
		"api.sock":        {".", "api.sock"},
	} {
		if d, n := splitPath(in); d != want[0] || n != want[1] {
			t.Errorf("splitPath(%q) = %q, %q; want %q", in, d, n, want)
		}
	}
}

// run interprets the filter (the subset of classic BPF it uses) on a
// seccomp_data with nr, arch and the low 32 bits of the first argument.
func run(t *testing.T, f []unix.SockFilter, arch, nr, arg0 uint32) uint32 {
	t.Helper()
	var acc uint32
	for pc := 0; pc < len(f); pc++ {
		in := f[pc]
		switch in.Code {
		case ldAbsW:
			switch in.K {
			case offNr:
				acc = nr
			case offArch:
				acc = arch
			case offArg0:
				acc = arg0
			default:
				t.Fatalf("load of offset %d", in.K)
			}
		case jeqK, jgeK, jsetK:
			var ok bool
			switch in.Code {
			case jeqK:
				ok = acc == in.K
			case jgeK:
				ok = acc >= in.K
			default:
				ok = acc&in.K != 0
			}
			if ok {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case retK:
			return in.K
		default:
			t.Fatalf("unexpected instruction %+v", in)
		}
	}
	t.Fatal("the program falls off its end")
	return 0
}

// TestFilterVerdicts runs the filter: the allow-list passes, everything
// else is refused with EPERM, clone(2) only without namespace flags,
// clone3(2) gets ENOSYS, and another architecture is killed.
func TestFilterVerdicts(t *testing.T) {
	f, err := Filter()
	if err != nil {
		t.Fatal(err)
	}
	allow := uint32(unix.SECCOMP_RET_ALLOW)
	eperm := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM))
	for _, nr := range Allowed() {
		if got := run(t, f, auditArch, uint32(nr), 0); got != allow {
			t.Errorf("allowed syscall %d: verdict %#x", nr, got)
		}
	}
	for name, nr := range map[string]uintptr{
		"keyctl": unix.SYS_KEYCTL, "ptrace": unix.SYS_PTRACE, "unshare": unix.SYS_UNSHARE, "setns": unix.SYS_SETNS,
		"mount": unix.SYS_MOUNT, "bpf": unix.SYS_BPF, "execve": unix.SYS_EXECVE, "process_vm_readv": unix.SYS_PROCESS_VM_READV,
		"io_uring_setup": unix.SYS_IO_URING_SETUP, "io_uring_register": unix.SYS_IO_URING_REGISTER, "perf_event_open": unix.SYS_PERF_EVENT_OPEN, "init_module": unix.SYS_INIT_MODULE,
		"landlock_restrict_self": unix.SYS_LANDLOCK_RESTRICT_SELF, "seccomp": unix.SYS_SECCOMP, "chroot": unix.SYS_CHROOT,
	} {
		if slices.Contains(Allowed(), nr) {
			t.Errorf("%s is in the allow-list", name)
		}
		if got := run(t, f, auditArch, uint32(nr), 0); got != eperm {
			t.Errorf("%s: verdict %#x, want EPERM", name, got)
		}
	}
	if got := run(t, f, auditArch, 5000, 0); got != eperm {
		t.Errorf("an unknown syscall: verdict %#x, want EPERM", got)
	}
	threadFlags := uint32(unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD | unix.CLONE_SYSVSEM)
	if got := run(t, f, auditArch, unix.SYS_CLONE, threadFlags); got != allow {
		t.Errorf("clone of a thread: verdict %#x", got)
	}
	if got := run(t, f, auditArch, unix.SYS_CLONE, threadFlags|unix.CLONE_NEWUSER); got != eperm {
		t.Errorf("clone with CLONE_NEWUSER: verdict %#x, want EPERM", got)
	}
	if got := run(t, f, auditArch, unix.SYS_CLONE3, 0); got != uint32(unix.SECCOMP_RET_ERRNO|uint32(unix.ENOSYS)) {
		t.Errorf("clone3: verdict %#x, want ENOSYS", got)
	}
	if got := run(t, f, auditArch^1, unix.SYS_FUTEX, 0); got != unix.SECCOMP_RET_KILL_PROCESS {
		t.Errorf("another architecture: verdict %#x, want kill", got)
	}
	if syscallBitMask != 0 {
		if got := run(t, f, auditArch, syscallBitMask|unix.SYS_READ, 0); got != eperm {
			t.Errorf("an x32 syscall: verdict %#x, want EPERM", got)
		}
	}
}
