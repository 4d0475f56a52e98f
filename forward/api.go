package forward

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferrynet/ferry/portspec"
)

// The API socket speaks slirp4netns's protocol byte for byte: one JSON
// request per connection, read with a single read of at most apiBufSize
// bytes, one JSON reply in one write, then the connection is closed.

// apiBufSize is slirp4netns's request buffer: a request that fills it is
// "too large".
const apiBufSize = 4096

// apiTimeout bounds how long one API client may hold its connection.
const apiTimeout = 10 * time.Second

// Entry is one forward as the API lists it, and the arguments of
// add_hostfwd.
type Entry struct {
	ID        int    `json:"id"`
	Proto     string `json:"proto"`
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestAddr string `json:"guest_addr"`
	GuestPort int    `json:"guest_port"`
}

// EntryOf is f as the API lists it.
func EntryOf(f Forward) Entry {
	return Entry{ID: f.ID, Proto: string(f.Proto), HostAddr: f.HostAddr.String(), HostPort: int(f.HostPort),
		GuestAddr: f.GuestAddr.String(), GuestPort: int(f.GuestPort)}
}

// Forward is e as a Forward; it fails on addresses or ports that do not
// parse.
func (e Entry) Forward() (Forward, error) {
	h, err1 := netip.ParseAddr(e.HostAddr)
	g, err2 := netip.ParseAddr(e.GuestAddr)
	if err := errors.Join(err1, err2); err != nil || e.HostPort < 0 || e.HostPort > 65535 || e.GuestPort < 0 || e.GuestPort > 65535 {
		return Forward{}, fmt.Errorf("bad entry %+v", e)
	}
	return Forward{ID: e.ID, Proto: portspec.Proto(e.Proto), HostAddr: h, HostPort: uint16(e.HostPort), GuestAddr: g, GuestPort: uint16(e.GuestPort)}, nil
}

// API serves a Publisher on a UNIX socket.
type API struct {
	pub   Publisher
	guest netip.Addr
	log   *slog.Logger
	l     *net.UnixListener
	wg    sync.WaitGroup
	stats atomic.Pointer[func() any]
}

// SetStats makes the API answer {"execute":"stats"} (ferry's own command,
// not slirp4netns's) with {"return": f()}.
func (a *API) SetStats(f func() any) { a.stats.Store(&f) }

// NewAPI returns the protocol handler for pub, without a socket; guest is
// the address an empty guest_addr means.
func NewAPI(pub Publisher, guest netip.Addr, log *slog.Logger) *API {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &API{pub: pub, guest: guest, log: log}
}

// ListenAPI serves pub on a UNIX stream socket at path (mode 0600; a file
// already there is removed first) until Close, which removes the socket.
func ListenAPI(path string, pub Publisher, guest netip.Addr, log *slog.Logger) (*API, error) {
	a := NewAPI(pub, guest, log)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("API socket %s: remove the old file: %w", path, err)
	}
	old := syscall.Umask(0o177)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("API socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("API socket: %w", err)
	}
	a.l = l
	a.wg.Add(1)
	go a.serve()
	return a, nil
}

func (a *API) serve() {
	defer a.wg.Done()
	for {
		c, err := a.l.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			a.log.Warn("API socket: accept", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.serveConn(c)
		}()
	}
}

// serveConn answers one request: a single read, a single write.
func (a *API) serveConn(c *net.UnixConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(apiTimeout))
	buf := make([]byte, apiBufSize)
	n, err := c.Read(buf)
	if err != nil && n == 0 && !errors.Is(err, io.EOF) {
		a.log.Debug("API socket: read", "err", err)
		return
	}
	reply := a.Handle(context.Background(), buf[:n])
	if _, err := c.Write(reply); err != nil {
		a.log.Debug("API socket: write", "err", err)
		return
	}
	// Closing with unread bytes would reset the connection and could drop
	// the reply on the client's side: drain what is left, briefly.
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(time.Second))
	io.CopyN(io.Discard, c, 1<<20)
}

// Close stops serving and removes the socket file.
func (a *API) Close() error {
	var err error
	if a.l != nil {
		err = a.l.Close()
	}
	a.wg.Wait()
	return err
}

func apiError(desc string) []byte {
	return []byte(`{"error":{"desc":"bad request: ` + desc + `"}}`)
}

