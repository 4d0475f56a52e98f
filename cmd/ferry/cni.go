package main

import (
	"os"

	"github.com/ferrynet/ferry/cni"
)

// isCNIPlugin reports whether a container runtime runs ferry as a CNI
// plugin: CNI_COMMAND set and no arguments (subcommands that ferry starts
// with the environment inherited, such as its DNS responder, have some).
func isCNIPlugin() bool {
	return os.Getenv("CNI_COMMAND") != "" && len(os.Args) == 1
}

// runCNI runs ferry as a CNI plugin (see package cni) and returns its exit
// status.
func runCNI() int { return cni.Main() }
