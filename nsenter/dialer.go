package nsenter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Environment variables of the socket helper.
const (
	// envDialer makes a re-executed ferry the socket helper (with the
	// namespaces joined by the constructor, as for the TAP helper).
	envDialer = "_FERRY_NSENTER_DIALER"
	// envDialerKeep carries "FD:PID" of a running helper across the
	// sandbox's in-place re-execution (see [Dialer.KeepAcrossExec]).
	envDialerKeep = "_FERRY_DIALER_KEEP"
)

// Dialer opens TCP and UDP sockets inside another network namespace and
// connects them from ferry's own process: "kernel mode" for published
// ports. A small helper (ferry re-executed, its namespaces joined by the
// constructor in nsenter.c, as for the TAP) lives in the target's user and
// network namespaces for as long as the Dialer; on request over a
// SOCK_SEQPACKET socket pair it only calls socket(2) and hands the new,
// unconnected socket back with SCM_RIGHTS. A socket belongs to the network
// namespace it was created in whoever uses it later, so ferry connects it
// itself, with its own poller and deadlines: the helper never blocks, and
// requests can be served one at a time.
//
// The helper exits when its end of the pair reads EOF, that is when the
// Dialer is closed or ferry's process ends in any way (it holds no other
// copy of the pair). PR_SET_PDEATHSIG is not used: it fires when the
// thread that started the helper ends, which the sandbox's in-place
// re-execution does to every thread but one.
//
// The helper is started before the sandbox (stage 1 hands its socket to
// stage 2 across the re-execution, see KeepAcrossExec) and is not itself
// confined: it runs as the same user, root of the guest's user namespace
// as ferry's TAP helper is, and does nothing but read two-byte requests
// from ferry and call socket(2). ferry's side needs only sendmsg, recvmsg,
// connect, getsockopt, getpeername, fcntl and, to copy, splice and pipe2,
// all on the sandbox's allow-list.
type Dialer struct {
	mu     sync.Mutex
	fd     int // ferry's end of the pair; -1 once closed
	pid    int
	cmd    *exec.Cmd // nil in a resumed Dialer
	waited chan struct{}
}

// dialerReady is the helper's first message once it runs Go code.
const dialerReady = "R"

// StartDialer starts a socket helper in t's namespaces.
func StartDialer(ctx context.Context, t Target) (*Dialer, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	child := os.NewFile(uintptr(fds[1]), "dialer-child")
	self, err := os.Executable()
	if err != nil {
		child.Close()
		unix.Close(fds[0])
		return nil, fmt.Errorf("find ferry's own executable: %w", err)
	}
	cmd := exec.Command(self)
	cmd.Args = []string{"ferry-port-dialer"}
	cmd.Env = append(JoinEnv(t, 0), helperProcs, envSock+"="+strconv.Itoa(helperFD), envDialer+"=1")
	cmd.ExtraFiles = []*os.File{child}
	cmd.Stderr = os.Stderr
	// Its own process group: a terminal's ^C goes to ferry, which then
	// closes the pair; the helper follows.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		child.Close()
		unix.Close(fds[0])
		return nil, fmt.Errorf("start the port helper %s: %w", self, err)
	}
	child.Close()
	d := &Dialer{fd: fds[0], pid: cmd.Process.Pid, cmd: cmd, waited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(d.waited)
	}()
	// The first message: ready, or the constructor's error.
	buf := make([]byte, 512)
	type res struct {
		n   int
		err error
	}
	got := make(chan res, 1)
	go func() {
		n, _, _, _, err := unix.Recvmsg(d.fd, buf, nil, 0)
		got <- res{n, err}
	}()
	var r res
	select {
	case r = <-got:
	case <-ctx.Done():
		cmd.Process.Kill()
		<-got // the kill makes the read return
		d.Close()
		return nil, ctx.Err()
	}
	if r.err == nil && string(buf[:r.n]) == dialerReady {
		return d, nil
	}
	d.Close()
	switch {
	case r.err != nil:
		return nil, fmt.Errorf("port helper: %w", r.err)
	case r.n > 1 && buf[0] == 'E':
		return nil, fmt.Errorf("port helper: %s", buf[1:r.n])
	}
	return nil, errors.New("port helper exited before it was ready (see its error above)")
}

// KeepAcrossExec lets d survive an in-place re-execution of ferry (the
// sandbox's): its socket stays open and its fd and the helper's PID are
// put in the environment, where [ResumeDialer] finds them.
func (d *Dialer) KeepAcrossExec() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return errors.New("port helper: closed")
	}
	if _, err := unix.FcntlInt(uintptr(d.fd), unix.F_SETFD, 0); err != nil {
		return fmt.Errorf("port helper: keep fd %d open: %w", d.fd, err)
	}
	return os.Setenv(envDialerKeep, strconv.Itoa(d.fd)+":"+strconv.Itoa(d.pid))
}

// ResumeDialer returns the Dialer that the process image before an in-place
// re-execution kept with KeepAcrossExec, or nil if there is none.
func ResumeDialer() (*Dialer, error) {
	v, ok := os.LookupEnv(envDialerKeep)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(envDialerKeep)
	fdS, pidS, _ := strings.Cut(v, ":")
	fd, err1 := strconv.Atoi(fdS)
	pid, err2 := strconv.Atoi(pidS)
	if err1 != nil || err2 != nil || fd < 0 || pid <= 0 {
		return nil, fmt.Errorf("port helper: bad %s=%q", envDialerKeep, v)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return nil, fmt.Errorf("port helper: fd %d: %w", fd, err)
	}
	d := &Dialer{fd: fd, pid: pid, waited: make(chan struct{})}
	go func() {
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if err != unix.EINTR {
				break
			}
		}
		close(d.waited)
	}()
	return d, nil
}

