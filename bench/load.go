package main

// The load generator (run inside a guest, through the helper under test)
// and its server (on the private host namespace's loopback). A connection's
// first byte picks its mode: 'c' (connection rate) gets one byte back and
// the server closes first, so that TIME_WAIT stays on the host and the guest
// never runs out of ports; 'e' (echo) echoes every following byte until the
// client closes.

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// serveMain is `bench serve -addr ADDR`: the load generator's server.
func serveMain(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:7777", "listen address")
	fs.Parse(args)
	raiseNofile()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and friends: back off
			continue
		}
		go serveConn(c)
	}
}

func serveConn(c net.Conn) {
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		return
	}
	switch b[0] {
	case 'c':
		c.Write(b)
		return
	case 'e':
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
}

// raiseNofile lifts the soft open-files limit to the hard one.
func raiseNofile() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// rrResult is what `bench rr` prints.
type rrResult struct {
	Ops   int     `json:"ops"`
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
}

// rrMain is `bench rr -addr ADDR -d DUR`: 1-byte ping-pong on one
// connection for DUR, printing latency percentiles as JSON.
func rrMain(args []string) error {
	fs := flag.NewFlagSet("rr", flag.ExitOnError)
	addr := fs.String("addr", "", "server address")
	dur := fs.Duration("d", 3*time.Second, "duration")
	fs.Parse(args)
	c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	b := []byte{'e'}
	if _, err := c.Write(b); err != nil {
		return err
	}
	lat := make([]time.Duration, 0, 1<<16)
	b[0] = 'x'
	warm := time.Now().Add(*dur / 10)
	end := time.Now().Add(*dur)
	c.SetDeadline(end.Add(5 * time.Second))
	for {
		t0 := time.Now()
		if t0.After(end) {
			break
		}
		if _, err := c.Write(b); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return err
		}
		if t0.After(warm) {
			lat = append(lat, time.Since(t0))
		}
	}
	if len(lat) == 0 {
		return fmt.Errorf("no round trip completed")
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) / 1e3
	}
	return json.NewEncoder(os.Stdout).Encode(rrResult{Ops: len(lat), P50us: pct(0.50), P99us: pct(0.99)})
}

// cpsResult is what `bench cps` prints.
type cpsResult struct {
	Conns  int64   `json:"conns"`
	Errors int64   `json:"errors"`
	PerSec float64 `json:"per_sec"`
}

// cpsMain is `bench cps -addr ADDR -d DUR -c N`: N workers each connect,
// send one byte, read the reply, wait for the server's close and close,
// for DUR.
func cpsMain(args []string) error {
	fs := flag.NewFlagSet("cps", flag.ExitOnError)
	addr := fs.String("addr", "", "server address")
	dur := fs.Duration("d", 3*time.Second, "duration")
	workers := fs.Int("c", 4, "concurrent workers")
	fs.Parse(args)
	var ok, bad atomic.Int64
	start := time.Now()
	end := start.Add(*dur)
	var wg sync.WaitGroup
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, 1)
			for time.Now().Before(end) {
				if err := oneConn(*addr, b); err != nil {
					bad.Add(1)
					time.Sleep(time.Millisecond)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	return json.NewEncoder(os.Stdout).Encode(cpsResult{Conns: ok.Load(), Errors: bad.Load(), PerSec: float64(ok.Load()) / el})
}

func oneConn(addr string, b []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b[0] = 'c'
	if _, err := c.Write(b); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if n, err := c.Read(b); n != 0 || err != io.EOF {
		return fmt.Errorf("want the server's close, got %d bytes, %v", n, err)
	}
	return nil
}

// holdResult is what `bench hold` prints once its connections are open.
type holdResult struct {
	Open    int     `json:"open"`
	Errors  int     `json:"errors"`
	Seconds float64 `json:"seconds"`
	Err     string  `json:"first_error,omitempty"`
}

// holdMain is `bench hold -addr ADDR -n N`: open N echo connections (each
// proven end to end by one echoed byte), print a holdResult line, and keep
// them open until stdin closes.
func holdMain(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	addr := fs.String("addr", "", "server address")
	n := fs.Int("n", 10000, "connections")
	par := fs.Int("par", 64, "connections opened in parallel")
	timeout := fs.Duration("timeout", 60*time.Second, "give up opening after this long")
	fs.Parse(args)
	raiseNofile()
	var (
		mu    sync.Mutex
		conns []net.Conn
		errs  int
		first string
		next  atomic.Int64
	)
	start := time.Now()
	deadline := start.Add(*timeout)
	var wg sync.WaitGroup
	for range *par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := []byte{'e', 'x'}
			// A failed attempt is retried: the slot is given back.
			for next.Add(1) <= int64(*n) && time.Now().Before(deadline) {
				c, err := net.DialTimeout("tcp", *addr, time.Until(deadline))
				if err == nil {
					c.SetDeadline(deadline)
					if _, err = c.Write(b); err == nil {
						_, err = io.ReadFull(c, b[1:])
					}
					c.SetDeadline(time.Time{})
					if err != nil {
						c.Close()
					}
				}
				mu.Lock()
				if err != nil {
					errs++
					if first == "" {
						first = err.Error()
					}
					next.Add(-1)
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res := holdResult{Open: len(conns), Errors: errs, Seconds: time.Since(start).Seconds(), Err: first}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return err
	}
	io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	for _, c := range conns {
		c.Close()
	}
	return nil
}
