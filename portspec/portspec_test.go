package portspec

import (
	"net/netip"
	"slices"
	"testing"
)

var (
	loop4 = netip.MustParseAddr("127.0.0.1")
	loop6 = netip.MustParseAddr("::1")
	any4  = netip.MustParseAddr("0.0.0.0")
	any6  = netip.MustParseAddr("::")
)

// tcp and udp build a single-port mapping (HostPortEnd = HostPort).
func tcp(ip netip.Addr, host, guest uint16) Mapping {
	return Mapping{Proto: TCP, HostIP: ip, HostPort: host, HostPortEnd: host, GuestPort: guest}
}

func udp(ip netip.Addr, host, guest uint16) Mapping {
	m := tcp(ip, host, guest)
	m.Proto = UDP
	return m
}

// seq builds n consecutive mappings starting from m.
func seq(m Mapping, n int) []Mapping {
	ms := make([]Mapping, n)
	for i := range ms {
		ms[i] = m
		ms[i].GuestPort += uint16(i)
		if m.HostPort != 0 {
			ms[i].HostPort += uint16(i)
			ms[i].HostPortEnd = ms[i].HostPort
		}
	}
	return ms
}

var none netip.Addr

var validTests = []struct {
	spec string
	want []Mapping
}{
	{"80", []Mapping{tcp(none, 0, 80)}},
	{"80/tcp", []Mapping{tcp(none, 0, 80)}},
	{"80/udp", []Mapping{udp(none, 0, 80)}},
	{"80/UDP", []Mapping{udp(none, 0, 80)}},
	{"80/Tcp", []Mapping{tcp(none, 0, 80)}},
	{"80/", []Mapping{tcp(none, 0, 80)}}, // empty proto is TCP, as in Docker
	{"0:80", []Mapping{tcp(none, 0, 80)}},
	{":80", []Mapping{tcp(none, 0, 80)}},
	{"::80", []Mapping{tcp(none, 0, 80)}},
	{"1", []Mapping{tcp(none, 0, 1)}},
	{"65535", []Mapping{tcp(none, 0, 65535)}},
	{"0080", []Mapping{tcp(none, 0, 80)}}, // leading zeros, as in Docker
	{"8080:80", []Mapping{tcp(none, 8080, 80)}},
	{"65535:1/udp", []Mapping{udp(none, 65535, 1)}},
	{":8080:80", []Mapping{tcp(none, 8080, 80)}},
	{"127.0.0.1::80", []Mapping{tcp(loop4, 0, 80)}},
	{"127.0.0.1:0:80", []Mapping{tcp(loop4, 0, 80)}},
	{"127.0.0.1:8080:80", []Mapping{tcp(loop4, 8080, 80)}},
	{"127.0.0.1:8080:80/udp", []Mapping{udp(loop4, 8080, 80)}},
	{"0.0.0.0:8080:80", []Mapping{tcp(any4, 8080, 80)}},
	{"[::1]:8080:80", []Mapping{tcp(loop6, 8080, 80)}},
	{"[::1]::80/udp", []Mapping{udp(loop6, 0, 80)}},
	{"[::]:8080:80", []Mapping{tcp(any6, 8080, 80)}},
	{"[2001:DB8::1]:53:53/udp", []Mapping{udp(netip.MustParseAddr("2001:db8::1"), 53, 53)}},
	{"[127.0.0.1]:8080:80", []Mapping{tcp(loop4, 8080, 80)}},        // Docker accepts brackets around IPv4
	{"[::ffff:127.0.0.1]:8080:80", []Mapping{tcp(loop4, 8080, 80)}}, // unmapped to IPv4
	{"8000-8010:8000-8010", seq(tcp(none, 8000, 8000), 11)},
	{"127.0.0.1:8000-8002:9000-9002/udp", seq(udp(loop4, 8000, 9000), 3)},
	{"[::1]:1-3:65533-65535", seq(tcp(loop6, 1, 65533), 3)},
	{"80-82", seq(tcp(none, 0, 80), 3)},
	{"127.0.0.1::80-82", seq(tcp(loop4, 0, 80), 3)},
	{"80-80", []Mapping{tcp(none, 0, 80)}},
	{"8080-8080:80-80", []Mapping{tcp(none, 8080, 80)}},
	{"8000-8010:80", []Mapping{{Proto: TCP, HostPort: 8000, HostPortEnd: 8010, GuestPort: 80}}},
	{"[::1]:8000-8010:80/udp", []Mapping{{Proto: UDP, HostIP: loop6, HostPort: 8000, HostPortEnd: 8010, GuestPort: 80}}},
}

