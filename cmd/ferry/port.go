package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/ferrynet/ferry/forward"
	"github.com/ferrynet/ferry/portspec"
)

func newPortCommand() *cobra.Command {
	var api string
	cmd := &cobra.Command{
		Use:   "port add|ls|rm --api SOCK ...",
		Short: "Publish, list and withdraw ports of a running ferry (through its --api-socket)",
		Long: `Talk to the API socket of a running 'ferry attach --api-socket SOCK' or
'ferry run --api-socket SOCK' (or slirp4netns -a SOCK) to publish ports at run
time, list them as 'docker port' does, and withdraw them by ID.`,
		Example: `  ferry port add --api /run/user/1000/ferry.sock 127.0.0.1:8080:80
  ferry port ls --api /run/user/1000/ferry.sock
  ferry port rm --api /run/user/1000/ferry.sock 1`,
	}
	cmd.PersistentFlags().StringVar(&api, "api", "", "the API socket of the running ferry (required)")
	cmd.MarkPersistentFlagRequired("api")
	client := func() forward.Client { return forward.Client{Path: api} }

	add := &cobra.Command{
		Use:   "add --api SOCK SPEC",
		Short: "Publish a port: SPEC as in docker run -p, with a host port; prints the new IDs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return portAdd(cmd, client(), args[0])
		},
	}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls --api SOCK [--json]",
		Short: "List published ports as docker port does (80/tcp -> 127.0.0.1:8080)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			es, err := client().List(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if es == nil {
					es = []forward.Entry{}
				}
				b, _ := json.Marshal(es)
				fmt.Fprintln(out, string(b))
				return nil
			}
			for _, e := range es {
				f, err := e.Forward()
				if err != nil {
					return err
				}
				fmt.Fprintln(out, f)
			}
			return nil
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print the API's entries as a JSON array, with IDs")
	rm := &cobra.Command{
		Use:   "rm --api SOCK ID...",
		Short: "Withdraw published ports by ID (see ferry port ls --json)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, a := range args {
				id, err := strconv.Atoi(a)
				if err != nil || id <= 0 {
					return fmt.Errorf("invalid ID %q: want a positive number from 'ferry port ls --json'", a)
				}
				if err := client().Remove(cmd.Context(), id); err != nil {
					var ae *forward.APIError
					if errors.As(err, &ae) && ae.Desc == "bad request: remove_hostfwd: bad arguments.id" {
						return fmt.Errorf("no published port has ID %d (see 'ferry port ls --json')", id)
					}
					return err
				}
			}
			return nil
		},
	}
	cmd.AddCommand(add, ls, rm)
	return cmd
}

// portAdd publishes spec through the API: one call per port and family (a
// spec without an address publishes on 0.0.0.0 and ::), a host range trying
// each port in turn. On failure, what it added is withdrawn again.
func portAdd(cmd *cobra.Command, c forward.Client, spec string) error {
	ctx := cmd.Context()
	ms, err := portspec.Parse(spec)
	if err != nil {
		return err
	}
	var added []int
	undo := func() {
		for _, id := range added {
			c.Remove(ctx, id)
		}
	}
	for _, m := range ms {
		if m.HostPort == 0 {
			undo()
			return fmt.Errorf("%s: ferry port add needs a host port (the API cannot pick one), e.g. 8080:%d", spec, m.GuestPort)
		}
		hosts := []netip.Addr{m.HostIP}
		if !m.HostIP.IsValid() {
			hosts = []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}
		}
		var lastErr error
		done := false
		for p := int(m.HostPort); p <= int(max(m.HostPort, m.HostPortEnd)) && !done; p++ {
			var ids []int
			lastErr = nil
			for _, h := range hosts {
				id, err := c.Add(ctx, forward.AddArgs{Proto: string(m.Proto), HostAddr: h.String(), HostPort: p, GuestPort: int(m.GuestPort)})
				if err != nil {
					lastErr = fmt.Errorf("publish %s:%d -> %d/%s: %w (ferry's log says why)", h, p, m.GuestPort, m.Proto, err)
					break
				}
				ids = append(ids, id)
			}
			if lastErr != nil {
				for _, id := range ids {
					c.Remove(ctx, id)
				}
				var ae *forward.APIError
				if !errors.As(lastErr, &ae) {
					break // not a port in use: the next port will not help
				}
				continue
			}
			added = append(added, ids...)
			done = true
		}
		if !done {
			undo()
			return lastErr
		}
	}
	for _, id := range added {
		fmt.Fprintln(cmd.OutOrStdout(), id)
	}
	return nil
}
