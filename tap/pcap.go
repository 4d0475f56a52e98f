package tap

import (
	"fmt"
	"io"

	"gvisor.dev/gvisor/pkg/tcpip/link/sniffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// pcapSnapLen captures whole frames, GSO segments included.
const pcapSnapLen = 65536

// WithPcap wraps ep so that every frame it carries, both ways, is written
// to w in pcap format: a link endpoint decorator (gVisor's sniffer), so
// the hot path has no branch for it when capture is off.
func WithPcap(ep stack.LinkEndpoint, w io.Writer) (stack.LinkEndpoint, error) {
	// gVisor's sniffer also logs every packet as text unless told not to.
	sniffer.LogPackets.Store(0)
	s, err := sniffer.NewWithWriter(ep, w, pcapSnapLen)
	if err != nil {
		return nil, fmt.Errorf("--pcap: %w", err)
	}
	return s, nil
}
