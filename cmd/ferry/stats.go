package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrynet/ferry/forward"
)

func newStatsCommand() *cobra.Command {
	var api string
	cmd := &cobra.Command{
		Use:   "stats --api SOCK",
		Short: "Print a running ferry's counters: open flows, bytes, drops by cause",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if api == "" {
				return errors.New("stats: --api SOCK is required (the --api-socket of a running ferry)")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			raw, err := forward.Client{Path: api}.Stats(ctx)
			if err != nil {
				return fmt.Errorf("stats: %w", err)
			}
			var out bytes.Buffer
			if err := json.Indent(&out, raw, "", "  "); err != nil {
				return fmt.Errorf("stats: bad reply %q: %w", raw, err)
			}
			out.WriteByte('\n')
			_, err = out.WriteTo(os.Stdout)
			return err
		},
	}
	cmd.Flags().StringVar(&api, "api", "", "the API socket of the running ferry")
	return cmd
}
