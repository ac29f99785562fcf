package cni_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podroute/podroute/test/cniutil"
)

// TestBadInput runs the binary directly, the way a runtime execs it, with broken
// configurations and environments: each must fail with the spec's error code, a message that
// names what is wrong, no stack trace, and no trace on the node.
func TestBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, [][]cniutil.Range{cniutil.V4, cniutil.V6})
	good := cniutil.PluginConf(t, e.conf)
	withField := func(mutate func(map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		mutate(m)
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ranges := func(subnet string) func(map[string]any) {
		return func(m map[string]any) {
			m["ipam"].(map[string]any)["ranges"] = [][]map[string]string{{{"subnet": subnet}}}
		}
	}
	missingNS := filepath.Join(t.TempDir(), "no-such-netns")

	for _, tc := range []struct {
		name     string
		stdin    []byte
		setup    func(*testing.T, *cniutil.Pod, *cniutil.Invocation)
		wantCode uint
		wantMsg  []string // each must appear in the message (case-insensitive)
	}{
		{name: "malformed JSON", stdin: []byte(`{"cniVersion":"1.1.0","name":"podnet","type":"podroute",`), wantCode: types.ErrDecodingFailure},
		{name: "mtu of the wrong type", stdin: withField(func(m map[string]any) { m["mtu"] = "big" }), wantCode: types.ErrDecodingFailure, wantMsg: []string{"mtu"}},
		{name: "mtu out of range", stdin: withField(func(m map[string]any) { m["mtu"] = 10 }), wantCode: types.ErrInvalidNetworkConfig, wantMsg: []string{"mtu"}},
		{name: "invalid subnet", stdin: withField(ranges("10.244.1.0/33")), wantCode: types.ErrInvalidNetworkConfig, wantMsg: []string{"subnet"}},
		{name: "subnet not an address", stdin: withField(ranges("pods")), wantCode: types.ErrInvalidNetworkConfig, wantMsg: []string{"subnet"}},
		{name: "chained plugins not a list", stdin: withField(func(m map[string]any) { m["chainedPlugins"] = "portmap" }),
			wantCode: types.ErrDecodingFailure, wantMsg: []string{"chainedPlugins"}},
		{name: "chained plugin with a directory", stdin: withField(func(m map[string]any) { m["chainedPlugins"] = []string{"/opt/cni/bin/portmap"} }),
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: []string{"chainedPlugins[0]", "/opt/cni/bin/portmap"}},
		{name: "chained plugin twice", stdin: withField(func(m map[string]any) { m["chainedPlugins"] = []string{"portmap", "portmap"} }),
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: []string{"chainedPlugins[1]", "twice"}},
		{name: "missing CNI_NETNS", setup: func(_ *testing.T, _ *cniutil.Pod, inv *cniutil.Invocation) { inv.Unset = []string{"CNI_NETNS"} },
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: []string{"CNI_NETNS"}},
		{name: "missing CNI_IFNAME", setup: func(_ *testing.T, _ *cniutil.Pod, inv *cniutil.Invocation) { inv.Unset = []string{"CNI_IFNAME"} },
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: []string{"CNI_IFNAME"}},
		{name: "netns does not exist", setup: func(_ *testing.T, _ *cniutil.Pod, inv *cniutil.Invocation) { inv.NetNS = missingNS },
			wantMsg: []string{"CNI_NETNS"}},
		{name: "interface name taken", setup: func(t *testing.T, p *cniutil.Pod, _ *cniutil.Invocation) { takeIfName(t, p) },
			wantCode: 100, wantMsg: []string{"eth0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := e.node.NewPod(t)
			stdin := tc.stdin
			if stdin == nil {
				stdin = good
			}
			inv := cniutil.Invocation{Command: "ADD", Stdin: stdin}.ForPod(p)
			if tc.setup != nil {
				tc.setup(t, p, &inv)
			}
			out, err := e.node.Exec(context.Background(), cniutil.PodroutePath(), inv)
			if err != nil {
				t.Fatal(err)
			}
			assertNoPanic(t, out)
			if out.ExitCode == 0 {
				t.Fatalf("ADD succeeded; %s", out.Output())
			}
			if out.Err == nil {
				t.Fatalf("exit %d without a CNI error on stdout; %s", out.ExitCode, out.Output())
			}
			if tc.wantCode != 0 && out.Err.Code != tc.wantCode {
				t.Errorf("code %d (%s), want %d", out.Err.Code, out.Err.Msg, tc.wantCode)
			}
			full := strings.ToLower(out.Err.Msg + " " + out.Err.Details)
			for _, m := range tc.wantMsg {
				if !strings.Contains(full, strings.ToLower(m)) {
					t.Errorf("message %q does not name %s", out.Err.Msg, m)
				}
			}
			t.Logf("code %d: %s", out.Err.Code, out.Err.Msg)
			e.assertClean(t)
		})
	}
}

func assertNoPanic(t *testing.T, out *cniutil.Outcome) {
	t.Helper()
	all := string(out.Stdout) + string(out.Stderr)
	for _, bad := range []string{"goroutine ", "panic:", "runtime error"} {
		if strings.Contains(all, bad) {
			t.Errorf("plugin output contains %q; %s", bad, out.Output())
		}
	}
}

// TestKillMidAdd SIGKILLs the plugin at random moments of ADD, many times, the way a node
// under pressure or a runtime timeout would, and retries each pod with a new sandbox as the
// kubelet does. Live pods never share an address; DEL of every sandbox and a GC with no valid
// attachment leave no veth, no podroute route and no reservation.
func TestKillMidAdd(t *testing.T) {
	e := newEnv(t, [][]cniutil.Range{cniutil.V4, cniutil.V6})
	conf := cniutil.PluginConf(t, e.conf)
	ctx := context.Background()
	const pods = 40
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d", seed)

	type live struct {
		sandbox *cniutil.Pod
		ips     []net.IP
	}
	var (
		sandboxes []*cniutil.Pod
		lives     []live
		owner     = map[string]*cniutil.Pod{} // address -> live sandbox holding it
		killed    int
		leftVeth  int // killed ADDs that had created the host veth
		leftRes   int // killed ADDs that had reserved addresses
	)
	run := func(p *cniutil.Pod, command string, kill time.Duration) *cniutil.Outcome {
		t.Helper()
		inv := cniutil.Invocation{Command: command, Stdin: conf, KillAfter: kill}.ForPod(p)
		out, err := e.node.Exec(ctx, cniutil.PodroutePath(), inv)
		if err != nil {
			t.Fatal(err)
		}
		assertNoPanic(t, out)
		return out
	}

	for i := range pods {
		name := fmt.Sprintf("victim-%d", i)
		for attempt := 0; ; attempt++ {
			sb := e.node.NewPod(t)
			sb.Name = name // a new sandbox of the same pod: same host veth name
			sandboxes = append(sandboxes, sb)
			var kill time.Duration
			if attempt < 3 {
				kill = time.Duration(rng.Int64N(int64(20*time.Millisecond))) + time.Microsecond
			}
			held := len(e.reservations(t))
			out := run(sb, "ADD", kill)
			if out.Killed {
				killed++
				if l, _ := cniutil.Link(e.node.NS, sb.HostVeth()); l != nil {
					leftVeth++
				}
				if len(e.reservations(t)) > held {
					leftRes++
				}
				if rng.IntN(2) == 0 { // sometimes the runtime gets to clean up, sometimes not
					if d := run(sb, "DEL", 0); d.ExitCode != 0 {
						t.Fatalf("DEL after a killed ADD: %s", d.Output())
					}
				}
				continue
			}
			if out.ExitCode != 0 {
				t.Fatalf("pod %s attempt %d: ADD failed: %s", name, attempt, out.Output())
			}
			raw, err := version.NewResult("1.1.0", out.Stdout)
			if err != nil {
				t.Fatalf("parse ADD result %q: %v", out.Stdout, err)
			}
			res, err := current.NewResultFromResult(raw)
			if err != nil {
				t.Fatal(err)
			}
			for _, ip := range podIPs(res) {
				if other, dup := owner[ip.String()]; dup {
					t.Fatalf("%s/%s got %s, which live sandbox %s of %s still holds", sb.Name, sb.ContainerID[:12], ip, other.ContainerID[:12], other.Name)
				}
				owner[ip.String()] = sb
			}
			lives = append(lives, live{sb, podIPs(res)})
			break
		}
	}
	t.Logf("%d pods, %d sandboxes, %d ADDs killed (%d with the host veth made, %d with addresses held)",
		pods, len(sandboxes), killed, leftVeth, leftRes)

	// Every live pod is wired and reachable, whatever its predecessors left behind.
	for _, l := range lives {
		for _, ip := range l.ips {
			r, err := cniutil.RouteTo(e.node.NS, hostPrefix(ip))
			if err != nil || r == nil {
				t.Errorf("%s: no host route to %s (%v)", l.sandbox.Name, ip, err)
			}
		}
		if err := cniutil.Ping(e.node.NS, l.ips[0], pingTimeout); err != nil {
			t.Errorf("%s: %v", l.sandbox.Name, err)
		}
	}
	if names, _ := cniutil.LinkNames(e.node.NS, "pr"); len(names) != pods {
		t.Errorf("%d host veths with %d live pods: %v", len(names), pods, names)
	}

	for _, sb := range sandboxes {
		if d := run(sb, "DEL", 0); d.ExitCode != 0 {
			t.Errorf("DEL %s/%s: %s", sb.Name, sb.ContainerID[:12], d.Output())
		}
	}
	t.Run("after DEL of every sandbox", e.assertClean)
	if err := e.node.GC(ctx, e.list, nil); err != nil {
		t.Fatalf("GC: %v", err)
	}
	t.Run("after GC", e.assertClean)
}
