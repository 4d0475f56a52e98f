package nstest

import (
	"context"
	"fmt"
)

// Veth is a veth pair: end A in one namespace, end B in another.
type Veth struct {
	NameA, NameB string
}

// NewVeth joins namespaces a and b with a veth pair, gives end A the address
// addrA and end B addrB (CIDR notation, e.g. 172.31.200.1/24) and brings
// both up. The pair goes away with either namespace.
func NewVeth(ctx context.Context, a Netns, addrA string, b Netns, addrB string) (Veth, error) {
	suffix := randomSuffix(3)
	v := Veth{NameA: "fva" + suffix, NameB: "fvb" + suffix}
	steps := [][]string{
		{"ip", "-n", a.Name, "link", "add", v.NameA, "type", "veth", "peer", "name", v.NameB, "netns", b.Name},
		{"ip", "-n", a.Name, "addr", "add", addrA, "dev", v.NameA},
		{"ip", "-n", b.Name, "addr", "add", addrB, "dev", v.NameB},
		{"ip", "-n", a.Name, "link", "set", v.NameA, "up"},
		{"ip", "-n", b.Name, "link", "set", v.NameB, "up"},
	}
	for _, s := range steps {
		if _, err := MustExec(ctx, s...); err != nil {
			return Veth{}, fmt.Errorf("veth between %s and %s: %w", a.Name, b.Name, err)
		}
	}
	return v, nil
}
