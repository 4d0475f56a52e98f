//go:build !amd64 && !arm64

package sandbox

import (
	"fmt"
	"runtime"
)

// InstallSeccomp reports that the filter is written for amd64 and arm64
// only.
func InstallSeccomp() error {
	return fmt.Errorf("seccomp: not supported on %s", runtime.GOARCH)
}
