package integration

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ferrynet/ferry/integration/nstest"
)

// Names the test upstream knows; any other is NXDOMAIN.
const (
	dnsName    = "a.ferry.test."
	dnsBigName = "big.ferry.test."
	dnsA       = "198.51.100.7"
	dnsAAAA    = "2001:db8::7"
	dnsBigN    = 200 // A records in the large answer: far more than fits 1232 bytes
)

// upstream is a DNS server that records the IDs of the queries it gets.
type upstream struct {
	mu  sync.Mutex
	ids map[string][]uint16 // "udp"/"tcp" -> IDs seen
}

func (u *upstream) seen(proto string, id uint16) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Contains(u.ids[proto], id)
}

func (u *upstream) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	proto := w.RemoteAddr().Network()
	u.mu.Lock()
	u.ids[proto] = append(u.ids[proto], q.Id)
	u.mu.Unlock()

	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	if len(q.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	qn := q.Question[0]
	hdr := dns.RR_Header{Name: qn.Name, Class: dns.ClassINET, Rrtype: qn.Qtype, Ttl: 60}
	switch {
	case strings.EqualFold(qn.Name, dnsName) && qn.Qtype == dns.TypeA:
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.ParseIP(dnsA)})
	case strings.EqualFold(qn.Name, dnsName) && qn.Qtype == dns.TypeAAAA:
		m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.ParseIP(dnsAAAA)})
	case strings.EqualFold(qn.Name, dnsBigName) && qn.Qtype == dns.TypeA:
		for i := range dnsBigN {
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(198, 51, 100, byte(i))})
		}
	case strings.EqualFold(qn.Name, dnsName), strings.EqualFold(qn.Name, dnsBigName):
		// The name exists without records of this type: NOERROR, no answer.
	default:
		m.Rcode = dns.RcodeNameError
	}
	if proto == "udp" {
		size := dns.MinMsgSize
		if opt := q.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
			m.SetEdns0(opt.UDPSize(), false)
		}
		m.Truncate(size) // sets TC when records had to go, as real servers do
	}
	w.WriteMsg(m)
}

// dnsWorld runs the upstream on the host's loopback and ferry forwarding to
// it.
func dnsWorld(t *testing.T, flags ...string) (*world, *upstream) {
	w := newWorld(t, 3*time.Minute)
	up := &upstream{ids: map[string][]uint16{}}
	port, err := nstest.ServeDNS(t, w.host.Path, "127.0.0.1", up)
	if err != nil {
		t.Fatal(err)
	}
	w.attach(t, append([]string{"-c", "--dns-upstream", fmt.Sprintf("127.0.0.1:%d", port)}, flags...)...)
	return w, up
}

var digStatus = regexp.MustCompile(`status: ([A-Z]+)`)
var digFlags = regexp.MustCompile(`;; flags: ([a-z ]*);`)
var digAnswers = regexp.MustCompile(`ANSWER: (\d+)`)

// dig runs dig @10.0.2.3 with args in the guest and returns its output,
// its status and its header flags.
func dig(t *testing.T, w *world, args ...string) (out, status string, flags []string) {
	t.Helper()
	res := w.mustInGuest(t, append([]string{"dig", "@10.0.2.3", "+time=3", "+tries=1"}, args...)...)
	out = res.Stdout
	if m := digStatus.FindStringSubmatch(out); m != nil {
		status = m[1]
	}
	if m := digFlags.FindStringSubmatch(out); m != nil {
		flags = strings.Fields(m[1])
	}
	return out, status, flags
}

func TestDNS(t *testing.T) {
	w, up := dnsWorld(t)
	for _, transport := range []string{"+notcp", "+tcp"} {
		t.Run(strings.TrimPrefix(transport, "+"), func(t *testing.T) {
			for _, c := range []struct {
				name, qtype, status, want string
			}{
				{dnsName, "A", "NOERROR", dnsA},
				{dnsName, "AAAA", "NOERROR", dnsAAAA},
				{"nowhere.ferry.test.", "A", "NXDOMAIN", ""},
			} {
				out, status, _ := dig(t, w, transport, c.name, c.qtype)
				if status != c.status {
					t.Errorf("%s %s: status %q, want %q\n%s", c.name, c.qtype, status, c.status, out)
				}
				if c.want != "" && !strings.Contains(out, c.want) {
					t.Errorf("%s %s: answer lacks %s\n%s", c.name, c.qtype, c.want, out)
				}
			}
		})
	}
	t.Run("large/udp", func(t *testing.T) {
		out, status, flags := dig(t, w, "+ignore", "+notcp", dnsBigName, "A")
		if status != "NOERROR" || !slices.Contains(flags, "tc") {
			t.Errorf("large answer over UDP: status %q flags %v, want NOERROR with tc\n%s", status, flags, out)
		}
	})
	t.Run("large/tcp", func(t *testing.T) {
		out, status, flags := dig(t, w, "+tcp", dnsBigName, "A")
		m := digAnswers.FindStringSubmatch(out)
		if status != "NOERROR" || slices.Contains(flags, "tc") || m == nil || m[1] != fmt.Sprint(dnsBigN) {
			t.Errorf("large answer over TCP: status %q flags %v, want NOERROR, no tc, %d answers\n%s", status, flags, dnsBigN, out)
		}
	})
	t.Run("ids", func(t *testing.T) {
		for i, proto := range []string{"udp", "tcp"} {
			id := uint16(0x4a00 + i)
			conn, err := nstest.DialIn(w.ctx, w.guest.NetnsPath, proto, "10.0.2.3:53")
			if err != nil {
				t.Fatal(err)
			}
			q := new(dns.Msg).SetQuestion(dnsName, dns.TypeA)
			q.Id = id
			cl := &dns.Client{Net: proto, Timeout: 5 * time.Second}
			r, _, err := cl.ExchangeWithConn(q, &dns.Conn{Conn: conn})
			conn.Close()
			if err != nil {
				t.Fatalf("%s query: %v", proto, err)
			}
			if r.Id != id {
				t.Errorf("%s: reply ID %#x, want %#x", proto, r.Id, id)
			}
			if a, ok := firstA(r); !ok || a != dnsA {
				t.Errorf("%s: answer %v, want %s", proto, r.Answer, dnsA)
			}
			if !up.seen(proto, id) {
				up.mu.Lock()
				t.Errorf("%s: upstream never saw ID %#x; it saw %v", proto, id, up.ids[proto])
				up.mu.Unlock()
			}
		}
	})
}

// firstA returns the address of r's first answer if that is an A record.
func firstA(r *dns.Msg) (string, bool) {
	if len(r.Answer) == 0 {
		return "", false
	}
	a, ok := r.Answer[0].(*dns.A)
	if !ok {
		return "", false
	}
	return a.A.String(), true
}

// TestDNSDisabled checks that --disable-dns leaves 10.0.2.3 silent.
func TestDNSDisabled(t *testing.T) {
	w, up := dnsWorld(t, "--disable-dns")
	res := w.inGuest(t, "dig", "@10.0.2.3", "+time=1", "+tries=1", "+notcp", dnsName, "A")
	if res.ExitCode == 0 && digStatus.MatchString(res.Stdout) {
		t.Errorf("got a DNS answer despite --disable-dns:\n%s", res.Stdout)
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	if n := len(up.ids["udp"]) + len(up.ids["tcp"]); n > 0 {
		t.Errorf("upstream got %d queries despite --disable-dns", n)
	}
}
