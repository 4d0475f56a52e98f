package stack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

const (
	// dnsMaxMsgSize is the largest DNS message that fits in a UDP datagram
	// or a DNS-over-TCP frame.
	dnsMaxMsgSize = 65535

	// dnsHeaderSize is the size of the fixed DNS message header.
	dnsHeaderSize = 12

	// dnsMaxInFlight bounds the number of UDP queries handled at once;
	// queries arriving beyond it are dropped and the guest retries.
	dnsMaxInFlight = 256

	// dnsMaxStreams bounds the number of DNS-over-TCP connections served at
	// once; connections accepted beyond it are closed at once.
	dnsMaxStreams = 64

	// dnsStreamIdleTimeout is how long a DNS-over-TCP connection may stay
	// idle between queries before it is closed (RFC 7766, section 6.2.3).
	dnsStreamIdleTimeout = 10 * time.Second

	// dnsDefaultTimeout is the per-upstream timeout used when
	// newDNSForwarder is given a timeout that is not positive.
	dnsDefaultTimeout = 5 * time.Second
)

// dnsForwarder answers DNS queries from the guest by passing them, unchanged,
// to upstream servers.
//
// A query is sent to each upstream in turn, over the transport it arrived
// on, until one answers; the first answer is returned to the guest as is,
// except that a UDP answer too large for the guest is truncated. If no
// upstream answers, the guest gets SERVFAIL.
type dnsForwarder struct {
	upstreams []string      // "host:port", tried in order
	timeout   time.Duration // per upstream attempt, and bound on Close
	log       *slog.Logger  // never nil

	ctx    context.Context // canceled by Close to abort upstream exchanges
	cancel context.CancelFunc

	lastWarn atomic.Int64 // unix nanoseconds of the last "all upstreams failed" warning

	inflight chan struct{} // semaphore bounding concurrent UDP queries
	streams  chan struct{} // semaphore bounding concurrent TCP connections

	// wg counts running serve loops and handlers. Its counter only goes up
	// from zero in track, under mu while not closed, so it never races
	// with the Wait in Close.
	wg sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	closers map[io.Closer]struct{} // conns and listeners to close on Close
}

// newDNSForwarder returns a forwarder that passes queries to upstreams, each
// a "host:port" address, trying them in order and waiting up to timeout for
// each. A timeout that is not positive means 5 seconds. If log is nil,
// nothing is logged.
func newDNSForwarder(upstreams []string, timeout time.Duration, log *slog.Logger) *dnsForwarder {
	if timeout <= 0 {
		timeout = dnsDefaultTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &dnsForwarder{
		upstreams: append([]string(nil), upstreams...),
		timeout:   timeout,
		log:       log,
		ctx:       ctx,
		cancel:    cancel,
		inflight:  make(chan struct{}, dnsMaxInFlight),
		streams:   make(chan struct{}, dnsMaxStreams),
		closers:   make(map[io.Closer]struct{}),
	}
}

// servePacket answers queries arriving on pc until pc is closed or Close is
// called; it returns nil on a clean close. Each query is handled in its own
// goroutine. Close closes pc; if the forwarder is already closed,
// servePacket closes pc and returns nil at once.
func (f *dnsForwarder) servePacket(pc net.PacketConn) error {
	if !f.track(pc) {
		pc.Close()
		return nil
	}
	defer f.untrack(pc)

	buf := make([]byte, dnsMaxMsgSize)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if n > 0 && addr != nil {
			f.startPacket(pc, addr, buf[:n])
		}
		if err != nil {
			if f.isClosed() || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("dns: reading query on %v: %w", pc.LocalAddr(), err)
		}
	}
}

// startPacket starts a goroutine answering the UDP query in b from addr,
// or drops the query if too many are already in flight.
func (f *dnsForwarder) startPacket(pc net.PacketConn, addr net.Addr, b []byte) {
	select {
	case f.inflight <- struct{}{}:
	default:
		f.log.Debug("dns query dropped: too many in flight", "client", addr)
		return
	}
	query := append([]byte(nil), b...)
	f.wg.Add(1) // the serve loop's count is held, so this cannot race Wait
	go func() {
		defer func() {
			<-f.inflight
			f.wg.Done()
		}()
		f.handlePacket(pc, addr, query)
	}()
}

// handlePacket answers the UDP query from addr.
func (f *dnsForwarder) handlePacket(pc net.PacketConn, addr net.Addr, query []byte) {
	q, ok := f.parseQuery(query, "udp", addr)
	if !ok {
		return
	}
	reply := f.forward("udp", query, q)
	if reply == nil {
		return
	}
	reply = f.fitUDP(reply, q)
	if reply == nil {
		return
	}
	if _, err := pc.WriteTo(reply, addr); err != nil {
		f.log.Debug("dns reply failed", "proto", "udp", "client", addr, "err", err)
	}
}