// PID is the helper's process ID.
func (d *Dialer) PID() int { return d.pid }

// socket asks the helper for a new socket: typ is SOCK_STREAM or
// SOCK_DGRAM.
func (d *Dialer) socket(v6 bool, typ int) (int, error) {
	req := []byte{'t', '4'}
	if typ == unix.SOCK_DGRAM {
		req[0] = 'u'
	}
	if v6 {
		req[1] = '6'
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return -1, errors.New("port helper: closed")
	}
	if err := unix.Sendmsg(d.fd, req, nil, nil, unix.MSG_NOSIGNAL); err != nil {
		return -1, fmt.Errorf("port helper: %w", err)
	}
	buf := make([]byte, 512)
	oob := make([]byte, unix.CmsgSpace(4))
	var n, oobn int
	var err error
	for {
		n, oobn, _, _, err = unix.Recvmsg(d.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return -1, fmt.Errorf("port helper: %w", err)
	}
	if n == 0 && oobn == 0 {
		return -1, errors.New("port helper: gone")
	}
	if n > 0 && buf[0] == 'E' {
		return -1, fmt.Errorf("port helper: %s", buf[1:n])
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(cmsgs) != 1 {
		return -1, errors.New("port helper sent no socket")
	}
	rights, err := unix.ParseUnixRights(&cmsgs[0])
	if err != nil || len(rights) != 1 {
		for _, fd := range rights {
			unix.Close(fd)
		}
		return -1, errors.New("port helper sent no socket")
	}
	return rights[0], nil
}

// aLongTimeAgo is a deadline in the past, to cancel a wait.
var aLongTimeAgo = time.Unix(1, 0)

// Dial connects to dst inside the namespace: network is "tcp" (the
// connection is a *net.TCPConn) or "udp" (a connected *net.UDPConn). ctx
// bounds the connection.
func (d *Dialer) Dial(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
	typ := unix.SOCK_STREAM
	switch network {
	case "tcp":
	case "udp":
		typ = unix.SOCK_DGRAM
	default:
		return nil, fmt.Errorf("port helper: unknown network %q", network)
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	fd, err := d.socket(dst.Addr().Is6(), typ)
	if err != nil {
		return nil, err
	}
	var sa unix.Sockaddr
	if dst.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
	}
	// The helper made the socket non-blocking: os.NewFile puts it in the
	// poller, which the wait for the connection below uses.
	cerr := unix.Connect(fd, sa)
	for cerr == unix.EINTR {
		cerr = unix.Connect(fd, sa)
	}
	if cerr != nil && cerr != unix.EINPROGRESS {
		unix.Close(fd)
		return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(dst), Err: os.NewSyscallError("connect", cerr)}
	}
	f := os.NewFile(uintptr(fd), "port-dialer-socket")
	defer f.Close()
	if cerr == unix.EINPROGRESS {
		if err := waitConnected(ctx, f); err != nil {
			return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(dst), Err: err}
		}
	}
	return net.FileConn(f) // a dup; f's own fd is closed on return
}

// waitConnected waits until the non-blocking connect on f has finished.
func waitConnected(ctx context.Context, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		f.SetWriteDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(aLongTimeAgo) })
	defer stop()
	var serr error
	werr := rc.Write(func(fd uintptr) bool {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			serr = os.NewSyscallError("getsockopt", err)
			return true
		case v != 0:
			serr = os.NewSyscallError("connect", unix.Errno(v))
			return true
		}
		if _, err := unix.Getpeername(int(fd)); err == nil {
			return true // connected
		}
		return false // still in progress: wait until writable
	})
	if werr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return werr
	}
	return serr
}

// Close ends the helper (it reads EOF and exits) and waits up to a second
// for it.
func (d *Dialer) Close() error {
	d.mu.Lock()
	if d.fd >= 0 {
		unix.Close(d.fd)
		d.fd = -1
	}
	d.mu.Unlock()
	select {
	case <-d.waited:
	case <-time.After(time.Second):
		if d.cmd != nil {
			d.cmd.Process.Kill()
		}
	}
	return nil
}

// runDialer is the helper's main loop: one socket per request, until EOF.
func runDialer() {
	fd := helperFD
	unix.Sendmsg(fd, []byte(dialerReady), nil, nil, unix.MSG_NOSIGNAL)
	buf := make([]byte, 16)
	for {
		n, _, _, _, err := unix.Recvmsg(fd, buf, nil, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			os.Exit(0) // ferry is gone, or closed the Dialer
		}
		s, err := helperSocket(buf[:n])
		if err != nil {
			unix.Sendmsg(fd, []byte("E"+err.Error()), nil, nil, unix.MSG_NOSIGNAL)
			continue
		}
		err = unix.Sendmsg(fd, []byte("ok"), unix.UnixRights(s), nil, unix.MSG_NOSIGNAL)
		unix.Close(s)
		if err != nil {
			os.Exit(0)
		}
	}
}

// helperSocket makes the socket a request asks for.
func helperSocket(req []byte) (int, error) {
	if len(req) != 2 {
		return -1, fmt.Errorf("bad request %q", req)
	}
	family, typ := unix.AF_INET, unix.SOCK_STREAM
	if req[0] == 'u' {
		typ = unix.SOCK_DGRAM
	}
	if req[1] == '6' {
		family = unix.AF_INET6
	}
	s, err := unix.Socket(family, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket in the namespace: %w", err)
	}
	return s, nil
}