func TestParse(t *testing.T) {
	for _, tt := range validTests {
		got, err := Parse(tt.spec)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.spec, err)
			continue
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("Parse(%q)\n got %v\nwant %v", tt.spec, got, tt.want)
		}
	}
}

func TestParseFullRange(t *testing.T) {
	got, err := Parse("1-65535/udp")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 65535 || got[0] != udp(none, 0, 1) || got[65534] != udp(none, 0, 65535) {
		t.Errorf("Parse(1-65535/udp): %d mappings, first %v, last %v", len(got), got[0], got[len(got)-1])
	}
}

func TestParseErrors(t *testing.T) {
	for _, tt := range []struct{ spec, err string }{
		{"", `invalid publish spec "": empty`},
		{"8080:", `invalid publish spec "8080:": missing container port`},
		{"/udp", `invalid publish spec "/udp": missing container port`},
		{"127.0.0.1:8080:", `invalid publish spec "127.0.0.1:8080:": missing container port`},
		{"0", `invalid publish spec "0": invalid port "0": must be 1-65535`},
		{"8080:0", `invalid publish spec "8080:0": invalid port "0": must be 1-65535`},
		{"70000", `invalid publish spec "70000": invalid port "70000": must be 1-65535`},
		{"70000:80", `invalid publish spec "70000:80": invalid port "70000": must be 1-65535`},
		{"65536", `invalid publish spec "65536": invalid port "65536": must be 1-65535`},
		{"99999999999999999999", `invalid publish spec "99999999999999999999": invalid port "99999999999999999999": must be 1-65535`},
		{"abc", `invalid publish spec "abc": invalid port "abc": not a number`},
		{"+80", `invalid publish spec "+80": invalid port "+80": not a number`},
		{" 80", `invalid publish spec " 80": invalid port " 80": not a number`},
		{"80/udp:90", `invalid publish spec "80/udp:90": invalid port "80/udp": not a number`},
		{"9000-8000", `invalid publish spec "9000-8000": invalid port range "9000-8000": end is before start`},
		{"9000-8000:80", `invalid publish spec "9000-8000:80": invalid port range "9000-8000": end is before start`},
		{"-80", `invalid publish spec "-80": invalid port range "-80": missing start port`},
		{"80-", `invalid publish spec "80-": invalid port range "80-": missing end port`},
		{"1-2-3", `invalid publish spec "1-2-3": invalid port range "1-2-3": too many '-'`},
		{"0-10:80", `invalid publish spec "0-10:80": invalid port "0": must be 1-65535`},
		{"80-70000", `invalid publish spec "80-70000": invalid port "70000": must be 1-65535`},
		{"8000-8002:80-81", `invalid publish spec "8000-8002:80-81": port ranges don't match: host 8000-8002 (3 ports), container 80-81 (2 ports)`},
		{"8080:80-81", `invalid publish spec "8080:80-81": port ranges don't match: host 8080 (1 port), container 80-81 (2 ports)`},
		{"0:80-82", `invalid publish spec "0:80-82": port ranges don't match: host 0 (1 port), container 80-82 (3 ports)`},
		{"80/sctp", `invalid publish spec "80/sctp": invalid proto "sctp": not supported (use tcp or udp)`},
		{"80/SCTP", `invalid publish spec "80/SCTP": invalid proto "SCTP": not supported (use tcp or udp)`},
		{"80/icmp", `invalid publish spec "80/icmp": invalid proto "icmp": must be tcp or udp`},
		{"80/tcp/udp", `invalid publish spec "80/tcp/udp": invalid proto "tcp/udp": must be tcp or udp`},
		{"a:b:c:d", `invalid publish spec "a:b:c:d": too many colons`},
		{"1.2.3.4:1:2:3", `invalid publish spec "1.2.3.4:1:2:3": too many colons`},
		{"::1:8080:80", `invalid publish spec "::1:8080:80": too many colons (an IPv6 host IP must be in brackets: "[::1]:8080:80")`},
		{"[::1]:1:2:3", `invalid publish spec "[::1]:1:2:3": too many colons`},
		{"1.2.3:8080:80", `invalid publish spec "1.2.3:8080:80": invalid host IP "1.2.3": IPv4 address too short`},
		{"localhost:8080:80", `invalid publish spec "localhost:8080:80": invalid host IP "localhost": unable to parse IP`},
		{"127.0.0.1:80", `invalid publish spec "127.0.0.1:80": invalid port "127.0.0.1": not a number`},
		{"[::1]:80", `invalid publish spec "[::1]:80": host IP [::1] must be followed by a host port and a container port (e.g. [::1]:8080:80, or [::1]::80 for any free host port)`},
		{"[::1]8080:80", `invalid publish spec "[::1]8080:80": expected ':' after host IP [::1]`},
		{"[::1:8080:80", `invalid publish spec "[::1:8080:80": missing ']' after bracketed host IP`},
		{"[]:8080:80", `invalid publish spec "[]:8080:80": invalid host IP "": empty address in brackets`},
		{"[fe80::1%eth0]:8080:80", `invalid publish spec "[fe80::1%eth0]:8080:80": invalid host IP "fe80::1%eth0": zones are not supported`},
		{"[::1/128]:8080:80", `invalid publish spec "[::1/128]:8080:80": invalid host IP "::1/128": unexpected character, want colon (at "/128")`},
	} {
		got, err := Parse(tt.spec)
		if err == nil {
			t.Errorf("Parse(%q) = %v, want error %q", tt.spec, got, tt.err)
		} else if err.Error() != tt.err {
			t.Errorf("Parse(%q) error\n got %s\nwant %s", tt.spec, err, tt.err)
		}
	}
}

