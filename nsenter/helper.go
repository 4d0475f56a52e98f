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
	"os"
	"os/exec"
	"strconv"
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
// TAP's file descriptor, usable from ferry's own namespaces.
func OpenTAP(ctx context.Context, t Target, cfg tap.Config) (*TAP, error) {
	req, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode helper request: %w", err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	parent := os.NewFile(uintptr(fds[0]), "nsenter-parent")
	child := os.NewFile(uintptr(fds[1]), "nsenter-child")
	defer parent.Close()

	self, err := os.Executable()
	if err != nil {
		child.Close()
		return nil, fmt.Errorf("find ferry's own executable: %w", err)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, self)
	cmd.Args = []string{"ferry-nsenter"}
	cmd.Env = append(JoinEnv(t, 0),
		envSock+"="+strconv.Itoa(helperFD),
		envReq+"="+string(req),
	)
	cmd.ExtraFiles = []*os.File{child}
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		child.Close()
		return nil, fmt.Errorf("start namespace helper %s: %w", self, err)
	}
	child.Close()

	tapFile, reply, replyErr := receiveTAP(parent)
	waitErr := cmd.Wait()
	if replyErr != nil {
		if tapFile != nil {
			tapFile.Close()
		}
		return nil, replyErr
	}
	if tapFile == nil {
		msg := bytes.TrimSpace(stderr.Bytes())
		if len(msg) == 0 && waitErr != nil {
			msg = []byte(waitErr.Error())
		}
		return nil, fmt.Errorf("namespace helper failed: %s", msg)
	}
	return &TAP{File: tapFile, VNet: reply.VNet, Fallback: reply.Fallback}, nil
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
// as one by OpenTAP; otherwise it returns at once. Call it first in main.
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
		_ = unix.Sendmsg(int(sock.Fd()), msg, oob, nil, 0)
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
