package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spf13/pflag"

	"github.com/ferrynet/ferry/forward"
	"github.com/ferrynet/ferry/portspec"
	"github.com/ferrynet/ferry/stack"
)

// publishFlags are the port publishing flags of attach and run.
type publishFlags struct {
	specs     []string
	apiSocket string
}

func (f *publishFlags) register(fl *pflag.FlagSet) {
	listVarP(fl, &f.specs, "publish", "p",
		"publish a port as docker run -p does: [[HOST_IP:][HOST_PORT]:]PORT[/tcp|/udp], ports may be ranges; no HOST_IP means 0.0.0.0 and [::] (repeatable)")
	fl.StringVarP(&f.apiSocket, "api-socket", "a", "", "serve slirp4netns's port forwarding API on this UNIX socket (mode 0600; see 'ferry port')")
}

// parse validates the specs, without side effects.
func (f *publishFlags) parse() ([]portspec.Mapping, error) {
	var out []portspec.Mapping
	for _, s := range f.specs {
		ms, err := portspec.Parse(s)
		if err != nil {
			return nil, err
		}
		out = append(out, ms...)
	}
	return out, nil
}

// publishing is the published ports and API socket of one network.
type publishing struct {
	pub forward.Publisher
	api *forward.API
}

// startPublishing publishes f's ports into n and opens the API socket.
func startPublishing(ctx context.Context, n *network, f *publishFlags, log *slog.Logger) (*publishing, error) {
	ms, err := f.parse()
	if err != nil {
		return nil, err
	}
	log = log.With("component", "publish")
	p := &publishing{pub: forward.NewUserspace(forward.StackGuest(n.stack), forward.Options{Logger: log})}
	if n.dialer != nil { // --port-driver=kernel
		p.pub = forward.NewKernel(n.dialer, n.stack.Network().Guest, forward.Options{Logger: log})
	}
	for _, m := range ms {
		if _, err := p.pub.Add(ctx, forward.Spec{Mapping: m}); err != nil {
			p.Close()
			return nil, fmt.Errorf("-p %s: %w", m, err)
		}
	}
	if f.apiSocket != "" {
		p.api, err = forward.ListenAPI(f.apiSocket, p.pub, n.stack.Network().Guest, log)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.api.SetStats(p.stats(n))
	}
	return p, nil
}

// Close closes the API socket and withdraws every port.
func (p *publishing) Close() {
	if p.api != nil {
		p.api.Close()
	}
	p.pub.Close()
}

// stats returns what the API's stats command answers: the stack's counters
// (flows the guest opened) with the published ports' under "published".
func (p *publishing) stats(n *network) func() any {
	return func() any {
		return struct {
			stack.Stats
			Published forward.Stats `json:"published"`
		}{n.stack.Stats(), p.pub.Stats()}
	}
}
