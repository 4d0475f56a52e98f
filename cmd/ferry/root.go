package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// globalFlags are the flags every command takes.
type globalFlags struct {
	logLevel string
}

func newRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "ferry",
		Short: "Rootless container networking: a userspace TCP/IP stack for network namespaces",
		Long: `ferry gives a network namespace a network without root. It creates a TAP
device inside the namespace and attaches it to a userspace TCP/IP stack
(gVisor's netstack) running in this process on the host: what the namespace
sends out is NATed through ordinary host sockets.

The namespace sees the network 10.0.2.0/24: its own address 10.0.2.100, the
gateway 10.0.2.2 (which reaches the host's 127.0.0.1) and a DNS forwarder at
10.0.2.3, as with slirp4netns.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error (logs go to stderr)")
	root.AddCommand(newAttachCommand(g), newRunCommand(g), newPortCommand(), newNetCommand(), newSlirp4netnsCommand(), newStatsCommand())
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())
	})
	return root
}

// logger returns the stderr logger for the chosen level.
func (g *globalFlags) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(strings.ToUpper(g.logLevel))); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: use debug, info, warn or error", g.logLevel)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})), nil
}
