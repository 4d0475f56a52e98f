package portspec

import (
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that its errors carry the spec
// context, and that every mapping it accepts is well-formed and round-trips
// through String. Seeds live in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, spec string) {
		ms, err := Parse(spec)
		if err != nil {
			if ms != nil {
				t.Errorf("Parse(%q) returned mappings with error %v", spec, err)
			}
			if !strings.HasPrefix(err.Error(), "invalid publish spec ") {
				t.Errorf("Parse(%q) error lacks context: %v", spec, err)
			}
			return
		}
		if len(ms) == 0 {
			t.Fatalf("Parse(%q) returned no mappings and no error", spec)
		}
		for i, m := range ms {
			if m.GuestPort == 0 {
				t.Errorf("Parse(%q)[%d]: GuestPort 0", spec, i)
			}
			if m.HostPortEnd < m.HostPort || (m.HostPort == 0 && m.HostPortEnd != 0) {
				t.Errorf("Parse(%q)[%d]: bad host ports %d-%d", spec, i, m.HostPort, m.HostPortEnd)
			}
			if m.Proto != TCP && m.Proto != UDP {
				t.Errorf("Parse(%q)[%d]: bad proto %q", spec, i, m.Proto)
			}
			if m.HostIP.Zone() != "" || m.HostIP.Is4In6() {
				t.Errorf("Parse(%q)[%d]: non-canonical host IP %v", spec, i, m.HostIP)
			}
			if i > 0 && m.GuestPort != ms[i-1].GuestPort+1 {
				t.Errorf("Parse(%q)[%d]: guest ports not consecutive", spec, i)
			}
			s := m.String()
			back, err := Parse(s)
			if err != nil || len(back) != 1 || back[0] != m {
				t.Fatalf("Parse(%q)[%d] = %v; Parse(%q) = %v, %v", spec, i, m, s, back, err)
			}
			if s2 := back[0].String(); s2 != s {
				t.Fatalf("String not canonical: %q, then %q", s, s2)
			}
		}
	})
}
