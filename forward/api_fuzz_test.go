package forward_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/ferrynet/ferry/forward"
)

// bookPublisher is a Publisher that only keeps books: the fuzz target
// exercises the protocol, and must not bind real ports.
type bookPublisher struct {
	mu     sync.Mutex
	nextID int
	fwds   []forward.Forward
}

func (p *bookPublisher) Add(_ context.Context, s forward.Spec) ([]forward.Forward, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nextID++
	f := forward.Forward{ID: p.nextID, Proto: s.Proto, HostAddr: s.HostIP, HostPort: s.HostPort, GuestAddr: s.GuestAddr, GuestPort: s.GuestPort}
	p.fwds = append(p.fwds, f)
	return []forward.Forward{f}, nil
}

func (p *bookPublisher) List() []forward.Forward {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]forward.Forward(nil), p.fwds...)
}

func (p *bookPublisher) Remove(id int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, f := range p.fwds {
		if f.ID == id {
			p.fwds = append(p.fwds[:i], p.fwds[i+1:]...)
			return nil
		}
	}
	return forward.ErrNotFound{ID: id}
}

func (p *bookPublisher) Close() error { return nil }

func (p *bookPublisher) Stats() forward.Stats { return forward.Stats{} }

// FuzzAPIHandle feeds arbitrary requests to the API handler: it must never
// panic, and every reply is one JSON object that fits podman's 2048-byte
// read, either an error in slirp4netns's shape or a success.
func FuzzAPIHandle(f *testing.F) {
	for _, s := range []string{
		`{"execute":"list_hostfwd"}`,
		`{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_port":80}}`,
		`{"execute":"add_hostfwd","arguments":{"proto":"udp","host_port":53,"guest_addr":"10.0.2.100","guest_port":53}}`,
		`{"execute":"remove_hostfwd","arguments":{"id":1}}`,
		`{"execute":"stats"}`,
		`{"execute":`, `[]`, "\x00{}", strings.Repeat("x", 5000),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, req []byte) {
		api := forward.NewAPI(&bookPublisher{}, netip.MustParseAddr("10.0.2.100"), nil)
		reply := api.Handle(context.Background(), req)
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(reply, &obj); err != nil {
			t.Fatalf("reply to %q is not a JSON object: %q", req, reply)
		}
		if len(reply) > 2048 && obj["entries"] == nil {
			t.Fatalf("reply of %d bytes does not fit podman's read", len(reply))
		}
		if e, ok := obj["error"]; ok && !strings.Contains(string(e), `"desc":"bad request: `) {
			t.Fatalf("error reply not in slirp4netns's shape: %s", reply)
		}
	})
}