// serveStream answers DNS-over-TCP queries on connections accepted from l
// until l is closed or Close is called; it returns nil on a clean close.
// Each connection may carry several queries, which are answered in order.
// Close closes l and every connection accepted from it; if the forwarder is
// already closed, serveStream closes l and returns nil at once.
func (f *dnsForwarder) serveStream(l net.Listener) error {
	if !f.track(l) {
		l.Close()
		return nil
	}
	defer f.untrack(l)

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if f.isClosed() || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
				return nil
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				// Like net/http: back off on transient errors such as
				// running out of file descriptors.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				f.log.Warn("dns accept failed; retrying", "err", err, "delay", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("dns: accepting on %v: %w", l.Addr(), err)
		}
		backoff = 0
		f.startStream(c)
	}
}

// startStream starts a goroutine serving the connection c, or closes c if
// too many connections are already being served.
func (f *dnsForwarder) startStream(c net.Conn) {
	select {
	case f.streams <- struct{}{}:
	default:
		f.log.Debug("dns connection refused: too many open", "client", c.RemoteAddr())
		c.Close()
		return
	}
	if !f.track(c) {
		<-f.streams
		c.Close()
		return
	}
	go func() {
		defer func() {
			c.Close()
			f.untrack(c)
			<-f.streams
		}()
		f.handleStream(c)
	}()
}

// handleStream answers queries on c until the guest closes it, it stays
// idle too long, or an error occurs.
func (f *dnsForwarder) handleStream(c net.Conn) {
	client := c.RemoteAddr()
	for {
		c.SetReadDeadline(time.Now().Add(dnsStreamIdleTimeout))
		query, err := readDNSFrame(c)
		if err != nil {
			if !errors.Is(err, io.EOF) && !f.isClosed() {
				f.log.Debug("dns read failed", "proto", "tcp", "client", client, "err", err)
			}
			return
		}
		q, ok := f.parseQuery(query, "tcp", client)
		if !ok {
			continue
		}
		reply := f.forward("tcp", query, q)
		if reply == nil {
			return
		}
		c.SetWriteDeadline(time.Now().Add(f.timeout))
		if err := writeDNSFrame(c, reply); err != nil {
			f.log.Debug("dns reply failed", "proto", "tcp", "client", client, "err", err)
			return
		}
	}
}

// Close stops serving: it closes every PacketConn, Listener and connection
// being served and aborts queries waiting on upstreams. It then waits for
// in-flight handlers to finish, for at most the forwarder's timeout.
func (f *dnsForwarder) Close() error {
	f.mu.Lock()
	f.closed = true
	for c := range f.closers {
		// Expire deadlines first: it wakes blocked reads even on
		// implementations whose Close does not.
		if d, ok := c.(interface{ SetDeadline(time.Time) error }); ok {
			d.SetDeadline(time.Unix(1, 0))
		}
		c.Close()
	}
	f.mu.Unlock()
	f.cancel()

	done := make(chan struct{})
	go func() {
		f.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(f.timeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return fmt.Errorf("dns: handlers still running %v after close", f.timeout)
	}
}

// track registers c to be closed by Close and counts one running goroutine.
// It reports false, doing nothing, if the forwarder is closed.
func (f *dnsForwarder) track(c io.Closer) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.closers[c] = struct{}{}
	f.wg.Add(1)
	return true
}

// untrack undoes track.
func (f *dnsForwarder) untrack(c io.Closer) {
	f.mu.Lock()
	delete(f.closers, c)
	f.mu.Unlock()
	f.wg.Done()
}

// isClosed reports whether Close has been called.
func (f *dnsForwarder) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// parseQuery unpacks the query b received over proto from client, and
// reports whether it should be answered. Malformed messages and responses
// are dropped.
func (f *dnsForwarder) parseQuery(b []byte, proto string, client net.Addr) (*dns.Msg, bool) {
	q := new(dns.Msg)
	if err := q.Unpack(b); err != nil {
		f.log.Debug("dns query dropped: malformed", "proto", proto, "client", client, "len", len(b), "err", err)
		return nil, false
	}
	if q.Response {
		f.log.Debug("dns query dropped: not a query", "proto", proto, "client", client, "id", q.Id)
		return nil, false
	}
	if f.log.Enabled(f.ctx, slog.LevelDebug) {
		var name, typ string
		if len(q.Question) > 0 {
			name = q.Question[0].Name
			typ = dns.Type(q.Question[0].Qtype).String()
		}
		f.log.Debug("dns query", "proto", proto, "client", client, "id", q.Id, "name", name, "type", typ)
	}
	return q, true
}

