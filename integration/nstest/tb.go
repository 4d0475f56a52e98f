package nstest

import (
	"fmt"
	"os"
	"sync"
)

// TB is the part of testing.TB the harness needs: somewhere to register
// teardown, to log, and to report errors found during teardown.
// *testing.T satisfies it; programs use [Teardown].
type TB interface {
	Cleanup(func())
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
}

// Teardown is a [TB] for programs that are not tests. Cleanup functions run
// in reverse order when Run is called.
type Teardown struct {
	// Verbose makes Logf print to stderr; otherwise logs are dropped.
	Verbose bool

	mu     sync.Mutex
	fns    []func()
	failed bool
}

// Cleanup registers f to run at teardown.
func (td *Teardown) Cleanup(f func()) {
	td.mu.Lock()
	defer td.mu.Unlock()
	td.fns = append(td.fns, f)
}

// Logf prints a log line to stderr when Verbose is set.
func (td *Teardown) Logf(format string, args ...any) {
	if td.Verbose {
		fmt.Fprintf(os.Stderr, "  log: "+format+"\n", args...)
	}
}

// Errorf prints an error to stderr and marks the teardown as failed.
func (td *Teardown) Errorf(format string, args ...any) {
	td.mu.Lock()
	td.failed = true
	td.mu.Unlock()
	fmt.Fprintf(os.Stderr, "error: "+format+"\n", args...)
}

// Failed reports whether Errorf was called.
func (td *Teardown) Failed() bool {
	td.mu.Lock()
	defer td.mu.Unlock()
	return td.failed
}

// Run runs the registered cleanup functions, last registered first. It may
// be called more than once; each function runs once.
func (td *Teardown) Run() {
	for {
		td.mu.Lock()
		if len(td.fns) == 0 {
			td.mu.Unlock()
			return
		}
		f := td.fns[len(td.fns)-1]
		td.fns = td.fns[:len(td.fns)-1]
		td.mu.Unlock()
		f()
	}
}
