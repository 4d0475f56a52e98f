package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// A guest spraying datagrams at destinations that never answer fills
// --max-udp-unanswered, not the flow table: new flows over it are refused,
// and a flow that has been answered goes on undisturbed.
func TestUDPUnansweredLimit(t *testing.T) {
	w := newWorld(t, time.Minute)
	pc := echoUDP(t, w.host.Path, "127.0.0.1:0")
	sock := apiSocketPath(t)
	const limit = 20
	w.attach(t, "-c", "--api-socket", sock, "--max-udp-unanswered", fmt.Sprint(limit))

	echo, err := nstest.DialIn(w.ctx, w.guest.NetnsPath, "udp", fmt.Sprintf("10.0.2.2:%d", pc.LocalAddr().(*net.UDPAddr).Port))
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	buf := make([]byte, 64)
	retries := 0
	if err := echoOnce(echo, []byte("answered-0"), buf, &retries); err != nil {
		t.Fatalf("echo before the spray: %v", err)
	}

	// Ports of the host's loopback where nothing listens: the host answers
	// with ICMP port unreachable, never with a datagram.
	dead, err := nstest.ListenPacketIn(w.host.Path, "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := dead.LocalAddr().(*net.UDPAddr).Port
	dead.Close()
	const sprayed = 2 * limit
	echoPort := pc.LocalAddr().(*net.UDPAddr).Port
	for i := range sprayed {
		if base == echoPort {
			base++
		}
		c, err := nstest.DialIn(w.ctx, w.guest.NetnsPath, "udp", fmt.Sprintf("10.0.2.2:%d", base))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(fmt.Sprint("spray ", i)))
		c.Close()
		base = base%60000 + 1 // another port each time
	}

	var st struct {
		UDPFlows int64            `json:"udp_flows"`
		Drops    map[string]int64 `json:"drops"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := json.Unmarshal([]byte(w.ferryStats(t, sock)), &st); err != nil {
			t.Fatal(err)
		}
		if st.UDPFlows == limit+1 && st.Drops["udp-unanswered-limit"] == sprayed-limit {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v; want %d UDP flows (the answered one and %d unanswered) and %d udp-unanswered-limit drops",
				st, limit+1, limit, sprayed-limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := 1; i <= 3; i++ {
		if err := echoOnce(echo, []byte(fmt.Sprint("answered-", i)), buf, &retries); err != nil {
			t.Fatalf("the answered flow was disturbed by the limit: %v", err)
		}
	}
}