// forward sends query, which unpacks to q, to each upstream in turn over
// network ("udp" or "tcp") and returns the first reply. If no upstream
// replies, it returns a SERVFAIL reply to q. It returns nil if the
// forwarder is closing or no reply can be built.
func (f *dnsForwarder) forward(network string, query []byte, q *dns.Msg) []byte {
	for _, u := range f.upstreams {
		reply, err := f.exchange(network, u, query)
		if err == nil {
			f.log.Debug("dns reply", "upstream", u, "proto", network, "id", q.Id,
				"rcode", dns.RcodeToString[int(reply[3]&0x0f)], "tc", reply[2]&0x02 != 0, "len", len(reply))
			return reply
		}
		if f.ctx.Err() != nil {
			return nil
		}
		f.log.Debug("dns upstream failed", "upstream", u, "proto", network, "id", q.Id, "err", err)
	}
	// Warn at most once a minute: a guest retries failing names often.
	if now, last := time.Now().UnixNano(), f.lastWarn.Load(); now-last > int64(time.Minute) && f.lastWarn.CompareAndSwap(last, now) {
		f.log.Warn("DNS queries fail on every upstream: check --dns-upstream or the host's resolv.conf", "proto", network, "upstreams", f.upstreams)
	} else {
		f.log.Debug("dns query failed on all upstreams", "proto", network, "id", q.Id)
	}
	m := new(dns.Msg)
	m.SetRcode(q, dns.RcodeServerFailure)
	b, err := m.Pack()
	if err != nil {
		f.log.Debug("dns servfail not sent", "id", q.Id, "err", err)
		return nil
	}
	return b
}

// exchange sends query to server over network and returns its reply. It
// gives up after the forwarder's timeout, or when the forwarder closes.
func (f *dnsForwarder) exchange(network, server string, query []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(f.ctx, f.timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, network, server)
	if err != nil {
		return nil, fmt.Errorf("dns: querying %s over %s: %w", server, network, err)
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() {
		// Unblock any read or write at once when canceled.
		c.SetDeadline(time.Unix(1, 0))
	})
	defer stop()

	var reply []byte
	if network == "tcp" {
		reply, err = exchangeDNSStream(c, query)
	} else {
		reply, err = exchangeDNSPacket(c, query)
	}
	if err != nil {
		return nil, fmt.Errorf("dns: querying %s over %s: %w", server, network, err)
	}
	return reply, nil
}

// exchangeDNSPacket sends query on the connected UDP conn c and returns the
// first response carrying the query's ID, skipping any other datagrams.
func exchangeDNSPacket(c net.Conn, query []byte) ([]byte, error) {
	if _, err := c.Write(query); err != nil {
		return nil, err
	}
	buf := make([]byte, dnsMaxMsgSize)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if isDNSReplyTo(buf[:n], query) {
			return append([]byte(nil), buf[:n]...), nil
		}
	}
}

// exchangeDNSStream sends query on the stream conn c and returns the reply.
func exchangeDNSStream(c net.Conn, query []byte) ([]byte, error) {
	if err := writeDNSFrame(c, query); err != nil {
		return nil, err
	}
	reply, err := readDNSFrame(c)
	if err != nil {
		return nil, err
	}
	if !isDNSReplyTo(reply, query) {
		return nil, errors.New("reply does not match query ID")
	}
	return reply, nil
}

// isDNSReplyTo reports whether reply is a DNS response with the ID of query.
func isDNSReplyTo(reply, query []byte) bool {
	return len(reply) >= dnsHeaderSize && len(query) >= 2 &&
		reply[0] == query[0] && reply[1] == query[1] &&
		reply[2]&0x80 != 0 // QR bit
}

// fitUDP returns reply, or, if it is larger than the guest can take over
// UDP according to q, a copy truncated to fit with the TC bit set.
func (f *dnsForwarder) fitUDP(reply []byte, q *dns.Msg) []byte {
	size := dns.MinMsgSize
	if opt := q.IsEdns0(); opt != nil {
		size = max(size, int(opt.UDPSize()))
	}
	if len(reply) <= size {
		return reply
	}
	m := new(dns.Msg)
	if err := m.Unpack(reply); err == nil {
		m.Truncate(size)
		if b, err := m.Pack(); err == nil && len(b) <= size {
			return b
		}
	}
	// Unpacking or truncating failed: send just the header and question
	// with TC set, so that the guest retries over TCP.
	m = new(dns.Msg)
	m.SetReply(q)
	m.Rcode = int(reply[3] & 0x0f)
	m.Truncated = true
	b, err := m.Pack()
	if err != nil {
		f.log.Debug("dns reply dropped: cannot truncate", "id", q.Id, "err", err)
		return nil
	}
	return b
}

// readDNSFrame reads one length-prefixed DNS message from r.
func readDNSFrame(r io.Reader) ([]byte, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint16(n[:]))
	if _, err := io.ReadFull(r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading %d-byte DNS message: %w", len(b), err)
	}
	return b, nil
}

// writeDNSFrame writes msg to w, prefixed with its length, in one Write.
func writeDNSFrame(w io.Writer, msg []byte) error {
	if len(msg) > dnsMaxMsgSize {
		return fmt.Errorf("DNS message too long: %d bytes", len(msg))
	}
	b := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(b, uint16(len(msg)))
	copy(b[2:], msg)
	_, err := w.Write(b)
	return err
}
