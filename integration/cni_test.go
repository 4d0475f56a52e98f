package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ferrynet/ferry/integration/nstest"
)

// cniWorld is a bridgeWorld whose ferry is driven as a CNI plugin by
// libcni. libcni finds the plugin by its type, "ferry", in a directory
// holding a wrapper that runs the ferry binary inside the host namespace.
type cniWorld struct {
	*bridgeWorld
	pluginDir string
	cacheDir  string
	cni       *libcni.CNIConfig
}

func newCNIWorld(t *testing.T, timeout time.Duration) *cniWorld {
	t.Helper()
	w := &cniWorld{bridgeWorld: newBridgeWorld(t, timeout), pluginDir: t.TempDir(), cacheDir: t.TempDir()}
	if err := os.Chmod(w.pluginDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ipPath, err := exec.LookPath("ip")
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("#!/bin/sh\nexec %s netns exec %s %s \"$@\"\n", ipPath, w.host.Name, w.lab.Ferry)
	if err := os.WriteFile(filepath.Join(w.pluginDir, "ferry"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	w.cni = libcni.NewCNIConfigWithCacheDir([]string{w.pluginDir}, w.cacheDir, nil)
	return w
}

// conflist is a network list of one ferry plugin with the given settings.
func (w *cniWorld) conflist(t *testing.T, version, name string, extra map[string]any) *libcni.NetworkConfigList {
	t.Helper()
	plugin := map[string]any{
		"type": "ferry", "subnet": "172.31.230.0/24", "gateway": "172.31.230.1",
		"ipMasq": true, "isolate": true, "mtu": 1500, "stateDir": w.stateDir,
		"capabilities": map[string]bool{"portMappings": true},
	}
	for k, v := range extra {
		plugin[k] = v
	}
	b, err := json.Marshal(map[string]any{"cniVersion": version, "name": name, "plugins": []any{plugin}})
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func runtimeConf(id string, ns nstest.Netns, ports ...map[string]any) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: ns.Path, IfName: "eth0"}
	if len(ports) > 0 {
		rt.CapabilityArgs = map[string]any{"portMappings": ports}
	}
	return rt
}

// add runs ADD and returns the container's address.
func (w *cniWorld) add(t *testing.T, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) string {
	t.Helper()
	res, err := w.cni.AddNetworkList(w.ctx, list, rt)
	if err != nil {
		t.Fatalf("ADD %s: %v", rt.ContainerID, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.IPs) != 1 || r.IPs[0].Interface == nil || r.Interfaces[*r.IPs[0].Interface].Sandbox != rt.NetNS {
		t.Fatalf("ADD %s: result %s lacks one address on the container's interface", rt.ContainerID, r)
	}
	ip, _ := netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	if !netip.MustParsePrefix("172.31.230.0/24").Contains(ip) || ip.String() == "172.31.230.1" {
		t.Fatalf("ADD %s: address %s, want one of 172.31.230.0/24 but the gateway", rt.ContainerID, ip)
	}
	return ip.String()
}

// libcni drives ADD, CHECK, GC and DEL: addresses are assigned, the
// containers reach each other and a server beyond the host, a published
// port reaches its container, GC drops what is not valid, DEL twice
// succeeds, and the host namespace ends as it began.
func TestCNILibcni(t *testing.T) {
	t.Parallel()
	w := newCNIWorld(t, 2*time.Minute)
	server, err := w.lab.NewNetns(w.ctx, "server")
	if err != nil {
		t.Fatal(err)
	}
	veth, err := nstest.NewVeth(w.ctx, w.host, "172.31.231.1/24", server, "172.31.231.2/24")
	if err != nil {
		t.Fatal(err)
	}
	// Removed explicitly: a namespace's links go with it only
	// asynchronously, which may outlast the host's final check.
	t.Cleanup(func() { nstest.Exec(context.Background(), "ip", "-n", w.host.Name, "link", "del", veth.NameA) })
	serveGreeting(t, server, "172.31.231.2:80", "server")
	before := w.snapshot(t)

	list := w.conflist(t, "1.1.0", "cnitest", nil)
	if err := w.cni.GetStatusNetworkList(w.ctx, list); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	a, b := w.container(t), w.container(t)
	rtA := runtimeConf("ctr-a", a, map[string]any{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"})
	rtB := runtimeConf("ctr-b", b)
	ipA, ipB := w.add(t, list, rtA), w.add(t, list, rtB)
	if ipA == ipB {
		t.Fatalf("both containers got %s", ipA)
	}
	for _, n := range []nstest.Netns{a, b} {
		serveGreeting(t, n, ":80", n.Name)
	}
	mustFetch(t, w.ctx, a, ipB+":80", b.Name+" saw "+ipA)
	// bridge's hairpin MASQUERADE of a published port matches every
	// source of the subnet, so a sees b as the gateway here.
	mustFetch(t, w.ctx, b, ipA+":80", a.Name+" saw ")
	mustFetch(t, w.ctx, a, "172.31.231.2:80", "server saw 172.31.231.1")
	mustFetch(t, w.ctx, server, "172.31.231.1:8080", a.Name+" saw 172.31.231.2")

	for _, rt := range []*libcni.RuntimeConf{rtA, rtB} {
		if err := w.cni.CheckNetworkList(w.ctx, list, rt); err != nil {
			t.Fatalf("CHECK %s: %v", rt.ContainerID, err)
		}
	}
	// CHECK notices a container interface that went away.
	if _, err := nstest.MustExec(w.ctx, "ip", "-n", b.Name, "link", "del", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := w.cni.CheckNetworkList(w.ctx, list, rtB); err == nil {
		t.Errorf("CHECK of a container without its interface succeeded")
	}

	// GC through a libcni without cached attachments, so that the
	// plugin's own GC is what removes ctr-b.
	gc := libcni.NewCNIConfigWithCacheDir([]string{w.pluginDir}, t.TempDir(), nil)
	if err := gc.GCNetworkList(w.ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "ctr-a", IfName: "eth0"}}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if eps := w.inspect(t, "cnitest").Containers; len(eps) != 1 {
		t.Errorf("after GC, %d attachments; want ctr-a's alone: %+v", len(eps), eps)
	}
	mustFetch(t, w.ctx, server, "172.31.231.1:8080", a.Name+" saw 172.31.231.2")

	for i := range 2 {
		for _, rt := range []*libcni.RuntimeConf{rtA, rtB} {
			if err := w.cni.DelNetworkList(w.ctx, list, rt); err != nil {
				t.Fatalf("DEL %s (#%d): %v", rt.ContainerID, i+1, err)
			}
		}
	}
	if res := w.mustFerryNet(t, "ls", "-q"); strings.TrimSpace(res.Stdout) != "" {
		t.Errorf("networks left after DEL: %q", res.Stdout)
	}
	w.expectSnapshot(t, before)
	if pids := bridgeDNSProcesses(w.stateDir); len(pids) > 0 {
		t.Errorf("DNS responders left running: %v", pids)
	}
}

// envPassthru makes the test binary a CNI plugin that passes its
// prevResult on (adding an interface "dummy0" when it has none), so that
// tests can chain plugins around ferry without the reference plugins.
const envPassthru = "FERRY_TEST_CNI_PASSTHRU"

func init() {
	if os.Getenv(envPassthru) != "1" || os.Getenv("CNI_COMMAND") == "" {
		return
	}
	add := func(args *skel.CmdArgs) error {
		conf := &types.NetConf{}
		if err := json.Unmarshal(args.StdinData, conf); err != nil {
			return err
		}
		result := &types100.Result{CNIVersion: types100.ImplementedSpecVersion}
		if conf.RawPrevResult != nil {
			if err := version.ParsePrevResult(conf); err != nil {
				return err
			}
			r, err := types100.NewResultFromResult(conf.PrevResult)
			if err != nil {
				return err
			}
			result = r
		} else {
			result.Interfaces = []*types100.Interface{{Name: "dummy0"}}
		}
		return types.PrintResult(result, conf.CNIVersion)
	}
	nop := func(*skel.CmdArgs) error { return nil }
	skel.PluginMainFuncs(skel.CNIFuncs{Add: add, Check: nop, Del: nop, GC: nop, Status: nop}, version.All, "passthru")
	os.Exit(0)
}

// Older spec versions that libcni negotiates (1.0.0, 0.4.0) work too, and
// the plugin takes its place in a chain: it adds to the prevResult it is
// given, and the plugin after it gets ferry's result as prevResult.
func TestCNIVersionsAndChaining(t *testing.T) {
	t.Parallel()
	w := newCNIWorld(t, 2*time.Minute)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("#!/bin/sh\n%s=1 exec %s \"$@\"\n", envPassthru, self)
	if err := os.WriteFile(filepath.Join(w.pluginDir, "passthru"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	before := w.snapshot(t)
	for _, v := range []string{"1.1.0", "1.0.0", "0.4.0"} {
		list := w.conflist(t, v, "cni"+strings.ReplaceAll(v, ".", ""), nil)
		pass := &libcni.NetworkConfig{Network: &types.NetConf{Type: "passthru"}, Bytes: []byte(`{"type":"passthru"}`)}
		list.Plugins = []*libcni.NetworkConfig{pass, list.Plugins[0], pass}
		c := w.container(t)
		rt := &libcni.RuntimeConf{ContainerID: "ctr-" + v, NetNS: c.Path, IfName: "eth0"}
		res, err := w.cni.AddNetworkList(w.ctx, list, rt)
		if err != nil {
			t.Fatalf("%s ADD: %v", v, err)
		}
		if res.Version() != v {
			t.Errorf("%s ADD: result version %s", v, res.Version())
		}
		r, err := types100.NewResultFromResult(res)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Interfaces) != 4 || r.Interfaces[0].Name != "dummy0" || len(r.IPs) != 1 || r.IPs[0].Interface == nil ||
			r.Interfaces[*r.IPs[0].Interface].Name != "eth0" || r.Interfaces[*r.IPs[0].Interface].Sandbox != c.Path {
			t.Errorf("%s ADD: result %s; want dummy0 of the first plugin, then ferry's interfaces and eth0's address", v, r)
		}
		if err := w.cni.CheckNetworkList(w.ctx, list, rt); err != nil {
			t.Errorf("%s CHECK: %v", v, err)
		}
		for range 2 {
			if err := w.cni.DelNetworkList(w.ctx, list, rt); err != nil {
				t.Fatalf("%s DEL: %v", v, err)
			}
		}
	}
	w.expectSnapshot(t, before)
}

// cniCall runs the plugin once with env and stdin and returns its stdout
// and exit status.
func (w *cniWorld) cniCall(t *testing.T, env []string, stdin string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(w.ctx, filepath.Join(w.pluginDir, "ferry"))
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// The plugin answers VERSION with its versions, and errors are CNI error
// objects with the spec's codes.
func TestCNIVersionAndErrors(t *testing.T) {
	t.Parallel()
	w := newCNIWorld(t, time.Minute)
	info, err := w.cni.GetVersionInfo(w.ctx, "ferry")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		if !slices.Contains(info.SupportedVersions(), v) {
			t.Errorf("VERSION: %v lacks %s", info.SupportedVersions(), v)
		}
	}
	c := w.container(t)
	good := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"errs","type":"ferry","stateDir":%q}`, w.stateDir)
	env := func(netns string) []string {
		e := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=ctr-errs", "CNI_IFNAME=eth0", "CNI_PATH=" + w.pluginDir}
		if netns != "" {
			e = append(e, "CNI_NETNS="+netns)
		}
		return e
	}
	for _, tc := range []struct {
		what  string
		env   []string
		stdin string
		code  uint
	}{
		{"undecodable config", env(c.Path), `{"cniVersion":"1.0.0","name":`, types.ErrDecodingFailure},
		{"bad subnet", env(c.Path), strings.Replace(good, `"type"`, `"subnet":"300.1.2.0/24","type"`, 1), types.ErrInvalidNetworkConfig},
		{"gateway outside subnet", env(c.Path), strings.Replace(good, `"type"`, `"subnet":"172.31.230.0/24","gateway":"10.9.9.9","type"`, 1), types.ErrInvalidNetworkConfig},
		{"bad mtu", env(c.Path), strings.Replace(good, `"type"`, `"mtu":9,"type"`, 1), types.ErrInvalidNetworkConfig},
		{"unsupported version", env(c.Path), strings.Replace(good, "1.0.0", "9.9.9", 1), types.ErrIncompatibleCNIVersion},
		{"no CNI_NETNS", env(""), good, types.ErrInvalidEnvironmentVariables},
		{"netns missing", env("/run/netns/ferry-no-such-netns"), good, types.ErrUnknownContainer},
	} {
		out, code := w.cniCall(t, tc.env, tc.stdin)
		var e types.Error
		if code == 0 || json.Unmarshal([]byte(out), &e) != nil || e.Code != tc.code || e.Msg == "" {
			t.Errorf("%s: exit %d, %q; want a CNI error with code %d", tc.what, code, out, tc.code)
		} else {
			t.Logf("%s: %d %s", tc.what, e.Code, e.Msg)
		}
	}
	// DEL of what never was succeeds.
	del := []string{"CNI_COMMAND=DEL", "CNI_CONTAINERID=ctr-none", "CNI_IFNAME=eth0", "CNI_PATH=" + w.pluginDir}
	if out, code := w.cniCall(t, del, good); code != 0 {
		t.Errorf("DEL of an unknown container: exit %d, %s", code, out)
	}
}
