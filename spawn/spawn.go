package spawn

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ferrynet/ferry/nsenter"
)

// NetMode is how the command gets its network namespace.
type NetMode int

const (
	// NetNew is a new network namespace (ferry's userspace network, or
	// only lo).
	NetNew NetMode = iota
	// NetHost shares the host's network namespace.
	NetHost
	// NetJoin joins an existing network namespace with the user namespace
	// owning it.
	NetJoin
)

// Config describes the command to start.
type Config struct {
	// Args is the command and its arguments.
	Args []string
	// Net selects the network namespace; Join names it for NetJoin.
	Net  NetMode
	Join nsenter.Target
	// Hostname, when set, is the command's hostname (in a new UTS
	// namespace).
	Hostname string
	// ResolvConf and Hosts, when non-nil, replace /etc/resolv.conf and
	// /etc/hosts for the command.
	ResolvConf, Hosts []byte
	// Stdin, Stdout and Stderr are the command's standard files.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Child is a started command, held before exec until Release.
type Child struct {
	cmd     *exec.Cmd   // nil in a Child from Resume
	proc    *os.Process // the command
	release *os.File    // write end of the pipe the child waits on
	// dir holds the files bind-mounted into the child, which removes it
	// once they are mounted; it is removed here too in case it never did
	// (from a Child from Resume, in the sandbox, it cannot be seen).
	dir string
}

// Environment of the child's init (see init.go).
const (
	envInit  = "_FERRY_RUN_INIT"
	envStage = "_FERRY_RUN_STAGE"
	initFD   = 3
)

// initConfig is what the child's init needs before exec.
type initConfig struct {
	Args       []string `json:"args"`
	Hostname   string   `json:"hostname,omitempty"`
	ResolvConf string   `json:"resolv_conf,omitempty"`
	Hosts      string   `json:"hosts,omitempty"`
	LoopbackUp bool     `json:"loopback_up,omitempty"`
	// Reexec: the init was created unmapped in a new user namespace and
	// must execute itself again once mapped, to hold capabilities there.
	Reexec bool `json:"reexec,omitempty"`
	// Dir holds ResolvConf and Hosts; the init removes it once they are
	// mounted.
	Dir string `json:"dir,omitempty"`
}

// Start starts the command's init in its namespaces and maps its user and
// group IDs; the command itself runs only after Release.
func Start(cfg Config) (*Child, error) {
	if len(cfg.Args) == 0 {
		return nil, errors.New("no command given")
	}
	dir, err := os.MkdirTemp("", "ferry-run-")
	if err != nil {
		return nil, fmt.Errorf("make a directory for resolv.conf and hosts: %w", err)
	}
	c := &Child{dir: dir}
	ok := false
	defer func() {
		if !ok {
			c.cleanup()
		}
	}()
	ic := initConfig{Args: cfg.Args, Hostname: cfg.Hostname, LoopbackUp: cfg.Net == NetNew, Reexec: cfg.Net != NetJoin}
	if cfg.ResolvConf != nil {
		if ic.ResolvConf, err = writeFile(dir, "resolv.conf", cfg.ResolvConf); err != nil {
			return nil, err
		}
	}
	if cfg.Hosts != nil {
		if ic.Hosts, err = writeFile(dir, "hosts", cfg.Hosts); err != nil {
			return nil, err
		}
	}
	ic.Dir = dir
	icJSON, err := json.Marshal(ic)
	if err != nil {
		return nil, fmt.Errorf("encode init config: %w", err)
	}

	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find ferry's own executable: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	defer r.Close()
	c.release = w

	cmd := exec.Command(self)
	cmd.Args = []string{"ferry-run-init"}
	cmd.Env = append(os.Environ(), envInit+"="+string(icJSON))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = cfg.Stdin, cfg.Stdout, cfg.Stderr
	cmd.ExtraFiles = []*os.File{r}
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	switch cfg.Net {
	case NetNew:
		attr.Cloneflags = unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWNET
	case NetHost:
		attr.Cloneflags = unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWUTS
	case NetJoin:
		cmd.Env = append(cmd.Env, nsenter.JoinEnv(cfg.Join, unix.CLONE_NEWNS|unix.CLONE_NEWUTS)...)
	}
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return nil, explainStartError(err)
	}
	c.cmd, c.proc = cmd, cmd.Process
	if cfg.Net != NetJoin {
		if err := mapIDs(cmd.Process.Pid); err != nil {
			c.Kill()
			return nil, err
		}
	}
	if _, err := w.Write([]byte{1}); err != nil {
		c.Kill()
		return nil, fmt.Errorf("start the command's init: %w", err)
	}
	ok = true
	return c, nil
}

// writeFile writes a file the child bind-mounts and returns its path.
func writeFile(dir, name string, data []byte) (string, error) {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return "", fmt.Errorf("write %s: %w", p, err)
	}
	return p, nil
}

// Resume returns the Child that Start started, in a ferry that has since
// executed itself anew (the sandbox's stage 2): the process pid, still
// ferry's child, and releaseFD, the write end of its release pipe
// (ReleaseFD before the execution).
func Resume(pid, releaseFD int) (*Child, error) {
	p, err := os.FindProcess(pid)
	if err != nil {
		return nil, fmt.Errorf("find the command's process %d: %w", pid, err)
	}
	return &Child{proc: p, release: os.NewFile(uintptr(releaseFD), "release")}, nil
}

// ReleaseFD is the fd of the release pipe's write end, for Resume; it is
// left open across an execution.
func (c *Child) ReleaseFD() (int, error) {
	fd := int(c.release.Fd())
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
		return -1, fmt.Errorf("keep the command's release pipe open: %w", err)
	}
	return fd, nil
}

// PID is the command's process ID (the same before and after exec).
func (c *Child) PID() int { return c.proc.Pid }

// Release lets the command run: its init mounts the files, sets the
// hostname and executes it.
func (c *Child) Release() error {
	defer c.release.Close()
	if _, err := c.release.Write([]byte{1}); err != nil {
		return fmt.Errorf("start the command: %w", err)
	}
	return nil
}

// Signal sends sig to the command.
func (c *Child) Signal(sig os.Signal) error { return c.proc.Signal(sig) }

// Kill ends a command that was never released, and cleans up.
func (c *Child) Kill() {
	c.release.Close()
	c.proc.Kill()
	c.wait()
	c.cleanup()
}

// Wait waits for the command to end and returns its exit status the way a
// shell reports it (128+N for a command killed by signal N).
func (c *Child) Wait() (int, error) {
	defer c.cleanup()
	state, err := c.wait()
	if state == nil {
		return 1, err
	}
	ws, ok := state.Sys().(syscall.WaitStatus)
	if !ok {
		return 1, err
	}
	if ws.Signaled() {
		return 128 + int(ws.Signal()), nil
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return 1, err
	}
	return ws.ExitStatus(), nil
}

// wait reaps the command: through exec.Cmd when this ferry started it
// (which also ends its I/O copying, if any), else through its process.
func (c *Child) wait() (*os.ProcessState, error) {
	if c.cmd != nil {
		err := c.cmd.Wait()
		return c.cmd.ProcessState, err
	}
	return c.proc.Wait()
}

func (c *Child) cleanup() {
	if c.release != nil {
		c.release.Close()
	}
	if c.dir != "" {
		os.RemoveAll(c.dir)
	}
}
