package nsenter

/*
// The constructor in nsenter.c runs before the Go runtime starts.
*/
import "C"

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ferrynet/ferry/tap"
)

// Environment variables read by the constructor in nsenter.c.
const (
	envNet  = "_FERRY_NSENTER_NET"
	envUser = "_FERRY_NSENTER_USER"
	envSock = "_FERRY_NSENTER_SOCK"
	envReq  = "_FERRY_NSENTER_REQ"
	// envUnshare holds clone flags to unshare after joining.
	envUnshare = "_FERRY_NSENTER_UNSHARE"
)

// JoinEnv returns the environment variables that make a re-executed ferry
// join t's user and network namespaces, then unshare the namespaces in
// unshareFlags (e.g. CLONE_NEWNS), before its Go runtime starts.
func JoinEnv(t Target, unshareFlags uintptr) []string {
	return []string{
		envNet + "=" + t.NetnsPath,
		envUser + "=" + t.UsernsPath,
		envUnshare + "=" + strconv.FormatUint(uint64(unshareFlags), 10),
	}
}

// helperFD is the helper's end of the socket pair (the first of ExtraFiles).
const helperFD = 3

// helperProcs is in the environment of ferry's helpers (the TAP helper, the
// port dialer): their work is sequential, and a Go runtime that starts with
// one P starts faster (about 1 ms here) than one sized to the machine. The
// TAP helper's start is on the path to the ready signal.
const helperProcs = "GOMAXPROCS=1"

// helperReply is what the helper sends back, with the TAP fd as ancillary data
// on success.
type helperReply struct {
	Error    string `json:"error,omitempty"`
	VNet     bool   `json:"vnet,omitempty"`
	Fallback string `json:"fallback,omitempty"`
}

// TAP is a TAP device's queue, created in another namespace.
type TAP struct {
	*os.File
	// VNet says the queue carries virtio-net headers with offloads.
	VNet bool
	// Fallback says why a plain TAP was made instead, if it was.
	Fallback string
}

// OpenTAP creates the TAP device described by cfg inside the target's
// network namespace (joining the user namespace that owns it, or
// t.UsernsPath), configures it when cfg.Configure is set, and returns the
// TAP's file descriptor, usable from ferry's own namespaces. It is
// [StartTAP] and [PendingTAP.Wait].
func OpenTAP(ctx context.Context, t Target, cfg tap.Config) (*TAP, error) {
	p, err := startTAP(t, cfg, true)
	if err != nil {
		return nil, err
	}
	return p.Wait(ctx)
}

// PendingTAP is a TAP helper started by [StartTAP] whose reply has not been
// read yet. It can be kept across ferry's in-place re-execution (the
// sandbox's), so that the helper and the new image start side by side.
type PendingTAP struct {
	mu   sync.Mutex
	sock *os.File // ferry's end of the pair; nil once closed
	errR *os.File // the read end of the helper's stderr
	pid  int      // 0 once reaped
}

// StartTAP starts the helper that creates the TAP device described by cfg
// inside the target's namespaces (see [OpenTAP]) and returns without
// waiting for it: [PendingTAP.Wait] collects the TAP, [PendingTAP.Close]
// abandons it.
//
// The helper is not tied to the thread that started it (no
// PR_SET_PDEATHSIG, which the sandbox's re-execution would fire): if ferry
// goes away, its reply fails with EPIPE and it exits.
func StartTAP(t Target, cfg tap.Config) (*PendingTAP, error) {
	return startTAP(t, cfg, false)
}

func startTAP(t Target, cfg tap.Config, pdeathsig bool) (*PendingTAP, error) {
	req, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode helper request: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find ferry's own executable: %w", err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	parent := os.NewFile(uintptr(fds[0]), "nsenter-parent")
	child := os.NewFile(uintptr(fds[1]), "nsenter-child")
	defer child.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		parent.Close()
		return nil, fmt.Errorf("pipe: %w", err)
	}
	defer errW.Close()
	cmd := exec.Command(self)
	cmd.Args = []string{"ferry-nsenter"}
	cmd.Env = append(JoinEnv(t, 0), helperProcs,
		envSock+"="+strconv.Itoa(helperFD),
		envReq+"="+string(req),
	)
	cmd.ExtraFiles = []*os.File{child}
	cmd.Stderr = errW
	if pdeathsig {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		parent.Close()
		errR.Close()
		return nil, fmt.Errorf("start namespace helper %s: %w", self, err)
	}
	pid := cmd.Process.Pid
	cmd.Process.Release() // reaped with wait4, by PID, maybe by the next image
	return &PendingTAP{sock: parent, errR: errR, pid: pid}, nil
}

