package bridge

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// dnsTTL is the TTL of the answers about attached namespaces: short, since
// namespaces come and go.
const dnsTTL = 10

// ServeDNS runs the DNS responder of the network whose ID is netID, as
// recorded in stateDir: it answers the names and aliases of the
// namespaces attached to that network with their addresses there and
// forwards every other question to the host's resolvers. It listens on
// the network's gateway address, port 53 (UDP and TCP), writes "1" to
// ready once listening, and returns when ctx is done or the network has
// left the state. It reads the state without taking the lock: the file is
// replaced atomically.
func ServeDNS(ctx context.Context, stateDir, netID string, ready *os.File) error {
	n, err := lookupNetwork(stateDir, netID)
	if err != nil {
		return err
	}
	if n == nil {
		return fmt.Errorf("serve-dns: network %s is not in %s", netID, stateDir)
	}
	addr := net.JoinHostPort(n.Gateway.String(), "53")
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("serve-dns: %w", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("serve-dns: %w", err)
	}
	h := &responder{stateDir: stateDir, netID: netID, self: n.Gateway, upstreams: upstreams(n.Gateway)}
	servers := []*dns.Server{
		{PacketConn: pc, Handler: h},
		{Listener: l, Handler: h, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second},
	}
	errc := make(chan error, len(servers))
	for _, s := range servers {
		go func() { errc <- s.ActivateAndServe() }()
	}
	if ready != nil {
		ready.Write([]byte("1"))
		ready.Close()
	}
	defer func() {
		for _, s := range servers {
			s.Shutdown()
		}
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("serve-dns: %w", err)
		case <-tick.C:
			if n, err := lookupNetwork(stateDir, netID); err == nil && n == nil {
				return nil // the network is gone: so is its responder
			}
		}
	}
}

// lookupNetwork reads the network with ID netID from the state, nil if
// it is not there.
func lookupNetwork(stateDir, netID string) (*Network, error) {
	st, err := loadState(stateDir)
	if err != nil {
		return nil, err
	}
	for _, n := range st.Networks {
		if n.ID == netID {
			return n, nil
		}
	}
	return nil, nil
}

// upstreams are the host's resolvers, the responder itself excepted.
func upstreams(self netip.Addr) []string {
	cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range cfg.Servers {
		if a, err := netip.ParseAddr(s); err == nil && a != self {
			out = append(out, net.JoinHostPort(s, cfg.Port))
		}
	}
	return out
}

// responder answers one network's questions.
type responder struct {
	stateDir, netID string
	self            netip.Addr
	upstreams       []string
}

func (r *responder) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) == 1 {
		if resp := r.local(req); resp != nil {
			w.WriteMsg(resp)
			return
		}
	}
	w.WriteMsg(r.forward(w, req))
}

// local answers a question about an attached namespace, nil when the
// name is not one.
func (r *responder) local(req *dns.Msg) *dns.Msg {
	q := req.Question[0]
	name := strings.ToLower(strings.TrimSuffix(q.Name, "."))
	if name == "" || q.Qclass != dns.ClassINET {
		return nil
	}
	n, err := lookupNetwork(r.stateDir, r.netID)
	if err != nil || n == nil {
		return nil
	}
	var ips, ips6 []netip.Addr
	found := false
	for _, a := range n.Attachments {
		if a.Status == Ready && answers(a, name) {
			found = true
			ips = append(ips, a.IP)
			if a.IP6.IsValid() {
				ips6 = append(ips6, a.IP6)
			}
		}
	}
	if !found {
		return nil
	}
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
		for _, ip := range ips {
			resp.Answer = append(resp.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: dnsTTL},
				A:   net.IP(ip.AsSlice()),
			})
		}
	}
	if q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY {
		for _, ip := range ips6 {
			resp.Answer = append(resp.Answer, &dns.AAAA{
				Hdr:  dns.RR_Header{Name: q.Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: dnsTTL},
				AAAA: net.IP(ip.AsSlice()),
			})
		}
	}
	return resp
}

// answers reports whether a is known by name (its name or an alias).
func answers(a *Attachment, name string) bool {
	if strings.EqualFold(a.Name, name) {
		return true
	}
	for _, al := range a.Aliases {
		if strings.EqualFold(al, name) {
			return true
		}
	}
	return false
}

// forward asks the upstream resolvers, over the transport the question
// came on, and answers SERVFAIL when none replies.
func (r *responder) forward(w dns.ResponseWriter, req *dns.Msg) *dns.Msg {
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	c := &dns.Client{Net: network, Timeout: 3 * time.Second}
	if len(r.upstreams) == 0 {
		fmt.Fprintln(os.Stderr, "serve-dns: no upstream resolver in /etc/resolv.conf")
	}
	for _, up := range r.upstreams {
		resp, _, err := c.Exchange(req, up)
		if err == nil {
			return resp
		}
		fmt.Fprintf(os.Stderr, "serve-dns: upstream %s: %v\n", up, err)
	}
	fail := new(dns.Msg)
	fail.SetRcode(req, dns.RcodeServerFailure)
	return fail
}
