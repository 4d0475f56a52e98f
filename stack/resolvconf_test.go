package stack

import (
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// parseUpstreamTests are the cases of TestParseDNSUpstream; their inputs also
// seed FuzzParseUpstream.
var parseUpstreamTests = []struct {
	in      string
	want    string // "" if an error is expected
	wantErr string // substring of the error
}{
	{in: "1.1.1.1", want: "1.1.1.1:53"},
	{in: "127.0.0.53", want: "127.0.0.53:53"},
	{in: "1.1.1.1:5353", want: "1.1.1.1:5353"},
	{in: "1.1.1.1:053", want: "1.1.1.1:53"},
	{in: "9.9.9.9:65535", want: "9.9.9.9:65535"},
	{in: "::1", want: "[::1]:53"},
	{in: "[::1]", want: "[::1]:53"},
	{in: "[::1]:5353", want: "[::1]:5353"},
	{in: "2001:db8::1", want: "[2001:db8::1]:53"},
	{in: "2001:DB8:0::1", want: "[2001:db8::1]:53"},
	{in: "[2001:db8::1]:53", want: "[2001:db8::1]:53"},
	{in: "fe80::1%eth0", want: "[fe80::1%eth0]:53"},
	{in: "[fe80::1%eth0]", want: "[fe80::1%eth0]:53"},
	{in: "[fe80::1%eth0]:5353", want: "[fe80::1%eth0]:5353"},
	{in: "[fe80::1%2]:53", want: "[fe80::1%2]:53"},
	{in: "::ffff:1.2.3.4", want: "[::ffff:1.2.3.4]:53"},

	{in: "", wantErr: `invalid DNS upstream "": empty address`},
	{in: "x", wantErr: `invalid DNS upstream "x": `},
	{in: "dns.google", wantErr: `invalid DNS upstream "dns.google": `},
	{in: "dns.google:53", wantErr: `invalid DNS upstream "dns.google:53": `},
	{in: " 1.1.1.1", wantErr: `invalid DNS upstream " 1.1.1.1": `},
	{in: "1.1.1", wantErr: `invalid DNS upstream "1.1.1": `},
	{in: "1.1.1.1:", wantErr: `invalid port ""`},
	{in: "1.1.1.1:0", wantErr: `invalid port "0"`},
	{in: "1.1.1.1:65536", wantErr: `invalid port "65536"`},
	{in: "1.1.1.1:+53", wantErr: `invalid port "+53"`},
	{in: "1.1.1.1:dns", wantErr: `invalid port "dns"`},
	{in: "1.1.1.1:53:53", wantErr: `invalid DNS upstream "1.1.1.1:53:53": `},
	{in: "[1.1.1.1]", wantErr: "not an IPv6 address"},
	{in: "[1.1.1.1]:53", wantErr: "not an IPv6 address"},
	{in: "[::1", wantErr: `invalid DNS upstream "[::1": `},
	{in: "::1]:53", wantErr: `invalid DNS upstream "::1]:53": `},
	{in: "[::1]:", wantErr: `invalid port ""`},
	{in: "[::1]53", wantErr: `invalid DNS upstream "[::1]53": `},
	{in: "[[::1]]:53", wantErr: `invalid DNS upstream "[[::1]]:53": `},
	{in: "1.2.3.4%eth0", wantErr: `invalid DNS upstream "1.2.3.4%eth0": `},
	{in: "fe80::1%", wantErr: `invalid DNS upstream "fe80::1%": `},
	{in: "fe80::1%a/b", wantErr: `invalid zone "a/b"`},
	{in: "fe80::1%a]:53", wantErr: `invalid zone "a]:53"`},
	{in: "[fe80::1%a:b]:53", wantErr: `invalid zone "a:b"`},
	{in: "fe80::1%averyverylongname", wantErr: `invalid zone`},
}

// TestParseDNSUpstream tests ParseUpstream on parseUpstreamTests.
func TestParseDNSUpstream(t *testing.T) {
	for _, tt := range parseUpstreamTests {
		got, err := ParseUpstream(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseUpstream(%q) = %q, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseUpstream(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// FuzzParseUpstream checks that ParseUpstream either fails with context
// or returns a canonical, dialable address that it parses back to itself.
func FuzzParseUpstream(f *testing.F) {
	for _, tt := range parseUpstreamTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseUpstream(s)
		if err != nil {
			if got != "" {
				t.Fatalf("ParseUpstream(%q) = %q with error %v", s, got, err)
			}
			if !strings.HasPrefix(err.Error(), "invalid DNS upstream ") {
				t.Fatalf("ParseUpstream(%q) error %q lacks context", s, err)
			}
			return
		}
		checkUpstream(t, got)
		// The result is in canonical form.
		again, err := ParseUpstream(got)
		if err != nil || again != got {
			t.Fatalf("ParseUpstream(%q) = %q, but ParseUpstream(%q) = %q, %v", s, got, got, again, err)
		}
	})
}

// checkUpstream checks that u is a "host:port" address that net can dial.
func checkUpstream(t *testing.T, u string) {
	t.Helper()
	host, port, err := net.SplitHostPort(u)
	if err != nil {
		t.Fatalf("upstream %q: %v", u, err)
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		t.Fatalf("upstream %q: %v", u, err)
	}
	if port == "" || port == "0" || port[0] == '0' {
		t.Fatalf("upstream %q: bad port", u)
	}
	if want := net.JoinHostPort(addr.String(), port); u != want {
		t.Fatalf("upstream %q is not canonical, want %q", u, want)
	}
	if _, err := net.ResolveUDPAddr("udp", u); err != nil {
		t.Fatalf("upstream %q: %v", u, err)
	}
}

// resolvConfTests are the cases of TestUpstreamsFromResolvConf; their
// inputs also seed FuzzUpstreamsFromResolvConf.
var resolvConfTests = []struct {
	name string
	data string
	want []string // nil if an error is expected
}{
	{
		name: "systemd-resolved",
		data: `# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).
# Do not edit.
;
nameserver 127.0.0.53
options edns0 trust-ad
search example.com
`,
		want: []string{"127.0.0.53:53"},
	},
	{
		name: "several",
		data: "nameserver 1.1.1.1\nnameserver ::1\nnameserver fe80::1%eth0\nnameserver 9.9.9.9\n",
		want: []string{"1.1.1.1:53", "[::1]:53", "[fe80::1%eth0]:53", "9.9.9.9:53"},
	},
	{
		name: "IPv6 only",
		data: "nameserver 2001:4860:4860::8888",
		want: []string{"[2001:4860:4860::8888]:53"},
	},
	{
		name: "layout",
		data: "  nameserver\t8.8.8.8   # Google\r\n\tnameserver 8.8.4.4 ; trailing\r\nnameserver 1.0.0.1",
		want: []string{"8.8.8.8:53", "8.8.4.4:53", "1.0.0.1:53"},
	},
	{
		name: "skips bad lines",
		data: "nameserver\nnameserver dns.google\nnameserver 1.2.3.4:53\nnameservers 1.1.1.1\nNAMESERVER 1.1.1.1\nnameserver fe80::1%a/b\nnameserver 10.0.0.1\n",
		want: []string{"10.0.0.1:53"},
	},
	{
		name: "duplicates kept",
		data: "nameserver 10.0.0.1\nnameserver 10.0.0.1\n",
		want: []string{"10.0.0.1:53", "10.0.0.1:53"},
	},
	{name: "empty", data: ""},
	{name: "commented out", data: "#nameserver 1.1.1.1\n; nameserver 8.8.8.8\n"},
	{name: "options only", data: "options ndots:5 timeout:2\nsearch svc.cluster.local\ndomain example.com\n"},
	{name: "invalid only", data: "nameserver localhost\nnameserver 300.1.1.1\n"},
}

// TestUpstreamsFromResolvConf tests UpstreamsFromResolvConf on
// resolvConfTests.
func TestUpstreamsFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range resolvConfTests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			if err := os.WriteFile(path, []byte(tt.data), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := UpstreamsFromResolvConf(path)
			if tt.want == nil {
				if err == nil || !strings.Contains(err.Error(), path) {
					t.Errorf("got %q, %v; want error naming the file", got, err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestUpstreamsFromResolvConfMissing checks the error for a missing file.
func TestUpstreamsFromResolvConfMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	got, err := UpstreamsFromResolvConf(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Errorf("UpstreamsFromResolvConf(missing) = %q, %v; want not-exist error naming the file", got, err)
	}
}

// FuzzUpstreamsFromResolvConf checks that UpstreamsFromResolvConf, given
// any file, either fails or returns canonical port-53 addresses.
func FuzzUpstreamsFromResolvConf(f *testing.F) {
	for _, tt := range resolvConfTests {
		f.Add([]byte(tt.data))
	}
	// Inputs run one at a time in each process, so they can share a file.
	path := filepath.Join(f.TempDir(), "resolv.conf")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := UpstreamsFromResolvConf(path)
		if err != nil {
			if got != nil {
				t.Fatalf("got %q with error %v", got, err)
			}
			return
		}
		if len(got) == 0 {
			t.Fatal("no upstreams and no error")
		}
		if n := strings.Count(string(data), "nameserver"); len(got) > n {
			t.Fatalf("%d upstreams from %d nameserver lines", len(got), n)
		}
		for _, u := range got {
			checkUpstream(t, u)
			if !strings.HasSuffix(u, ":53") {
				t.Fatalf("upstream %q: port is not 53", u)
			}
			if again, err := ParseUpstream(u); err != nil || again != u {
				t.Fatalf("ParseUpstream(%q) = %q, %v", u, again, err)
			}
		}
	})
}
