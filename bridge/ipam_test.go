package bridge

import (
	"net/netip"
	"testing"
)

func TestPickSubnet(t *testing.T) {
	pp := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	tests := []struct {
		routed, taken []netip.Prefix
		want          string
	}{
		{nil, nil, "172.17.0.0/16"},
		{pp("172.17.5.0/24"), nil, "172.18.0.0/16"},
		{pp("172.16.0.0/12"), pp("192.168.0.0/20"), "192.168.16.0/20"},
	}
	for _, tt := range tests {
		got, err := pickSubnet(tt.routed, tt.taken)
		if err != nil || got.String() != tt.want {
			t.Errorf("pickSubnet(%v, %v) = %v, %v; want %s", tt.routed, tt.taken, got, err, tt.want)
		}
	}
}

func TestAllocate(t *testing.T) {
	n := &Network{
		Name:        "n",
		Subnet:      netip.MustParsePrefix("10.9.0.0/29"),
		Gateway:     netip.MustParseAddr("10.9.0.1"),
		Attachments: map[string]*Attachment{},
	}
	var got []string
	for i := range 6 {
		a, err := allocate(n)
		if err != nil {
			if i != 5 {
				t.Fatalf("allocate #%d: %v", i, err)
			}
			break
		}
		got = append(got, a.String())
		n.Attachments[a.String()] = &Attachment{IP: a}
	}
	want := "[10.9.0.2 10.9.0.3 10.9.0.4 10.9.0.5 10.9.0.6]"
	if s := stringOf(got); s != want {
		t.Errorf("addresses = %s, want %s", s, want)
	}
	if b := broadcast(n.Subnet); b.String() != "10.9.0.7" {
		t.Errorf("broadcast = %v", b)
	}
	n.IPRange = netip.MustParsePrefix("10.9.0.4/30")
	n.Attachments = map[string]*Attachment{}
	if a, _ := allocate(n); a.String() != "10.9.0.4" {
		t.Errorf("allocate in range = %v, want 10.9.0.4", a)
	}
}

func stringOf(ss []string) string {
	out := "["
	for i, s := range ss {
		if i > 0 {
			out += " "
		}
		out += s
	}
	return out + "]"
}
