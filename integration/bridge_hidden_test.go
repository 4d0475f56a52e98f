package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrynet/ferry/integration/nstest"
)

// A container's namespace pinned where `ferry net` cannot see it (podman
// as root leaves an empty file at the path in other mount namespaces)
// keeps its attachment while it lives, and loses it once it dies.
func TestBridgeHiddenNamespace(t *testing.T) {
	t.Parallel()
	w := newBridgeWorld(t, 2*time.Minute)
	w.mustFerryNet(t, "create", "hid")

	// The "container": a process in a namespace of its own, made from
	// inside the host namespace, bind-mounted at a path of the test's.
	ctx, cancel := context.WithTimeout(w.ctx, time.Minute)
	defer cancel()
	holder := exec.CommandContext(ctx, "ip", "netns", "exec", w.host.Name, "unshare", "-n", "sleep", "300")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		holder.Process.Kill()
		holder.Wait()
	})
	nsPath := "/proc/" + strconv.Itoa(holder.Process.Pid) + "/ns/net"
	for {
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(holder.Process.Pid) + "/comm")
		if strings.TrimSpace(string(comm)) == "sleep" {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the holder never reached sleep")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pin := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(pin, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := nstest.MustExec(ctx, "mount", "--bind", nsPath, pin); err != nil {
		t.Fatal(err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			nstest.Exec(context.Background(), "umount", pin)
		}
	})
	w.mustFerryNet(t, "connect", "hid", pin, "--name", "hidden")
	veth := endpoint(t, w.inspect(t, "hid"), nstest.Netns{Name: "hidden", Path: pin}).HostVeth
	if veth == "" {
		t.Fatal("inspect names no host interface")
	}

	// The path now shows an empty file: the namespace lives on elsewhere.
	if _, err := nstest.MustExec(ctx, "umount", pin); err != nil {
		t.Fatal(err)
	}
	mounted = false
	w.mustFerryNet(t, "ls")
	if v := w.inspect(t, "hid"); len(v.Containers) != 1 {
		t.Fatalf("a live attachment was released when its path went out of sight: %+v", v.Containers)
	}
	if !hostLinkExists(t, w, veth) {
		t.Fatalf("veth %s was removed while its namespace lives", veth)
	}

	// The namespace dies with its holder: the next call releases it.
	holder.Process.Kill()
	holder.Wait()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if v := w.inspect(t, "hid"); len(v.Containers) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the attachment of a dead namespace was never released")
		}
		time.Sleep(200 * time.Millisecond)
	}
	w.mustFerryNet(t, "rm", "hid")
}

// hostLinkExists reports whether the host namespace has a link named name.
func hostLinkExists(t *testing.T, w *bridgeWorld, name string) bool {
	t.Helper()
	res, err := nstest.Exec(w.ctx, "ip", "-n", w.host.Name, "link", "show", "dev", name)
	if err != nil {
		t.Fatal(err)
	}
	return res.ExitCode == 0
}