// Handle answers one request as slirp4netns would. req is what one read
// returned: exactly apiBufSize bytes means the request was too large.
func (a *API) Handle(ctx context.Context, req []byte) []byte {
	if len(req) >= apiBufSize {
		a.log.Warn("API socket: too large message", "bytes", len(req))
		return apiError("too large message")
	}
	if i := bytes.IndexByte(req, 0); i >= 0 {
		req = req[:i] // slirp4netns reads the request as a C string
	}
	a.log.Debug("API socket: request", "req", string(req))
	var v any
	if err := json.Unmarshal(req, &v); err != nil {
		return apiError("cannot parse JSON")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return apiError("json_object() failed")
	}
	execute, ok := obj["execute"].(string)
	if !ok {
		return apiError("no execute found")
	}
	switch execute {
	case "add_hostfwd":
		return a.add(ctx, obj)
	case "list_hostfwd":
		return a.list()
	case "remove_hostfwd":
		return a.remove(obj)
	case "stats":
		if f := a.stats.Load(); f != nil {
			b, err := json.Marshal(map[string]any{"return": (*f)()})
			if err == nil {
				return b
			}
		}
	}
	return apiError("unknown execute")
}

// argString is arguments.NAME when it is a string, else "".
func argString(obj map[string]any, name string) string {
	args, _ := obj["arguments"].(map[string]any)
	s, _ := args[name].(string)
	return s
}

// argNumber is arguments.NAME when it is a number, else 0, as parson's
// json_object_dotget_number gives it; ok is false outside 0..max.
func argNumber(obj map[string]any, name string, max float64) (int, bool) {
	args, _ := obj["arguments"].(map[string]any)
	f, _ := args[name].(float64)
	if f < 0 || f >= max+1 {
		return 0, false
	}
	return int(f), true
}

func (a *API) add(ctx context.Context, obj map[string]any) []byte {
	proto := portspec.Proto(argString(obj, "proto"))
	if proto != portspec.TCP && proto != portspec.UDP {
		return apiError("add_hostfwd: bad arguments.proto")
	}
	hostStr := argString(obj, "host_addr")
	if hostStr == "" {
		hostStr = "0.0.0.0"
	}
	host, err := netip.ParseAddr(hostStr)
	if err != nil || host.Zone() != "" {
		return apiError("add_hostfwd: bad arguments.host_addr")
	}
	hostPort, ok := argNumber(obj, "host_port", 65535)
	if !ok || hostPort == 0 {
		return apiError("add_hostfwd: bad arguments.host_port")
	}
	guest := a.guest
	if s := argString(obj, "guest_addr"); s != "" {
		guest, err = netip.ParseAddr(s)
		if err != nil || !guest.Is4() {
			return apiError("add_hostfwd: bad arguments.guest_addr")
		}
	}
	guestPort, ok := argNumber(obj, "guest_port", 65535)
	if !ok || guestPort == 0 {
		return apiError("add_hostfwd: bad arguments.guest_port")
	}
	spec := Spec{
		Mapping: portspec.Mapping{Proto: proto, HostIP: host.Unmap(), HostPort: uint16(hostPort),
			HostPortEnd: uint16(hostPort), GuestPort: uint16(guestPort)},
		GuestAddr: guest,
	}
	fwds, err := a.pub.Add(ctx, spec)
	if err != nil || len(fwds) != 1 {
		a.log.Warn("API socket: add_hostfwd failed", "spec", spec.Mapping.String(), "err", err)
		return apiError("add_hostfwd: slirp_add_hostfwd failed")
	}
	return []byte(`{"return":{"id":` + strconv.Itoa(fwds[0].ID) + `}}`)
}

func (a *API) list() []byte {
	entries := []Entry{}
	for _, f := range a.pub.List() {
		entries = append(entries, EntryOf(f))
	}
	b, _ := json.Marshal(struct {
		Entries []Entry `json:"entries"`
	}{entries})
	return b
}

func (a *API) remove(obj map[string]any) []byte {
	args, _ := obj["arguments"].(map[string]any)
	f, _ := args["id"].(float64)
	id := 0
	if f >= 1 && f < 1<<31 {
		id = int(f)
	}
	err := a.pub.Remove(id)
	var nf ErrNotFound
	switch {
	case errors.As(err, &nf):
		return apiError("remove_hostfwd: bad arguments.id")
	case err != nil:
		a.log.Warn("API socket: remove_hostfwd failed", "id", id, "err", err)
		return apiError("remove_hostfwd: slirp_remove_hostfwd failed")
	}
	return []byte(`{"return":{}}`)
}
