package nstest

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNetns runs fn on a fresh OS thread moved into the network namespace at
// nsPath. The thread is never unlocked, so the Go runtime ends it when the
// goroutine returns instead of reusing a thread in the wrong namespace.
// Sockets fn creates stay in that namespace for their whole life, whatever
// thread later uses them.
func inNetns[T any](nsPath string, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		var r result
		defer func() { ch <- r }()
		h, err := netns.GetFromPath(nsPath)
		if err != nil {
			r.err = fmt.Errorf("open network namespace %s: %w", nsPath, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			r.err = fmt.Errorf("enter network namespace %s: %w", nsPath, err)
			return
		}
		r.v, r.err = fn()
	}()
	r := <-ch
	return r.v, r.err
}

// ListenIn is net.Listen inside the network namespace at nsPath (e.g.
// /run/netns/NAME or /proc/PID/ns/net).
func ListenIn(nsPath, network, addr string) (net.Listener, error) {
	return inNetns(nsPath, func() (net.Listener, error) {
		l, err := net.Listen(network, addr)
		if err != nil {
			return nil, fmt.Errorf("listen in %s: %w", nsPath, err)
		}
		return l, nil
	})
}

// ListenPacketIn is net.ListenPacket inside the network namespace at nsPath.
func ListenPacketIn(nsPath, network, addr string) (net.PacketConn, error) {
	return inNetns(nsPath, func() (net.PacketConn, error) {
		c, err := net.ListenPacket(network, addr)
		if err != nil {
			return nil, fmt.Errorf("listen in %s: %w", nsPath, err)
		}
		return c, nil
	})
}

// DialIn is net.Dialer.DialContext from inside the network namespace at
// nsPath: the connection's socket lives there.
func DialIn(ctx context.Context, nsPath, network, addr string) (net.Conn, error) {
	return inNetns(nsPath, func() (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, fmt.Errorf("dial %s %s in %s: %w", network, addr, nsPath, err)
		}
		return c, nil
	})
}
