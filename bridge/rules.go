package bridge

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// ferry's own chains. Every rule in them carries a comment tag naming the
// network (ferry:NETID) or the attachment (ferry:NETID:ATTID) it belongs
// to, so removing a network or an attachment removes exactly its rules,
// whatever they were when written.
const (
	chainFerry       = "FERRY"             // filter: accept a network's flows; nat: DNAT of published ports
	chainIsolation1  = "FERRY-ISOLATION-1" // filter: traffic leaving a ferry bridge for elsewhere
	chainIsolation2  = "FERRY-ISOLATION-2" // filter: ...and arriving on another ferry bridge: dropped
	chainPostrouting = "FERRY-POSTROUTING" // nat: MASQUERADE
)

// tableChains lists ferry's chains by table.
var tableChains = []struct {
	table  string
	chains []string
}{
	{"filter", []string{chainFerry, chainIsolation1, chainIsolation2}},
	{"nat", []string{chainFerry, chainPostrouting}},
}

// jump is a rule in a standard chain that enters one of ferry's chains.
type jump struct {
	table, chain string
	spec         []string
}

// jumps are in the order they must appear at the top of their chains.
var jumps = []jump{
	{"filter", "FORWARD", []string{"-j", chainIsolation1}},
	{"filter", "FORWARD", []string{"-j", chainFerry}},
	{"nat", "PREROUTING", []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", chainFerry}},
	{"nat", "OUTPUT", []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", chainFerry}},
	{"nat", "POSTROUTING", []string{"-j", chainPostrouting}},
}

// rules runs iptables and counts its changes.
type rules struct {
	ipt *iptables.IPTables
	ch  *changes
}

func newRules(ch *changes) (*rules, error) {
	ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(30))
	if err != nil {
		return nil, fmt.Errorf("iptables: %w: install the iptables package (iptables-nft or legacy)", err)
	}
	return &rules{ipt: ipt, ch: ch}, nil
}

// rule is one rule of a ferry chain.
type rule struct {
	table, chain string
	spec         []string
}

// ensureBase creates ferry's chains and the jumps into them, in order.
func (r *rules) ensureBase() error {
	for _, tc := range tableChains {
		have, err := r.ipt.ListChains(tc.table)
		if err != nil {
			return fmt.Errorf("iptables: list %s chains: %w", tc.table, err)
		}
		for _, c := range tc.chains {
			if slices.Contains(have, c) {
				continue
			}
			if err := r.ipt.NewChain(tc.table, c); err != nil {
				return fmt.Errorf("iptables: create chain %s/%s: %w", tc.table, c, err)
			}
			r.ch.done("chain " + tc.table + "/" + c)
		}
	}
	// Each standard chain's jumps are (re)inserted together, last first,
	// so that they end up at its top in order.
	for _, std := range [][2]string{{"filter", "FORWARD"}, {"nat", "PREROUTING"}, {"nat", "OUTPUT"}, {"nat", "POSTROUTING"}} {
		var js []jump
		complete := true
		for _, j := range jumps {
			if j.table != std[0] || j.chain != std[1] {
				continue
			}
			js = append(js, j)
			ok, err := r.ipt.Exists(j.table, j.chain, j.spec...)
			if err != nil {
				return fmt.Errorf("iptables: check %s/%s: %w", j.table, j.chain, err)
			}
			complete = complete && ok
		}
		if complete {
			continue
		}
		for i := len(js) - 1; i >= 0; i-- {
			j := js[i]
			if err := r.deleteIfExists(j.table, j.chain, j.spec); err != nil {
				return err
			}
			if err := r.ipt.Insert(j.table, j.chain, 1, j.spec...); err != nil {
				return fmt.Errorf("iptables: jump from %s/%s: %w", j.table, j.chain, err)
			}
			r.ch.done("jump " + j.table + "/" + j.chain)
		}
	}
	return nil
}

// removeBase removes the jumps and ferry's chains with whatever they hold.
func (r *rules) removeBase() error {
	have := map[string][]string{}
	for _, tc := range tableChains {
		cs, err := r.ipt.ListChains(tc.table)
		if err != nil {
			return fmt.Errorf("iptables: list %s chains: %w", tc.table, err)
		}
		have[tc.table] = cs
	}
	for _, j := range jumps {
		// A jump to a chain that does not exist cannot exist either (and
		// iptables -C refuses to name it).
		if !slices.Contains(have[j.table], j.spec[len(j.spec)-1]) {
			continue
		}
		if err := r.deleteIfExists(j.table, j.chain, j.spec); err != nil {
			return err
		}
	}
	for _, tc := range tableChains {
		for _, c := range tc.chains {
			if !slices.Contains(have[tc.table], c) {
				continue
			}
			if err := r.ipt.ClearAndDeleteChain(tc.table, c); err != nil {
				return fmt.Errorf("iptables: delete chain %s/%s: %w", tc.table, c, err)
			}
			r.ch.done("delete chain " + tc.table + "/" + c)
		}
	}
	return nil
}

// baseExists reports whether any of ferry's chains exists.
func (r *rules) baseExists() (bool, error) {
	for _, tc := range tableChains {
		have, err := r.ipt.ListChains(tc.table)
		if err != nil {
			return false, fmt.Errorf("iptables: list %s chains: %w", tc.table, err)
		}
		for _, c := range tc.chains {
			if slices.Contains(have, c) {
				return true, nil
			}
		}
	}
	return false, nil
}

func (r *rules) deleteIfExists(table, chain string, spec []string) error {
	ok, err := r.ipt.Exists(table, chain, spec...)
	if err != nil {
		return fmt.Errorf("iptables: check %s/%s: %w", table, chain, err)
	}
	if !ok {
		return nil
	}
	if err := r.ipt.Delete(table, chain, spec...); err != nil {
		return fmt.Errorf("iptables: delete from %s/%s: %w", table, chain, err)
	}
	r.ch.done("delete rule " + table + "/" + chain)
	return nil
}

// add appends rs, each tagged with tag.
func (r *rules) add(tag string, rs []rule) error {
	for _, x := range rs {
		spec := append(slices.Clone(x.spec), "-m", "comment", "--comment", tag)
		if err := r.ipt.Append(x.table, x.chain, spec...); err != nil {
			return fmt.Errorf("iptables: add to %s/%s: %w", x.table, x.chain, err)
		}
		r.ch.done("rule " + x.table + "/" + x.chain)
	}
	return nil
}

// removeTagged deletes every rule of ferry's chains whose tag satisfies
// match. Chains that do not exist hold nothing to delete.
func (r *rules) removeTagged(match func(tag string) bool) error {
	for _, tc := range tableChains {
		have, err := r.ipt.ListChains(tc.table)
		if err != nil {
			return fmt.Errorf("iptables: list %s chains: %w", tc.table, err)
		}
		for _, c := range tc.chains {
			if !slices.Contains(have, c) {
				continue
			}
			list, err := r.ipt.List(tc.table, c)
			if err != nil {
				return fmt.Errorf("iptables: list %s/%s: %w", tc.table, c, err)
			}
			var ids []int
			n := 0
			for _, line := range list {
				if !strings.HasPrefix(line, "-A ") {
					continue
				}
				n++
				if tag, ok := ruleTag(line); ok && match(tag) {
					ids = append(ids, n)
				}
			}
			for i := len(ids) - 1; i >= 0; i-- {
				if err := r.ipt.DeleteById(tc.table, c, ids[i]); err != nil {
					return fmt.Errorf("iptables: delete rule %d of %s/%s: %w", ids[i], tc.table, c, err)
				}
				r.ch.done("delete rule " + tc.table + "/" + c)
			}
		}
	}
	return nil
}

// ruleTag extracts the comment of a rule as iptables -S prints it.
func ruleTag(line string) (string, bool) {
	_, after, ok := strings.Cut(line, "--comment ")
	if !ok {
		return "", false
	}
	if strings.HasPrefix(after, `"`) {
		tag, _, _ := strings.Cut(after[1:], `"`)
		return tag, true
	}
	tag, _, _ := strings.Cut(after, " ")
	return tag, true
}

func networkTag(n *Network) string { return "ferry:" + n.ID }

func attachmentTag(n *Network, a *Attachment) string { return "ferry:" + n.ID + ":" + a.ID }

// networkRules are the rules of network n: isolation from other ferry
// networks, forwarding of its flows, MASQUERADE of what leaves its subnet
// (unless internal) and of loopback sources reaching it (a publish on
// 127.0.0.1, with route_localnet on the bridge).
func networkRules(n *Network) []rule {
	br, sub := n.Bridge, n.Subnet.String()
	var rs []rule
	if !n.NoIsolation {
		rs = append(rs,
			rule{"filter", chainIsolation1, []string{"-i", br, "!", "-o", br, "-j", chainIsolation2}},
			rule{"filter", chainIsolation2, []string{"-o", br, "-j", "DROP"}},
		)
	}
	rs = append(rs,
		rule{"filter", chainFerry, []string{"-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}},
		rule{"filter", chainFerry, []string{"-i", br, "-j", "ACCEPT"}},
		rule{"nat", chainPostrouting, []string{"-s", "127.0.0.0/8", "-o", br, "-j", "MASQUERADE"}},
	)
	if n.Internal {
		rs = append(rs,
			rule{"filter", chainIsolation1, []string{"-i", br, "!", "-d", sub, "-j", "DROP"}},
			rule{"filter", chainIsolation1, []string{"-o", br, "!", "-s", sub, "-j", "DROP"}},
		)
	} else if !n.NoMasquerade {
		rs = append(rs, rule{"nat", chainPostrouting, []string{"-s", sub, "!", "-o", br, "-j", "MASQUERADE"}})
	}
	return rs
}

// portRules are the rules publishing p of attachment a on n: DNAT from
// the host's addresses (PREROUTING for other hosts, OUTPUT for the host
// itself), MASQUERADE of the network's own sources so that a namespace can
// reach a published port of its network (hairpin), and a FORWARD accept.
func portRules(n *Network, a *Attachment, p PublishedPort) []rule {
	proto := string(p.Proto)
	guest := strconv.Itoa(int(p.GuestPort))
	dnat := []string{"-p", proto}
	if p.HostIP.IsValid() && !p.HostIP.IsUnspecified() {
		dnat = append(dnat, "-d", netip.PrefixFrom(p.HostIP, 32).String())
	}
	dnat = append(dnat, "--dport", strconv.Itoa(int(p.HostPort)), "-j", "DNAT", "--to-destination", a.IP.String()+":"+guest)
	ip := netip.PrefixFrom(a.IP, 32).String()
	return []rule{
		{"nat", chainFerry, dnat},
		{"nat", chainPostrouting, []string{"-s", n.Subnet.String(), "-d", ip, "-p", proto, "--dport", guest, "-j", "MASQUERADE"}},
		{"filter", chainFerry, []string{"-d", ip, "!", "-i", n.Bridge, "-o", n.Bridge, "-p", proto, "--dport", guest, "-j", "ACCEPT"}},
	}
}