// KeepAcrossExec lets p survive an in-place re-execution of ferry: its
// descriptors stay open and the returned token, handed to the new image,
// finds them again with [ResumeTAP].
func (p *PendingTAP) KeepAcrossExec() (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sock == nil {
		return "", errors.New("namespace helper: closed")
	}
	for _, f := range []*os.File{p.sock, p.errR} {
		if _, err := unix.FcntlInt(f.Fd(), unix.F_SETFD, 0); err != nil {
			return "", fmt.Errorf("namespace helper: keep fd %d open: %w", f.Fd(), err)
		}
	}
	return fmt.Sprintf("%d:%d:%d", p.sock.Fd(), p.errR.Fd(), p.pid), nil
}

// ResumeTAP returns the PendingTAP that the process image before an
// in-place re-execution kept with [PendingTAP.KeepAcrossExec], from its
// token.
func ResumeTAP(token string) (*PendingTAP, error) {
	var sock, errFD, pid int
	if n, err := fmt.Sscanf(token, "%d:%d:%d", &sock, &errFD, &pid); err != nil || n != 3 || sock < 0 || errFD < 0 || pid <= 0 {
		return nil, fmt.Errorf("namespace helper: bad pending TAP %q", token)
	}
	for _, fd := range []int{sock, errFD} {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
			return nil, fmt.Errorf("namespace helper: fd %d: %w", fd, err)
		}
	}
	return &PendingTAP{sock: os.NewFile(uintptr(sock), "nsenter-parent"),
		errR: os.NewFile(uintptr(errFD), "nsenter-stderr"), pid: pid}, nil
}

// PID is the helper's process ID (0 once reaped).
func (p *PendingTAP) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// Wait reads the helper's reply and returns the TAP. The helper is reaped
// before Wait returns an error, in the background after a success (its
// exit is not worth waiting for). Cancelling ctx kills the helper. Wait
// may be called once; p is closed by it.
func (p *PendingTAP) Wait(ctx context.Context) (*TAP, error) {
	p.mu.Lock()
	sock, errR := p.sock, p.errR
	p.mu.Unlock()
	if sock == nil {
		return nil, errors.New("namespace helper: closed")
	}
	// The helper's stderr, read while it runs (it could fill the pipe).
	var stderr bytes.Buffer
	stderrDone := make(chan struct{})
	go func() {
		defer close(stderrDone)
		io.Copy(&stderr, io.LimitReader(errR, 64<<10))
		io.Copy(io.Discard, errR)
	}()
	stop := context.AfterFunc(ctx, p.kill)
	tapFile, reply, replyErr := receiveTAP(sock)
	stop()
	if replyErr == nil && tapFile != nil {
		// Success: the helper's exit (a few ms to tear down a Go
		// process) is nobody's business but the reaper's.
		go func() {
			p.reap()
			<-stderrDone
			p.Close()
		}()
		return &TAP{File: tapFile, VNet: reply.VNet, Fallback: reply.Fallback}, nil
	}
	waitErr := p.reap()
	<-stderrDone
	p.Close()
	if replyErr != nil {
		if tapFile != nil {
			tapFile.Close()
		}
		return nil, replyErr
	}
	msg := bytes.TrimSpace(stderr.Bytes())
	if len(msg) == 0 && ctx.Err() != nil {
		msg = []byte(ctx.Err().Error())
	}
	if len(msg) == 0 && waitErr != nil {
		msg = []byte(waitErr.Error())
	}
	return nil, fmt.Errorf("namespace helper failed: %s", msg)
}

// kill ends the helper if it has not been reaped.
func (p *PendingTAP) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pid > 0 {
		unix.Kill(p.pid, unix.SIGKILL)
	}
}

