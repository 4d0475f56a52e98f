package sandbox

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"github.com/ferrynet/ferry/nsenter"
)

// State is what stage 1 hands to the sandboxed stage 2: fd numbers that
// stay open across the re-execution, and what stage 1 resolved.
type State struct {
	// TAPFD is the TAP device's queue; VNet says it carries virtio-net
	// headers.
	TAPFD int  `json:"tap_fd"`
	VNet  bool `json:"vnet,omitempty"`
	// TAPHelper, when set (TAPFD is then -1), is a TAP helper stage 1
	// started without waiting for it (see [nsenter.PendingTAP.KeepAcrossExec]):
	// stage 2 receives the TAP from it with [nsenter.ResumeTAP].
	TAPHelper string `json:"tap_helper,omitempty"`
	// APIFD is the bound, listening API socket, or -1; APIDirFD (an O_PATH
	// fd of its directory) and APIName let stage 2 remove it at exit, when
	// its path may not exist in the sandbox.
	APIFD    int    `json:"api_fd"`
	APIDirFD int    `json:"api_dir_fd"`
	APIName  string `json:"api_name,omitempty"`
	// PIDFD is a pidfd of the target process, or -1.
	PIDFD int `json:"pid_fd"`
	// DNSUpstreams are the upstreams stage 1 resolved (empty: none found).
	DNSUpstreams []string `json:"dns_upstreams,omitempty"`
	// Seccomp says to install the seccomp filter.
	Seccomp bool `json:"seccomp,omitempty"`
	// Pcap is the absolute path of the --pcap file, which stage 1 created
	// and the sandbox binds writable at that path.
	Pcap string `json:"pcap,omitempty"`
	// Strict says the sandbox was asked for explicitly: a failure to
	// build it, or to install the filter, ends ferry instead of a warning.
	Strict bool `json:"strict,omitempty"`
	// RunPID, for `ferry run`, is the command's process (ferry's child,
	// held before exec) and RunReleaseFD the pipe that lets it run (see
	// spawn.Resume); RunPID is 0 for `ferry attach`.
	RunPID       int `json:"run_pid,omitempty"`
	RunReleaseFD int `json:"run_release_fd,omitempty"`
}

// Exec re-executes ferry in place into the sandbox; see
// [nsenter.ExecSandboxed]. pcap, when not nil, is the open --pcap file at
// st.Pcap. It returns only on failure.
func Exec(st State, t nsenter.Target, pcap *os.File) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("sandbox: encode state: %w", err)
	}
	userns, err := nsenter.SandboxUserns(t)
	if err != nil {
		return err
	}
	var keep []int
	for _, fd := range []int{st.TAPFD, st.APIFD, st.APIDirFD, st.PIDFD} {
		if fd >= 0 {
			keep = append(keep, fd)
		}
	}
	if st.RunPID != 0 {
		keep = append(keep, st.RunReleaseFD)
	}
	o := nsenter.SandboxOpts{Userns: userns, Keep: keep, RemoveDir: st.APIDirFD, Strict: st.Strict, Signals: st.RunPID != 0}
	if pcap != nil {
		o.Writable, o.WritablePath = pcap, st.Pcap
	}
	return nsenter.ExecSandboxed(raw, o)
}

var resumed = sync.OnceValues(func() (*State, error) {
	raw, ok := nsenter.SandboxState()
	if !ok {
		return nil, nil
	}
	st := &State{}
	if err := json.Unmarshal(raw, st); err != nil {
		return nil, fmt.Errorf("sandbox: bad state from stage 1: %w", err)
	}
	return st, nil
})

// Resumed returns the State when this process is the sandboxed stage 2,
// and nil otherwise.
func Resumed() (*State, error) { return resumed() }

// Report says what confined this stage 2 (see [nsenter.SandboxReport]):
// Failed is why the sandbox could not be built (ferry then runs without
// it), LandlockABI the Landlock ABI applied (0: none, LandlockNote says
// why).
func Report() nsenter.Report { return nsenter.SandboxReport() }
