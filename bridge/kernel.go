package bridge

import (
	"fmt"
	"os"
	"strconv"
)

// EnvCrashAfter, when set to N > 0, makes ferry exit with status
// CrashExitCode right after its Nth change to the kernel (a link, an
// address, a route, a sysctl, an iptables rule or chain, a DNS responder
// started or stopped). It exists so that tests can crash ferry at every
// point of an operation deterministically.
const EnvCrashAfter = "FERRY_TEST_CRASH_AFTER"

// CrashExitCode is the exit status of a crash caused by EnvCrashAfter.
const CrashExitCode = 86

// changes counts kernel changes for the crash hook.
type changes struct {
	n, crashAfter int
}

func newChanges() *changes {
	c := &changes{}
	if v := os.Getenv(EnvCrashAfter); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			c.crashAfter = n
		}
	}
	return c
}

// done records one kernel change, described by what, and exits the process
// when the crash hook says so.
func (c *changes) done(what string) {
	c.n++
	if c.crashAfter > 0 && c.n >= c.crashAfter {
		fmt.Fprintf(os.Stderr, "ferry: %s=%d: exiting after kernel change %d (%s)\n", EnvCrashAfter, c.crashAfter, c.n, what)
		os.Exit(CrashExitCode)
	}
}
