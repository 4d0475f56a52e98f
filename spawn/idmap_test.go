package spawn

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSubRange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subuid")
	data := ":1:1\nalice:100000:65536\n1001:200000:65536\n"
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		id   int
		want [2]string
		ok   bool
	}{
		{"alice", 1000, [2]string{"100000", "65536"}, true},
		{"bob", 1001, [2]string{"200000", "65536"}, true}, // by ID
		{"", 1001, [2]string{"200000", "65536"}, true},    // no name (NSS-only user): by ID
		{"", 1002, [2]string{}, false},                    // an empty name matches no line
		{"carol", 1003, [2]string{}, false},
	} {
		got, err := subRange(path, tc.name, tc.id)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("subRange(%q, %d) = %v, %v; want %v, ok %v", tc.name, tc.id, got, err, tc.want, tc.ok)
		}
	}
}
