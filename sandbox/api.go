package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The API protocol's limits, as in package forward: one read of at most
// apiBufSize bytes, one reply, apiTimeout per client.
const (
	apiBufSize = 4096
	apiTimeout = 10 * time.Second
)

// Handler answers one API request (forward.API is one).
type Handler interface {
	Handle(ctx context.Context, req []byte) []byte
}

// ListenAPI binds and listens on a UNIX stream socket at path (mode 0600;
// a file already there is removed first), as forward.ListenAPI does, and
// returns the socket's fd and an O_PATH fd of its directory, both
// close-on-exec, for [ServeAPI] in the sandbox, where path may not exist.
func ListenAPI(path string) (sock, dir int, err error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return -1, -1, fmt.Errorf("API socket %s: remove the old file: %w", path, err)
	}
	sock, err = unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("API socket: %w", err)
	}
	old := unix.Umask(0o177)
	err = unix.Bind(sock, &unix.SockaddrUnix{Name: path})
	unix.Umask(old)
	if err == nil {
		err = unix.Listen(sock, unix.SOMAXCONN)
	}
	if err == nil {
		err = os.Chmod(path, 0o600)
	}
	if err != nil {
		unix.Close(sock)
		return -1, -1, fmt.Errorf("API socket %s: %w", path, err)
	}
	dirPath, _ := splitPath(path)
	dir, err = unix.Open(dirPath, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(sock)
		os.Remove(path)
		return -1, -1, fmt.Errorf("API socket %s: open its directory: %w", path, err)
	}
	return sock, dir, nil
}

// splitPath splits path into its directory and base name.
func splitPath(path string) (dir, name string) {
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '/' {
			if i == 0 {
				return "/", path[1:]
			}
			return path[:i], path[i+1:]
		}
	}
	return ".", path
}

// APIServer serves the API on an inherited listening socket.
type APIServer struct {
	l       *net.UnixListener
	dirFD   int
	name    string
	h       Handler
	log     *slog.Logger
	wg      sync.WaitGroup
	closing sync.Once
}

// ServeAPI serves h on the listening socket sockFD until Close, which
// closes it and removes name from the directory open at dirFD.
func ServeAPI(sockFD, dirFD int, name string, h Handler, log *slog.Logger) (*APIServer, error) {
	f := os.NewFile(uintptr(sockFD), "api-socket")
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("API socket: %w", err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("API socket: fd %d is not a UNIX socket", sockFD)
	}
	unix.CloseOnExec(dirFD)
	s := &APIServer{l: ul, dirFD: dirFD, name: name, h: h, log: log}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *APIServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.l.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("API socket: accept", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(c)
		}()
	}
}

// serveConn answers one request: a single read, a single write (as
// forward.API does).
func (s *APIServer) serveConn(c *net.UnixConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(apiTimeout))
	buf := make([]byte, apiBufSize)
	n, err := c.Read(buf)
	if err != nil && n == 0 && !errors.Is(err, io.EOF) {
		s.log.Debug("API socket: read", "err", err)
		return
	}
	if _, err := c.Write(s.h.Handle(context.Background(), buf[:n])); err != nil {
		s.log.Debug("API socket: write", "err", err)
		return
	}
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(time.Second))
	io.CopyN(io.Discard, c, 1<<20)
}

// Close stops serving and removes the socket file.
func (s *APIServer) Close() {
	s.closing.Do(func() {
		s.l.Close()
		if s.dirFD >= 0 {
			if err := unix.Unlinkat(s.dirFD, s.name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				s.log.Debug("API socket: remove", "err", err)
			}
			unix.Close(s.dirFD)
		}
	})
	s.wg.Wait()
}