// reap waits for the helper to exit, and returns how it did when that was
// a failure (worded as os/exec words it).
func (p *PendingTAP) reap() error {
	p.mu.Lock()
	pid := p.pid
	p.mu.Unlock()
	if pid <= 0 {
		return nil
	}
	var ws unix.WaitStatus
	var err error
	for {
		_, err = unix.Wait4(pid, &ws, 0, nil)
		if err != unix.EINTR {
			break
		}
	}
	p.mu.Lock()
	p.pid = 0
	p.mu.Unlock()
	switch {
	case err != nil:
		return fmt.Errorf("wait for namespace helper: %w", err)
	case ws.Exited() && ws.ExitStatus() == 0:
		return nil
	case ws.Exited():
		return fmt.Errorf("exit status %d", ws.ExitStatus())
	case ws.Signaled():
		msg := "signal: " + ws.Signal().String()
		if ws.CoreDump() {
			msg += " (core dumped)"
		}
		return errors.New(msg)
	}
	return fmt.Errorf("wait status %#x", uint32(ws))
}

// Close abandons the TAP: it closes ferry's end of the pair (the helper's
// reply then fails and it exits), kills the helper and reaps it. It is a
// no-op after [PendingTAP.Wait].
func (p *PendingTAP) Close() error {
	p.mu.Lock()
	if p.sock != nil {
		p.sock.Close()
		p.errR.Close()
		p.sock, p.errR = nil, nil
	}
	p.mu.Unlock()
	p.kill()
	p.reap()
	return nil
}

// receiveTAP reads the helper's one message: an error text, or the TAP fd.
func receiveTAP(sock *os.File) (*os.File, helperReply, error) {
	var reply helperReply
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(int(sock.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, reply, fmt.Errorf("read from namespace helper: %w", err)
	}
	if n == 0 && oobn == 0 {
		return nil, reply, nil // the helper died before saying anything
	}
	msg := buf[:n]
	if len(msg) > 0 && msg[0] == 'E' { // from the C constructor
		return nil, reply, errors.New(string(msg[1:]))
	}
	if err := json.Unmarshal(msg, &reply); err != nil {
		return nil, reply, fmt.Errorf("namespace helper: bad reply %q: %w", msg, err)
	}
	if reply.Error != "" {
		return nil, reply, errors.New(reply.Error)
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(cmsgs) != 1 {
		return nil, reply, fmt.Errorf("namespace helper sent no TAP descriptor")
	}
	rights, err := unix.ParseUnixRights(&cmsgs[0])
	if err != nil || len(rights) != 1 {
		return nil, reply, fmt.Errorf("namespace helper sent no TAP descriptor")
	}
	return os.NewFile(uintptr(rights[0]), "tap"), reply, nil
}

// MaybeRunHelper runs the TAP helper and exits if this process was started
// as one by StartTAP or OpenTAP; otherwise it returns at once. Call it first in main.
func MaybeRunHelper() {
	if os.Getenv(envDialer) != "" {
		runDialer() // the port helper of kernel mode (dialer.go); never returns
	}
	if os.Getenv(envReq) == "" {
		return
	}
	sock := os.NewFile(helperFD, "nsenter-child")
	reply := func(r helperReply, oob []byte) {
		msg, _ := json.Marshal(r)
		_ = unix.Sendmsg(int(sock.Fd()), msg, oob, nil, unix.MSG_NOSIGNAL)
	}
	var cfg tap.Config
	if err := json.Unmarshal([]byte(os.Getenv(envReq)), &cfg); err != nil {
		reply(helperReply{Error: fmt.Sprintf("namespace helper: bad request: %v", err)}, nil)
		os.Exit(1)
	}
	q, err := tap.Create(cfg)
	if err != nil {
		reply(helperReply{Error: err.Error()}, nil)
		os.Exit(1)
	}
	r := helperReply{VNet: q.VNet}
	if q.Fallback != nil {
		r.Fallback = q.Fallback.Error()
	}
	reply(r, unix.UnixRights(int(q.File.Fd())))
	os.Exit(0)
}
