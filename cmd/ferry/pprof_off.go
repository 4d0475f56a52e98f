//go:build !ferry_pprof

package main

import (
	"log/slog"
	"os"
)

// maybeServePprof warns that envPprof has no effect: the profile server is
// built in only with the ferry_pprof build tag (make build GOTAGS=ferry_pprof),
// because net/http's package initialization costs each start of ferry about
// 4 ms, twice on the way to ready.
func maybeServePprof() {
	if os.Getenv(envPprof) != "" {
		slog.Warn(envPprof + " is ignored: this ferry was built without the ferry_pprof tag (make build GOTAGS=ferry_pprof)")
	}
}
