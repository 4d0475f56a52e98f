package main

import "runtime/debug"

// version is ferry's release; the VCS revision is added when the build
// recorded one.
const version = "0.1.0"

// revision returns the VCS revision of the build, or "unknown".
func revision() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}