func TestString(t *testing.T) {
	for _, tt := range []struct {
		m    Mapping
		want string
	}{
		{tcp(none, 0, 80), "80/tcp"},
		{udp(none, 8080, 80), "8080:80/udp"},
		{tcp(loop4, 0, 80), "127.0.0.1::80/tcp"},
		{tcp(loop4, 8080, 80), "127.0.0.1:8080:80/tcp"},
		{udp(loop6, 8080, 80), "[::1]:8080:80/udp"},
		{tcp(any4, 1, 2), "0.0.0.0:1:2/tcp"},
		{tcp(any6, 0, 2), "[::]::2/tcp"},
		{Mapping{Proto: TCP, HostPort: 8000, HostPortEnd: 8010, GuestPort: 80}, "8000-8010:80/tcp"},
		{Mapping{Proto: UDP, HostIP: loop6, HostPort: 8000, HostPortEnd: 8010, GuestPort: 80}, "[::1]:8000-8010:80/udp"},
	} {
		if got := tt.m.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.m, got, tt.want)
		}
	}
}

// TestRoundTrip checks that every mapping Parse returns for the valid table
// prints to a spec that parses back to exactly that mapping.
func TestRoundTrip(t *testing.T) {
	for _, tt := range validTests {
		ms, err := Parse(tt.spec)
		if err != nil {
			continue // reported by TestParse
		}
		for _, m := range ms {
			s := m.String()
			back, err := Parse(s)
			if err != nil || len(back) != 1 || back[0] != m {
				t.Errorf("Parse(%q) (from %q) = %v, %v; want [%v]", s, tt.spec, back, err, m)
			}
		}
	}
}

func TestFamilies(t *testing.T) {
	for _, tt := range []struct {
		spec   string
		v4, v6 bool
	}{
		{"80", true, true},
		{"8080:80", true, true},
		{"0.0.0.0:8080:80", true, false},
		{"127.0.0.1::80", true, false},
		{"[::]:8080:80", false, true},
		{"[::1]:8080:80", false, true},
		{"[::ffff:10.0.0.1]:8080:80", true, false},
	} {
		ms, err := Parse(tt.spec)
		if err != nil {
			t.Fatal(err)
		}
		if v4, v6 := ms[0].Families(); v4 != tt.v4 || v6 != tt.v6 {
			t.Errorf("Parse(%q)[0].Families() = %v, %v; want %v, %v", tt.spec, v4, v6, tt.v4, tt.v6)
		}
	}
	// A hand-built IPv4-mapped address counts as IPv4.
	m := tcp(netip.MustParseAddr("::ffff:10.0.0.1"), 80, 80)
	if v4, v6 := m.Families(); !v4 || v6 {
		t.Errorf("%v.Families() = %v, %v; want true, false", m, v4, v6)
	}
}
