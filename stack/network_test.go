package stack

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseCIDR(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{in: "10.0.2.0/24", want: "10.0.2.0/24"},
		{in: "10.0.135.128/25", want: "10.0.135.128/25"},
		{in: "10.0.0.0/8", want: "10.0.0.0/8"},
		{in: "128.0.0.0/1", want: "128.0.0.0/1"},
		{in: "10.0.2.1/24", wantErr: "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.1/24"},
		{in: "10.0.0.0/26", wantErr: "prefix length needs to be 1-25"},
		{in: "0.0.0.0/0", wantErr: "prefix length needs to be 1-25"},
		{in: "foo", wantErr: "invalid CIDR"},
		{in: "10.0.2.0", wantErr: "invalid CIDR"},
		{in: "fd00::/64", wantErr: "invalid CIDR"},
		{in: "", wantErr: "invalid CIDR"},
	}
	for _, tt := range tests {
		got, err := ParseCIDR(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseCIDR(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("ParseCIDR(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
}

func TestNewNetwork(t *testing.T) {
	tests := []struct{ cidr, gw, dns, guest string }{
		{"10.0.2.0/24", "10.0.2.2", "10.0.2.3", "10.0.2.100"},
		{"10.0.135.128/25", "10.0.135.130", "10.0.135.131", "10.0.135.228"},
		{"172.16.255.0/24", "172.16.255.2", "172.16.255.3", "172.16.255.100"},
	}
	for _, tt := range tests {
		n := NewNetwork(netip.MustParsePrefix(tt.cidr))
		if n.Gateway.String() != tt.gw || n.DNS.String() != tt.dns || n.Guest.String() != tt.guest {
			t.Errorf("NewNetwork(%s) = gw %s dns %s guest %s; want %s %s %s", tt.cidr, n.Gateway, n.DNS, n.Guest, tt.gw, tt.dns, tt.guest)
		}
	}
}

func FuzzParseCIDR(f *testing.F) {
	for _, s := range []string{"10.0.2.0/24", "10.0.2.1/24", "1.2.3.4/1", "::/0", "a/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseCIDR(s)
		if err != nil {
			return
		}
		if !p.Addr().Is4() || p.Bits() < 1 || p.Bits() > 25 || p.Masked() != p {
			t.Fatalf("ParseCIDR(%q) accepted %v", s, p)
		}
		n := NewNetwork(p)
		for _, a := range []netip.Addr{n.Gateway, n.DNS, n.Guest} {
			if !p.Contains(a) {
				t.Fatalf("ParseCIDR(%q): derived address %v outside %v", s, a, p)
			}
		}
	})
}

func TestWithIPv6(t *testing.T) {
	n := NewNetwork(netip.MustParsePrefix(DefaultCIDR)).WithIPv6(netip.MustParsePrefix(DefaultCIDR6))
	if n.Gateway6.String() != "fd00::2" || n.DNS6.String() != "fd00::3" || n.Guest6.String() != "fd00::100" || n.GuestPrefix6().String() != "fd00::100/64" {
		t.Errorf("WithIPv6: gw %s dns %s guest %s", n.Gateway6, n.DNS6, n.GuestPrefix6())
	}
	if NewNetwork(netip.MustParsePrefix(DefaultCIDR)).IPv6() {
		t.Error("IPv6 on without WithIPv6")
	}
}
