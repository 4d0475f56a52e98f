//go:build amd64 || arm64

package sandbox

import (
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
