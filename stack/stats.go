package stack

import (
	"sync"
	"sync/atomic"
	"time"
)

// Drop causes counted in Stats.
const (
	DropTCPLimit = "tcp-flow-limit" // a new TCP flow over MaxTCPFlows
	DropUDPLimit = "udp-flow-limit" // a new UDP flow over MaxUDPFlows
	// DropUDPUnanswered: a new UDP flow over MaxUnansweredUDP.
	DropUDPUnanswered = "udp-unanswered-limit"
	DropDenied        = "denied"      // a destination fenced off (--deny, --deny-host, metadata)
	DropDial          = "dial-failed" // the host dial failed for another reason
	// The host dial's common failures, counted apart: a guest connection
	// refused for each of them gets a RST.
	DropDialRefused     = "dial-refused"         // nothing listens at the destination (ECONNREFUSED)
	DropDialTimeout     = "dial-timeout"         // the destination did not answer in time
	DropDialUnreachable = "dial-unreachable"     // no route, host or network unreachable
	DropDialNoPort      = "dial-no-local-port"   // the host is out of local ports (EADDRNOTAVAIL)
	DropHandshake       = "tcp-handshake-failed" // the guest's handshake with the stack did not complete
	DropNoDestination   = "no-destination"       // an address of the virtual network ferry never dials
	DropStackReset      = "tcp-reset-by-stack"   // RSTs gVisor sent on its own, not for a refusal above
	DropPanic           = "panic"                // a flow ended by a recovered panic
	DropLoopback        = "host-loopback"        // the gateway, with --disable-host-loopback
	DropSYNFlood        = "syn-in-flight"        // SYNs over the in-flight limit (counted by gVisor)
	logEvery            = 10 * time.Second       // how often a limit may be logged
)

// Stats is a snapshot of what the stack has carried.
type Stats struct {
	TCPFlows  int64            `json:"tcp_flows"`
	UDPFlows  int64            `json:"udp_flows"`
	ICMPFlows int64            `json:"icmp_flows"`
	BytesOut  uint64           `json:"bytes_out"` // guest to the world
	BytesIn   uint64           `json:"bytes_in"`  // the world to the guest
	Drops     map[string]int64 `json:"drops"`
}

// counters are the live values behind Stats.
type counters struct {
	tcpFlows, udpFlows, icmpFlows atomic.Int64
	udpUnanswered                 atomic.Int64 // UDP flows not yet answered
	tcpDialing                    atomic.Int64 // guest connections still dialing
	started                       atomic.Int64 // flows ever opened
	bytesOut, bytesIn             atomic.Uint64
	mu                            sync.Mutex
	drops                         map[string]int64
	refusals                      atomic.Int64 // RSTs handleTCP asked for
	lastLog                       map[string]time.Time
}

// drop counts one drop and reports whether it is time to log one of its
// cause again.
func (c *counters) drop(cause string) (log bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.drops == nil {
		c.drops, c.lastLog = map[string]int64{}, map[string]time.Time{}
	}
	c.drops[cause]++
	if now := time.Now(); now.Sub(c.lastLog[cause]) >= logEvery {
		c.lastLog[cause] = now
		return true
	}
	return false
}

// Stats returns a snapshot of the stack's counters.
func (st *Stack) Stats() Stats {
	c := &st.counters
	s := Stats{
		TCPFlows:  c.tcpFlows.Load(),
		UDPFlows:  c.udpFlows.Load(),
		ICMPFlows: c.icmpFlows.Load(),
		BytesOut:  c.bytesOut.Load(),
		BytesIn:   c.bytesIn.Load(),
		Drops:     map[string]int64{},
	}
	c.mu.Lock()
	for k, v := range c.drops {
		s.Drops[k] = v
	}
	c.mu.Unlock()
	tcp := st.s.Stats().TCP
	if n := tcp.ForwardMaxInFlightDrop.Value(); n > 0 {
		s.Drops[DropSYNFlood] += int64(n) // with those shed before the stack
	}
	// Every RST that is not one of ferry's refusals: the guest resetting
	// or aborting flows, segments for no connection (e.g. one arriving as
	// a TIME-WAIT endpoint goes away).
	if n := int64(tcp.ResetsSent.Value()) - c.refusals.Load(); n > 0 {
		s.Drops[DropStackReset] = n
	}
	return s
}
