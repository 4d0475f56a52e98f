// Package integration holds ferry's end-to-end tests. They run as root,
// build private networks out of namespaces with package nstest, and run
// ferry as an unprivileged user exactly as a rootless container engine
// would. Without root every test skips and says so.
package integration

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// TestMain builds ferry once for all tests (unless FERRY_BIN names one) and
// hands its path to them through FERRY_BIN.
func TestMain(m *testing.M) {
	if os.Geteuid() != 0 || os.Getenv(nstest.EnvFerryBin) != "" {
		os.Exit(m.Run())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	bin, cleanup, err := nstest.BuildFerry(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		os.Exit(1)
	}
	os.Setenv(nstest.EnvFerryBin, bin)
	code := m.Run()
	cleanup()
	os.Exit(code)
}
