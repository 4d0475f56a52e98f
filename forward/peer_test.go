package forward

import (
	"net/netip"
	"testing"
)

func TestPeerFor(t *testing.T) {
	guest := netip.MustParseAddr("10.0.2.100")
	tests := []struct{ client, want string }{
		{"172.31.210.2:40000", "172.31.210.2:40000"},
		{"127.0.0.1:40000", "invalid AddrPort"},
		{"127.5.0.1:40000", "invalid AddrPort"},
		{"[::1]:40000", "invalid AddrPort"},
		{"[fd99:210::2]:40000", "invalid AddrPort"},
		{"[::ffff:172.31.210.2]:40000", "172.31.210.2:40000"},
	}
	for _, tc := range tests {
		got := peerFor(netip.MustParseAddrPort(tc.client), guest)
		if got.String() != tc.want {
			t.Errorf("peerFor(%s) = %s, want %s", tc.client, got, tc.want)
		}
	}
}
