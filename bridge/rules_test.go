package bridge

import "testing"

func TestRuleTag(t *testing.T) {
	tests := []struct {
		line, want string
		ok         bool
	}{
		{`-A FERRY -i fbr-1 -m comment --comment "ferry:abc" -j ACCEPT`, "ferry:abc", true},
		{`-A FERRY -i fbr-1 -m comment --comment ferry:abc:def -j ACCEPT`, "ferry:abc:def", true},
		{`-A FERRY -i fbr-1 -j ACCEPT`, "", false},
	}
	for _, tt := range tests {
		got, ok := ruleTag(tt.line)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ruleTag(%q) = %q, %v; want %q, %v", tt.line, got, ok, tt.want, tt.ok)
		}
	}
}
