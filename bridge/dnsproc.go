package bridge

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The DNS responder of a network is `ferry net serve-dns --state-dir DIR
// NETID`, a detached child of the ferry that created the network. Its
// command line identifies it: stopping or finding a responder never relies
// on a recorded PID alone, which may have been reused.

// ServeDNSCommand is the hidden subcommand that runs a responder.
const ServeDNSCommand = "serve-dns"

func dnsArgs(stateDir, netID string) []string {
	return []string{"net", ServeDNSCommand, "--state-dir", stateDir, netID}
}

// startDNS starts n's responder and waits until it listens.
func startDNS(stateDir string, n *Network, ch *changes) (int, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("DNS responder: %w", err)
	}
	defer r.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		w.Close()
		return 0, fmt.Errorf("DNS responder: %w", err)
	}
	defer devnull.Close()
	log, err := os.OpenFile(dnsLog(stateDir, n.ID), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		w.Close()
		return 0, fmt.Errorf("DNS responder: %w", err)
	}
	defer log.Close()
	cmd := exec.Command("/proc/self/exe", dnsArgs(stateDir, n.ID)...)
	cmd.Args[0] = "ferry"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, log
	cmd.ExtraFiles = []*os.File{w}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, EnvCrashAfter+"=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return 0, fmt.Errorf("start the DNS responder: %w", err)
	}
	pid := cmd.Process.Pid
	ch.done("start DNS responder")
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1)
	if got, _ := r.Read(buf); got != 1 || buf[0] != '1' {
		cmd.Process.Kill()
		<-exited
		msg, _ := os.ReadFile(dnsLog(stateDir, n.ID))
		return 0, fmt.Errorf("the DNS responder of network %s did not start: %s", n.Name, strings.TrimSpace(string(msg)))
	}
	return pid, nil
}

func dnsLog(stateDir, netID string) string {
	return filepath.Join(stateDir, netID+".dns.log")
}

// dnsProcesses lists the responders of stateDir that are running (not
// zombies), by PID, with the network ID each serves.
func dnsProcesses(stateDir string) map[int]string {
	out := map[int]string{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !bytes.Contains(cmdline, []byte(ServeDNSCommand)) {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
		want := dnsArgs(stateDir, "")
		if len(args) != len(want)+1 || !equal(args[1:len(args)-1], want[:len(want)-1]) {
			continue
		}
		if alive(pid) {
			out[pid] = args[len(args)-1]
		}
	}
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, after, ok := bytes.Cut(stat, []byte(") "))
	return ok && len(after) > 0 && after[0] != 'Z' && after[0] != 'X'
}

// stopDNS kills the responder with PID pid and waits until it is gone.
func stopDNS(pid int, ch *changes) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		return fmt.Errorf("stop DNS responder %d: %w", pid, err)
	}
	ch.done("stop DNS responder")
	for deadline := time.Now().Add(5 * time.Second); alive(pid); {
		if time.Now().After(deadline) {
			return fmt.Errorf("DNS responder %d still running 5s after SIGKILL", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}
