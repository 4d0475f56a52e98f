package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Client speaks the API socket's protocol to a running ferry (or
// slirp4netns) at Path.
type Client struct {
	Path string
}

// APIError is an error reply: Desc is its "desc", e.g. "bad request:
// add_hostfwd: slirp_add_hostfwd failed".
type APIError struct{ Desc string }

func (e *APIError) Error() string { return e.Desc }

// Call sends one request and returns the raw reply.
func (c Client) Call(ctx context.Context, req []byte) ([]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Path)
	if err != nil {
		return nil, fmt.Errorf("API socket %s: %w (is ferry running with --api-socket %s?)", c.Path, err, c.Path)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if _, err := conn.Write(req); err != nil {
		return nil, fmt.Errorf("API socket %s: send: %w", c.Path, err)
	}
	conn.(*net.UnixConn).CloseWrite()
	reply, err := io.ReadAll(conn)
	if err != nil {
		return nil, fmt.Errorf("API socket %s: read reply: %w", c.Path, err)
	}
	return reply, nil
}

// call sends req and decodes a reply into out; error replies become
// *APIError.
func (c Client) call(ctx context.Context, req, out any) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	reply, err := c.Call(ctx, b)
	if err != nil {
		return err
	}
	var e struct {
		Error *struct {
			Desc string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(reply, &e); err != nil {
		return fmt.Errorf("API socket %s: bad reply %q: %w", c.Path, reply, err)
	}
	if e.Error != nil {
		return &APIError{e.Error.Desc}
	}
	if err := json.Unmarshal(reply, out); err != nil {
		return fmt.Errorf("API socket %s: bad reply %q: %w", c.Path, reply, err)
	}
	return nil
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
}

// AddArgs are add_hostfwd's arguments.
type AddArgs struct {
	Proto     string `json:"proto"`
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestAddr string `json:"guest_addr,omitempty"`
	GuestPort int    `json:"guest_port"`
}

// Add publishes a port and returns its ID.
func (c Client) Add(ctx context.Context, args AddArgs) (int, error) {
	var r struct {
		Return *struct {
			ID int `json:"id"`
		} `json:"return"`
	}
	if err := c.call(ctx, request{"add_hostfwd", args}, &r); err != nil {
		return 0, err
	}
	if r.Return == nil {
		return 0, errors.New("API socket: reply without return")
	}
	return r.Return.ID, nil
}

// List returns the published ports.
func (c Client) List(ctx context.Context) ([]Entry, error) {
	var r struct {
		Entries []Entry `json:"entries"`
	}
	if err := c.call(ctx, request{Execute: "list_hostfwd"}, &r); err != nil {
		return nil, err
	}
	return r.Entries, nil
}

// Remove withdraws the port with the given ID.
func (c Client) Remove(ctx context.Context, id int) error {
	var r map[string]any
	return c.call(ctx, request{"remove_hostfwd", map[string]int{"id": id}}, &r)
}

// Stats returns ferry's counters (the "stats" command) as raw JSON.
func (c Client) Stats(ctx context.Context) (json.RawMessage, error) {
	var out struct {
		Return json.RawMessage `json:"return"`
	}
	if err := c.call(ctx, request{Execute: "stats"}, &out); err != nil {
		return nil, err
	}
	return out.Return, nil
}
