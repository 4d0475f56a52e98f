// Command ferry gives a network namespace a network without root: a TAP
// device inside the namespace attached to gVisor's userspace TCP/IP stack,
// NATed through ordinary host sockets.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferrynet/ferry/nsenter"
	"github.com/ferrynet/ferry/spawn"
)

func main() {
	nsenter.MaybeRunHelper()
	spawn.MaybeRunInit()
	if isCNIPlugin() {
		os.Exit(runCNI())
	}
	if filepath.Base(os.Args[0]) == "slirp4netns" {
		os.Exit(runSlirp4netns(context.Background(), os.Args[0], os.Args[1:], os.Stdout, os.Stderr))
	}
	maybeServePprof()
	root := newRootCommand()
	if c, _, err := root.Find(os.Args[1:]); err == nil && c != root {
		// Cobra would build its "completion" command (four long help
		// texts) at every run; one of ferry's own commands, run by a
		// container runtime or re-executed into the sandbox, has no use
		// for it, and its allocations are page faults on the way to the
		// ready signal. "ferry completion" and "ferry --help" still
		// have it.
		root.CompletionOptions.DisableDefaultCmd = true
	}
	if err := root.Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintf(os.Stderr, "ferry: %v\n", err)
		os.Exit(1)
	}
}

// envPprof, when set to a loopback address, serves Go's profiles there: for
// profiling ferry under load (make bench), in a build with the ferry_pprof
// tag only.
const envPprof = "FERRY_DEBUG_PPROF"

// exitError ends ferry with a status code and no further message.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }
