package nstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/miekg/dns"
)

// ServeHTTP serves h on a TCP listener at addr (e.g. 127.0.0.1:0) inside the
// network namespace at nsPath and returns the listener's port. The server is
// shut down at tb's teardown.
func ServeHTTP(tb TB, nsPath, addr string, h http.Handler) (int, error) {
	l, err := ListenIn(nsPath, "tcp", addr)
	if err != nil {
		return 0, fmt.Errorf("HTTP server: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
	})
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ListenTCPUDP opens a TCP listener and a UDP socket on the same port of ip
// inside the network namespace at nsPath, as a DNS server needs.
func ListenTCPUDP(nsPath, ip string) (net.Listener, net.PacketConn, error) {
	var lastErr error
	for range 20 {
		pc, err := ListenPacketIn(nsPath, "udp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return nil, nil, err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := ListenIn(nsPath, "tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
		if err == nil {
			return l, pc, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, fmt.Errorf("no port free for both TCP and UDP: %w", lastErr)
}

// ServeDNS serves h over UDP and TCP on one port of ip inside the network
// namespace at nsPath and returns that port. Both servers are shut down at
// tb's teardown.
func ServeDNS(tb TB, nsPath, ip string, h dns.Handler) (int, error) {
	l, pc, err := ListenTCPUDP(nsPath, ip)
	if err != nil {
		return 0, fmt.Errorf("DNS server: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	for _, srv := range []*dns.Server{
		{Listener: l, Handler: h, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second},
		{PacketConn: pc, Handler: h},
	} {
		started := make(chan struct{})
		failed := make(chan error, 1)
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { failed <- srv.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-failed:
			l.Close()
			pc.Close()
			return 0, fmt.Errorf("DNS server: %w", err)
		case <-time.After(5 * time.Second):
			l.Close()
			pc.Close()
			return 0, errors.New("DNS server: not started after 5s")
		}
		tb.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			srv.ShutdownContext(ctx)
		})
	}
	return port, nil
}
