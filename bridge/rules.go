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

// rules runs iptables and ip6tables and counts their changes. ferry's
// chains exist in ip6tables only while an IPv6 network needs them.
type rules struct {
	v4 *family
	// v6 is nil when ip6tables cannot be run, err6 then says why.
	v6   *family
	err6 error
}

// family is iptables or ip6tables.
type family struct {
	ipt  *iptables.IPTables
	ch   *changes
	name string
}

func newRules(ch *changes) (*rules, error) {
	ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(30))
	if err != nil {
		return nil, fmt.Errorf("iptables: %w: install the iptables package (iptables-nft or legacy)", err)
	}
	r := &rules{v4: &family{ipt: ipt, ch: ch, name: "iptables"}}
	if ipt6, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv6), iptables.Timeout(30)); err != nil {
		r.err6 = fmt.Errorf("ip6tables: %w: install the iptables package (it provides ip6tables) for IPv6 networks", err)
	} else {
		r.v6 = &family{ipt: ipt6, ch: ch, name: "ip6tables"}
	}
	return r, nil
}

// families are the families in use: IPv4, and IPv6 when ip6tables runs.
func (r *rules) families() []*family {
	if r.v6 == nil {
		return []*family{r.v4}
	}
	return []*family{r.v4, r.v6}
}

// ensureBase creates ferry's chains and jumps in iptables, and in
// ip6tables too when v6.
func (r *rules) ensureBase(v6 bool) error {
	if err := r.v4.ensureBase(); err != nil {
		return err
	}
	if !v6 {
		return nil
	}
	if r.v6 == nil {
		return r.err6
	}
	return r.v6.ensureBase()
}

// removeBase removes ferry's chains and jumps from both families.
func (r *rules) removeBase() error {
	for _, f := range r.families() {
		if err := f.removeBase(); err != nil {
			return err
		}
	}
	return nil
}

// removeBase6 removes ferry's chains and jumps from ip6tables only.
func (r *rules) removeBase6() error {
	if r.v6 == nil {
		return nil
	}
	return r.v6.removeBase()
}

// baseExists reports whether any of ferry's chains exists in either
// family; base6Exists in ip6tables.
func (r *rules) baseExists() (bool, error) {
	for _, f := range r.families() {
		if ok, err := f.baseExists(); err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

func (r *rules) base6Exists() (bool, error) {
	if r.v6 == nil {
		return false, nil
	}
	return r.v6.baseExists()
}

// add appends rs, each tagged with tag, in the family each names.
func (r *rules) add(tag string, rs []rule) error {
	for _, x := range rs {
		f := r.v4
		if x.v6 {
			if f = r.v6; f == nil {
				return r.err6
			}
		}
		if err := f.add(tag, x); err != nil {
			return err
		}
	}
	return nil
}

// removeTagged deletes every rule of ferry's chains, in both families,
// whose tag satisfies match.
func (r *rules) removeTagged(match func(tag string) bool) error {
	for _, f := range r.families() {
		if err := f.removeTagged(match); err != nil {
			return err
		}
	}
	return nil
}

// rule is one rule of a ferry chain, of ip6tables when v6.
type rule struct {
	table, chain string
	spec         []string
	v6           bool
}

// ensureBase creates ferry's chains and the jumps into them, in order.
func (r *family) ensureBase() error {
	for _, tc := range tableChains {
		have, err := r.ipt.ListChains(tc.table)
		if err != nil {
			return fmt.Errorf("%s: list %s chains: %w", r.name, tc.table, err)
		}
		for _, c := range tc.chains {
			if slices.Contains(have, c) {
				continue
			}
			if err := r.ipt.NewChain(tc.table, c); err != nil {
				return fmt.Errorf("%s: create chain %s/%s: %w", r.name, tc.table, c, err)
			}
			r.ch.done(r.name + " chain " + tc.table + "/" + c)
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
				return fmt.Errorf("%s: check %s/%s: %w", r.name, j.table, j.chain, err)
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
				return fmt.Errorf("%s: jump from %s/%s: %w", r.name, j.table, j.chain, err)
			}
			r.ch.done(r.name + " jump " + j.table + "/" + j.chain)
		}
	}
	return nil
}

// removeBase removes the jumps and ferry's chains with whatever they hold.
func (r *family) removeBase() error {
	have := map[string][]string{}
	for _, tc := range tableChains {
		cs, err := r.ipt.ListChains(tc.table)
		if err != nil {
			return fmt.Errorf("%s: list %s chains: %w", r.name, tc.table, err)
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
				return fmt.Errorf("%s: delete chain %s/%s: %w", r.name, tc.table, c, err)
			}
			r.ch.done(r.name + " delete chain " + tc.table + "/" + c)
		}
	}
	return nil
}

// baseExists reports whether any of ferry's chains exists.
func (r *family) baseExists() (bool, error) {
	for _, tc := range tableChains {
		have, err := r.ipt.ListChains(tc.table)
		if err != nil {
			return false, fmt.Errorf("%s: list %s chains: %w", r.name, tc.table, err)
		}
		for _, c := range tc.chains {
			if slices.Contains(have, c) {
				return true, nil
			}
		}
	}
	return false, nil
}

func (r *family) deleteIfExists(table, chain string, spec []string) error {
	ok, err := r.ipt.Exists(table, chain, spec...)
	if err != nil {
		return fmt.Errorf("%s: check %s/%s: %w", r.name, table, chain, err)
	}
	if !ok {
		return nil
	}
	if err := r.ipt.Delete(table, chain, spec...); err != nil {
		return fmt.Errorf("%s: delete from %s/%s: %w", r.name, table, chain, err)
	}
	r.ch.done(r.name + " delete rule " + table + "/" + chain)
	return nil
}

// add appends x tagged with tag.
func (r *family) add(tag string, x rule) error {
	spec := append(slices.Clone(x.spec), "-m", "comment", "--comment", tag)
	if err := r.ipt.Append(x.table, x.chain, spec...); err != nil {
		return fmt.Errorf("%s: add to %s/%s: %w", r.name, x.table, x.chain, err)
	}
	r.ch.done(r.name + " rule " + x.table + "/" + x.chain)
	return nil
}

// removeTagged deletes every rule of ferry's chains whose tag satisfies
// match. Chains that do not exist hold nothing to delete.
func (r *family) removeTagged(match func(tag string) bool) error {
	for _, tc := range tableChains {
		have, err := r.ipt.ListChains(tc.table)
		if err != nil {
			return fmt.Errorf("%s: list %s chains: %w", r.name, tc.table, err)
		}
		for _, c := range tc.chains {
			if !slices.Contains(have, c) {
				continue
			}
			list, err := r.ipt.List(tc.table, c)
			if err != nil {
				return fmt.Errorf("%s: list %s/%s: %w", r.name, tc.table, c, err)
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
					return fmt.Errorf("%s: delete rule %d of %s/%s: %w", r.name, ids[i], tc.table, c, err)
				}
				r.ch.done(r.name + " delete rule " + tc.table + "/" + c)
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
// 127.0.0.1, with route_localnet on the bridge). A dual-stack network has
// the same rules in ip6tables, loopback excepted (IPv6 has no
// route_localnet). A macvlan network has none.
func networkRules(n *Network) []rule {
	if n.Macvlan() {
		return nil
	}
	rs := familyRules(n, n.Subnet.String(), false)
	if n.IPv6() {
		rs = append(rs, familyRules(n, n.Subnet6.String(), true)...)
	}
	return rs
}

func familyRules(n *Network, sub string, v6 bool) []rule {
	br := n.Bridge
	var rs []rule
	if !n.NoIsolation {
		rs = append(rs,
			rule{"filter", chainIsolation1, []string{"-i", br, "!", "-o", br, "-j", chainIsolation2}, v6},
			rule{"filter", chainIsolation2, []string{"-o", br, "-j", "DROP"}, v6},
		)
	}
	rs = append(rs,
		rule{"filter", chainFerry, []string{"-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}, v6},
		rule{"filter", chainFerry, []string{"-i", br, "-j", "ACCEPT"}, v6},
	)
	if !v6 {
		rs = append(rs, rule{"nat", chainPostrouting, []string{"-s", "127.0.0.0/8", "-o", br, "-j", "MASQUERADE"}, v6})
	}
	if n.Internal {
		rs = append(rs,
			rule{"filter", chainIsolation1, []string{"-i", br, "!", "-d", sub, "-j", "DROP"}, v6},
			rule{"filter", chainIsolation1, []string{"-o", br, "!", "-s", sub, "-j", "DROP"}, v6},
		)
	} else if !n.NoMasquerade {
		rs = append(rs, rule{"nat", chainPostrouting, []string{"-s", sub, "!", "-o", br, "-j", "MASQUERADE"}, v6})
	}
	return rs
}

// portRules are the rules publishing p of attachment a on n: DNAT from
// the host's addresses (PREROUTING for other hosts, OUTPUT for the host
// itself), MASQUERADE of the network's own sources so that a namespace can
// reach a published port of its network (hairpin), and a FORWARD accept.
// A port published on no address in particular is published on both
// families when the attachment has an IPv6 address, on an IPv6 address
// in ip6tables only.
func portRules(n *Network, a *Attachment, p PublishedPort) []rule {
	var rs []rule
	if !p.HostIP.IsValid() || p.HostIP.Is4() {
		rs = append(rs, familyPortRules(n.Bridge, n.Subnet, a.IP, p, false)...)
	}
	if a.IP6.IsValid() && (!p.HostIP.IsValid() || p.HostIP.Is6()) {
		rs = append(rs, familyPortRules(n.Bridge, n.Subnet6, a.IP6, p, true)...)
	}
	return rs
}

func familyPortRules(br string, sub netip.Prefix, to netip.Addr, p PublishedPort, v6 bool) []rule {
	proto := string(p.Proto)
	guest := strconv.Itoa(int(p.GuestPort))
	dnat := []string{"-p", proto}
	switch {
	case p.HostIP.IsValid() && !p.HostIP.IsUnspecified():
		dnat = append(dnat, "-d", netip.PrefixFrom(p.HostIP, p.HostIP.BitLen()).String())
	case v6:
		// ::1 cannot be routed out of the host: leave it alone rather
		// than DNAT it into a black hole.
		dnat = append(dnat, "!", "-d", "::1/128")
	}
	dnat = append(dnat, "--dport", strconv.Itoa(int(p.HostPort)), "-j", "DNAT", "--to-destination", netip.AddrPortFrom(to, p.GuestPort).String())
	ip := netip.PrefixFrom(to, to.BitLen()).String()
	return []rule{
		{"nat", chainFerry, dnat, v6},
		// Only DNATed flows: with br_netfilter, a neighbour's direct
		// connection passes here too, and keeps its source.
		{"nat", chainPostrouting, []string{"-s", sub.String(), "-d", ip, "-p", proto, "--dport", guest, "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"}, v6},
		{"filter", chainFerry, []string{"-d", ip, "!", "-i", br, "-o", br, "-p", proto, "--dport", guest, "-j", "ACCEPT"}, v6},
	}
}
