package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/podroute/podroute/agentapi"
)

// now is the clock of every test; the fixed data is timed relative to it.
var now = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeSource stands in for the agent, which implements agentapi.Source; the socket, server,
// client and CLI around it are real.
type fakeSource struct {
	status    agentapi.Status
	neighbors []agentapi.Neighbor
	routes    agentapi.Routes
	pools     agentapi.LoadBalancerPools
	err       error
}

func (f *fakeSource) LoadBalancerPools(context.Context) (agentapi.LoadBalancerPools, error) {
	return f.pools, f.err
}

func (f *fakeSource) Status() agentapi.Status          { return f.status }
func (f *fakeSource) Routes() (agentapi.Routes, error) { return f.routes, f.err }

// Neighbors gives the advertised counts only when asked for, as the agent does.
func (f *fakeSource) Neighbors(advertised bool) ([]agentapi.Neighbor, error) {
	ns := slices.Clone(f.neighbors)
	for i := range ns {
		if !advertised {
			ns[i].Advertised = nil
		}
	}
	return ns, f.err
}

func count(n uint64) *uint64 { return &n }

func fixture() *fakeSource {
	return &fakeSource{
		status: agentapi.Status{
			Node: "node-a", PodCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, ASN: 64512, RouterID: "10.0.0.11",
			CNIConfig: "/etc/cni/net.d/10-podroute.conflist", CNIConfigWritten: true,
			APIWatchHealthy: true, BGPStarted: true, KubeProxyMode: "nftables", Ready: true,
			Routes:        agentapi.Counts{Learned: 3, Installed: 4, Advertised: 2, Refused: 2, Failed: 1},
			LastReconcile: now.Add(-12 * time.Second), Version: "v0.1.0",
		},
		// Deliberately out of order: the output sorts by address, numerically.
		neighbors: []agentapi.Neighbor{
			{Address: "192.0.2.1", ASN: 65001, Kind: "external", State: "active", Since: now.Add(-2*time.Hour - 3*time.Minute),
				Advertised: count(0), LastError: "dial tcp 192.0.2.1:179: connect: connection refused"},
			{Address: "10.0.0.12", ASN: 64512, Kind: "mesh", Node: "node-b", State: "established", Since: now.Add(-5*time.Minute - 12*time.Second),
				Received: 2, Accepted: 2, Advertised: count(2)},
			{Address: "10.0.0.9", ASN: 64512, Kind: "reflector", State: "established", Since: now.Add(-50 * time.Hour),
				Received: 120, Accepted: 118, Advertised: count(2), Restarting: true},
		},
		routes: agentapi.Routes{
			Routes: []agentapi.Route{
				{Prefix: "10.244.12.0/24", NextHops: []string{"10.0.0.12"}, ASPath: []uint32{}, SourcePeer: "10.0.0.12", Installed: true},
				{Prefix: "10.244.2.0/24", NextHops: []string{"10.0.0.12", "10.0.0.13"}, ASPath: []uint32{}, SourcePeer: "10.0.0.9", Installed: true},
				{Prefix: "172.16.0.0/16", NextHops: []string{"192.0.2.1"}, ASPath: []uint32{65001, 65010}, SourcePeer: "192.0.2.1",
					InstallError: "file exists\n(route owned by another protocol)"},
			},
			Refused: []agentapi.Refusal{
				{Prefix: "10.244.1.0/24", Peer: "10.0.0.12", Reason: "overlaps this node's pod CIDR", Count: 1, FirstSeen: now.Add(-time.Hour), LastSeen: now.Add(-90 * time.Second)},
				{Prefix: "0.0.0.0/0", Peer: "192.0.2.1", Reason: "default route not allowed", Count: 42, FirstSeen: now.Add(-time.Hour), LastSeen: now.Add(-3 * time.Second)},
			},
			Advertised: []string{"fd00:10:244:1::/64", "10.244.1.0/24"},
			Services: []agentapi.ServiceRoute{
				{Prefix: "203.0.113.10/32", Class: "loadBalancerIPs", Services: []string{"shop/web", "shop/web-udp"}, Communities: []string{"64512:400"}},
				{Prefix: "10.96.0.0/16", Class: "clusterIPs"},
				{Prefix: "2001:db8:1b::10/128", Class: "loadBalancerIPs", Services: []string{"shop/web"}, Communities: []string{"64512:400", "65000:1"}, ASPathPrepend: 2},
			},
		},
		pools: agentapi.LoadBalancerPools{Installed: true, Pools: []agentapi.LoadBalancerPool{
			{Name: "public", Addresses: []string{"203.0.113.0/28", "2001:db8:1b::/120"}, IPv4: &agentapi.PoolUsage{Allocated: 3, Total: 16},
				IPv6: &agentapi.PoolUsage{Allocated: 1, Total: 256}, Valid: "True"},
			{Name: "shadow", Addresses: []string{"203.0.113.8/29"}, Valid: "False", Message: "overlaps pool public"},
		}},
	}
}

// sockPath is a socket path in a test directory, short enough for sun_path (108 bytes).
func sockPath(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.sock")
	if len(p) > 90 {
		dir, err := os.MkdirTemp("", "prctl")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		p = filepath.Join(dir, "agent.sock")
	}
	return p
}

// serveFixture serves src on a real socket for the test's duration.
func serveFixture(t *testing.T, src agentapi.Source) string {
	t.Helper()
	path := sockPath(t)
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	var serveErr error
	go func() {
		serveErr = agentapi.NewServer(src, nil).Serve(ctx, path)
		close(finished)
	}()
	t.Cleanup(func() {
		cancel()
		<-finished
		if serveErr != nil {
			t.Errorf("Serve: %v", serveErr)
		}
	})
	err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		select {
		case <-finished:
			return false, fmt.Errorf("Serve returned early: %v", serveErr)
		default:
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	})
	if wait.Interrupted(err) {
		err = errors.New("agent socket never came up")
	}
	if err != nil {
		t.Fatal(err)
	}
	return path
}

type result struct {
	code           int
	stdout, stderr string
}

// ctl runs podroutectl in-process, as main does, with a fixed clock and environment.
func ctl(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	a := newApp(&out, &errb)
	a.getenv = func(k string) string { return env[k] }
	a.now = func() time.Time { return now }
	code := run(context.Background(), a, args)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func ok(t *testing.T, r result) string {
	t.Helper()
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	return r.stdout
}

// failed checks the one-line error contract and returns the line.
func failed(t *testing.T, r result) string {
	t.Helper()
	if r.code != 1 {
		t.Fatalf("exit %d, want 1; stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("stdout on error: %q", r.stdout)
	}
	first, _, _ := strings.Cut(r.stderr, "\n")
	if !strings.HasPrefix(first, "podroutectl: ") {
		t.Errorf("stderr does not start with podroutectl: %q", r.stderr)
	}
	return first
}

func TestNeighborsTable(t *testing.T) {
	sock := serveFixture(t, fixture())
	got := ok(t, ctl(t, nil, "--socket", sock, "bgp", "neighbors"))
	want := `PEER       ASN    KIND       NODE    STATE        SINCE      RECEIVED  ACCEPTED  INFO
10.0.0.9   64512  reflector  -       established  2d2h ago   120       118       graceful restart
10.0.0.12  64512  mesh       node-b  established  5m12s ago  2         2
192.0.2.1  65001  external   -       active       2h3m ago   0         0         dial tcp 192.0.2.1:179: connect: connection refused
`
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("podroutectl bgp neighbors\n%s", got)

	// The advertised counts cost the speaker a pass of its export policy per neighbour:
	// only with --advertised.
	got = ok(t, ctl(t, nil, "--socket", sock, "bgp", "neighbors", "--advertised"))
	want = `PEER       ASN    KIND       NODE    STATE        SINCE      RECEIVED  ACCEPTED  ADVERTISED  INFO
10.0.0.9   64512  reflector  -       established  2d2h ago   120       118       2           graceful restart
10.0.0.12  64512  mesh       node-b  established  5m12s ago  2         2         2
192.0.2.1  65001  external   -       active       2h3m ago   0         0         0           dial tcp 192.0.2.1:179: connect: connection refused
`
	if got != want {
		t.Errorf("--advertised, got:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("podroutectl bgp neighbors --advertised\n%s", got)
	if out := ok(t, ctl(t, nil, "--socket", sock, "bgp", "neighbors", "-o", "json")); strings.Contains(out, `"advertised"`) {
		t.Errorf("advertised counts in JSON without --advertised:\n%s", out)
	}
}

// The BFD column shows only when a session runs BFD (it is off by default), "-" for the
// others; JSON carries the state as "bfd", and leaves it out without BFD.
func TestNeighborsTableWithBFD(t *testing.T) {
	src := fixture()
	src.neighbors[0].BFD = "down"
	src.neighbors[1].BFD = "up"
	sock := serveFixture(t, src)
	got := ok(t, ctl(t, nil, "--socket", sock, "bgp", "neighbors"))
	want := `PEER       ASN    KIND       NODE    STATE        SINCE      BFD   RECEIVED  ACCEPTED  INFO
10.0.0.9   64512  reflector  -       established  2d2h ago   -     120       118       graceful restart
10.0.0.12  64512  mesh       node-b  established  5m12s ago  up    2         2
192.0.2.1  65001  external   -       active       2h3m ago   down  0         0         dial tcp 192.0.2.1:179: connect: connection refused
`
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("podroutectl bgp neighbors\n%s", got)

	out := ok(t, ctl(t, nil, "--socket", sock, "bgp", "neighbors", "-o", "json"))
	if strings.Count(out, `"bfd": "up"`) != 1 || strings.Count(out, `"bfd": "down"`) != 1 || strings.Count(out, `"bfd"`) != 2 {
		t.Errorf("JSON BFD states:\n%s", out)
	}
}

func TestRoutesTable(t *testing.T) {
	sock := serveFixture(t, fixture())
	got := ok(t, ctl(t, nil, "--socket", sock, "bgp", "routes"))
	want := `Learned routes (3):
PREFIX          NEXT HOPS            AS PATH      FROM       INSTALLED  ERROR
10.244.2.0/24   10.0.0.12,10.0.0.13  -            10.0.0.9   yes
10.244.12.0/24  10.0.0.12            -            10.0.0.12  yes
172.16.0.0/16   192.0.2.1            65001 65010  192.0.2.1  no         file exists (route owned by another protocol)

Refused by the import filter (2):
PREFIX         PEER       REASON                         COUNT  LAST SEEN
0.0.0.0/0      192.0.2.1  default route not allowed      42     3s ago
10.244.1.0/24  10.0.0.12  overlaps this node's pod CIDR  1      1m30s ago

Advertised by this node (2):
PREFIX
10.244.1.0/24
fd00:10:244:1::/64

Service addresses advertised to external peers (3):
PREFIX               CLASS            SERVICES               COMMUNITIES        PREPEND
10.96.0.0/16         clusterIPs       -                      -                  -
203.0.113.10/32      loadBalancerIPs  shop/web,shop/web-udp  64512:400          -
2001:db8:1b::10/128  loadBalancerIPs  shop/web               64512:400 65000:1  2
`
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("podroutectl bgp routes\n%s", got)
}

func TestStatusTable(t *testing.T) {
	sock := serveFixture(t, fixture())
	got := ok(t, ctl(t, nil, "--socket", sock, "status"))
	want := `Node:            node-a
Pod CIDRs:       10.244.1.0/24, fd00:10:244:1::/64
AS:              64512
Router ID:       10.0.0.11
CNI config:      /etc/cni/net.d/10-podroute.conflist (written: yes)
API watch:       healthy
BGP:             started
Kube-proxy:      nftables mode
Ready:           yes
Routes:          learned 3, installed 4, advertised 2, refused 2, failed 1
Last reconcile:  12s ago
Agent version:   v0.1.0

LoadBalancer pools (2):
NAME    IPV4 USED  IPV6 USED  VALID                        ADDRESSES
public  3/16       1/256      True                         203.0.113.0/28,2001:db8:1b::/120
shadow  -          -          False: overlaps pool public  203.0.113.8/29
`
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("podroutectl status\n%s", got)
}

func TestStatusNotReady(t *testing.T) {
	sock := serveFixture(t, &fakeSource{status: agentapi.Status{
		Node: "node-c", NodeProblem: "no podCIDR assigned", APIWatchError: "watch nodes: connection refused",
		NotReadyReasons: []string{"no pod CIDR", "BGP not started"}, LastReconcileErr: "netlink: operation not permitted",
		Problems: []string{"kube-proxy runs in ipvs mode, which podroute does not support: run it in iptables or nftables mode (its --proxy-mode)"},
	}})
	got := ok(t, ctl(t, nil, "--socket", sock, "status"))
	for _, line := range []string{
		"Node:            node-c (problem: no podCIDR assigned)\n",
		"Pod CIDRs:       none assigned\n",
		"AS:              -\n",
		"CNI config:      not written yet\n",
		"API watch:       unhealthy: watch nodes: connection refused\n",
		"BGP:             not started\n",
		"Kube-proxy:      -\n",
		"Ready:           no: no pod CIDR; BGP not started\n",
		"Last reconcile:  never, failed: netlink: operation not permitted\n",
		"Problems:        kube-proxy runs in ipvs mode, which podroute does not support: run it in iptables or nftables mode (its --proxy-mode)\n",
	} {
		if !strings.Contains(got, line) {
			t.Errorf("missing %q in:\n%s", line, got)
		}
	}
	t.Logf("podroutectl status (not ready)\n%s", got)
}

func TestEmptyStates(t *testing.T) {
	sock := serveFixture(t, &fakeSource{})
	if got := ok(t, ctl(t, nil, "--socket", sock, "bgp", "neighbors")); got != "no BGP neighbors configured\n" {
		t.Errorf("neighbors: %q", got)
	}
	got := ok(t, ctl(t, nil, "--socket", sock, "bgp", "routes"))
	want := "Learned routes (0):\nno routes learned from BGP peers\n\n" +
		"Refused by the import filter (0):\nno announcements refused\n\n" +
		"Advertised by this node (0):\nthis node advertises no prefixes\n\n" +
		"Service addresses advertised to external peers (0):\nthis node advertises no Service address\n"
	if got != want {
		t.Errorf("routes:\n%s\nwant:\n%s", got, want)
	}
	if got := ok(t, ctl(t, nil, "--socket", sock, "bgp", "neighbors", "-o", "json")); got != "[]\n" {
		t.Errorf("empty json: %q", got)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	src := fixture()
	sock := serveFixture(t, src)

	var ns []agentapi.Neighbor
	decode(t, json.Unmarshal, ok(t, ctl(t, nil, "--socket", sock, "bgp", "neighbors", "--advertised", "-o", "json")), &ns)
	if len(ns) != 3 || ns[0].Address != "10.0.0.9" || ns[2].Address != "192.0.2.1" {
		t.Fatalf("neighbors not sorted: %+v", ns)
	}
	byAddr := map[string]agentapi.Neighbor{}
	for _, n := range src.neighbors {
		byAddr[n.Address] = n
	}
	for _, n := range ns {
		if !reflect.DeepEqual(n, byAddr[n.Address]) {
			t.Errorf("neighbor %s:\n got %+v\nwant %+v", n.Address, n, byAddr[n.Address])
		}
	}

	var rs agentapi.Routes
	decode(t, json.Unmarshal, ok(t, ctl(t, nil, "--socket", sock, "bgp", "routes", "--output=json")), &rs)
	if want := sortRoutes(src.routes); !reflect.DeepEqual(rs, want) {
		t.Errorf("routes:\n got %+v\nwant %+v", rs, want)
	}

	var st agentapi.Status
	decode(t, json.Unmarshal, ok(t, ctl(t, nil, "--socket", sock, "status", "-o", "json")), &st)
	if !reflect.DeepEqual(st, src.status) {
		t.Errorf("status:\n got %+v\nwant %+v", st, src.status)
	}
	// The timestamp, not the humanized age, is in the structured output.
	out := ok(t, ctl(t, nil, "--socket", sock, "bgp", "neighbors", "-o", "json"))
	if !strings.Contains(out, `"since": "2025-03-01T11:54:48Z"`) {
		t.Errorf("no since timestamp in:\n%s", out)
	}
}

func TestYAML(t *testing.T) {
	src := fixture()
	sock := serveFixture(t, src)

	out := ok(t, ctl(t, nil, "--socket", sock, "status", "-o", "yaml"))
	if !strings.Contains(out, "routerID: 10.0.0.11\n") {
		t.Errorf("yaml does not use the API's field names:\n%s", out)
	}
	var st agentapi.Status
	decode(t, yamlUnmarshal, out, &st)
	if !reflect.DeepEqual(st, src.status) {
		t.Errorf("status:\n got %+v\nwant %+v", st, src.status)
	}
	var rs agentapi.Routes
	decode(t, yamlUnmarshal, ok(t, ctl(t, nil, "--socket", sock, "bgp", "routes", "-o", "YAML")), &rs)
	if len(rs.Routes) != 3 || len(rs.Refused) != 2 || rs.Advertised[0] != "10.244.1.0/24" {
		t.Errorf("routes: %+v", rs)
	}
}

func yamlUnmarshal(b []byte, v any) error { return yaml.Unmarshal(b, v) }

func decode(t *testing.T, unmarshal func([]byte, any) error, s string, into any) {
	t.Helper()
	if err := unmarshal([]byte(s), into); err != nil {
		t.Fatalf("decoding output: %v\n%s", err, s)
	}
}

func TestBadOutputFormat(t *testing.T) {
	line := failed(t, ctl(t, nil, "bgp", "neighbors", "-o", "bogus"))
	if line != `podroutectl: unknown output format "bogus": use one of table, json, yaml` {
		t.Errorf("got %q", line)
	}
}

func TestAgentNotRunning(t *testing.T) {
	sock := sockPath(t)
	for _, args := range [][]string{{"status"}, {"bgp", "neighbors"}, {"bgp", "routes", "-o", "json"}} {
		r := ctl(t, nil, append([]string{"--socket", sock}, args...)...)
		line := failed(t, r)
		want := "podroutectl: podroute agent is not running: no socket at " + sock +
			" (is podroute-agent running on this node? use --socket)"
		if line != want || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: stderr %q\nwant %q", args, r.stderr, want)
		}
	}
	// A socket file nobody listens on.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	line := failed(t, ctl(t, nil, "--socket", sock, "status"))
	if line != "podroutectl: podroute agent is not running: nothing listens on "+sock {
		t.Errorf("got %q", line)
	}
}

func TestSocketFromEnv(t *testing.T) {
	sock := serveFixture(t, fixture())
	out := ok(t, ctl(t, map[string]string{socketEnv: sock}, "status"))
	if !strings.Contains(out, "node-a") {
		t.Errorf("env socket not used:\n%s", out)
	}
	// The flag wins over the environment.
	line := failed(t, ctl(t, map[string]string{socketEnv: sock}, "--socket", sock+".nope", "status"))
	if !strings.Contains(line, "not running") {
		t.Errorf("got %q", line)
	}
}

func TestAgentError(t *testing.T) {
	src := fixture()
	src.err = errors.New("BGP speaker not started yet")
	sock := serveFixture(t, src)
	line := failed(t, ctl(t, nil, "--socket", sock, "bgp", "routes"))
	want := "podroutectl: podroute agent: listing BGP routes: BGP speaker not started yet (HTTP 500 on /v1/bgp/routes)"
	if line != want {
		t.Errorf("got  %q\nwant %q", line, want)
	}
}

func TestTimeout(t *testing.T) {
	sock := sockPath(t)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	start := time.Now()
	line := failed(t, ctl(t, nil, "--socket", sock, "--timeout", "300ms", "status"))
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("took %v", el)
	}
	want := "podroutectl: podroute agent on " + sock + " did not answer within 300ms (raise --timeout, or check the agent's logs)"
	if line != want {
		t.Errorf("got  %q\nwant %q", line, want)
	}
	if line := failed(t, ctl(t, nil, "--timeout", "0s", "status")); !strings.Contains(line, "--timeout must be positive") {
		t.Errorf("got %q", line)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		line, hint string
	}{
		{[]string{"status", "--bogus"}, "podroutectl: unknown flag: --bogus", "Run 'podroutectl status --help' for usage."},
		{[]string{"stauts"}, `podroutectl: unknown command "stauts" for "podroutectl" (did you mean status?)`, "Run 'podroutectl --help' for usage."},
		{[]string{"bgp", "neighbor"}, `podroutectl: unknown command "neighbor" for "podroutectl bgp" (did you mean neighbors?)`, "Run 'podroutectl bgp --help' for usage."},
		{[]string{"bgp", "routes", "extra"}, `podroutectl: unknown command "extra" for "podroutectl bgp routes"`, "Run 'podroutectl bgp routes --help' for usage."},
	} {
		r := ctl(t, nil, tc.args...)
		if got := failed(t, r); got != tc.line {
			t.Errorf("%v: got %q\nwant %q", tc.args, got, tc.line)
		}
		if want := tc.line + "\n" + tc.hint + "\n"; r.stderr != want {
			t.Errorf("%v: stderr %q\nwant %q", tc.args, r.stderr, want)
		}
	}
}

func TestHelpAndCompletion(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"status", "--help"}, {"bgp", "--help"}, {"bgp", "neighbors", "--help"}, {"bgp", "routes", "--help"}, {"version", "--help"}, {"bgp"}} {
		out := ok(t, ctl(t, nil, args...))
		if !strings.Contains(out, "Examples:") || !strings.Contains(out, "Usage:") {
			t.Errorf("%v: help without usage or examples:\n%s", args, out)
		}
	}
	for _, sh := range []string{"bash", "zsh", "fish", "powershell"} {
		if out := ok(t, ctl(t, nil, "completion", sh)); !strings.Contains(out, "podroutectl") {
			t.Errorf("completion %s: %q", sh, out[:min(len(out), 80)])
		}
	}
}

func TestVersion(t *testing.T) {
	out := ok(t, ctl(t, nil, "version", "--client"))
	if !strings.HasPrefix(out, "Client:  dev (go") || strings.Contains(out, "Agent") {
		t.Errorf("client version: %q", out)
	}
	sock := serveFixture(t, fixture())
	out = ok(t, ctl(t, nil, "--socket", sock, "version"))
	if !strings.Contains(out, "Agent:   v0.1.0 (node node-a)\n") {
		t.Errorf("version: %q", out)
	}
	// An agent that does not answer is reported, not an error.
	var v versionInfo
	decode(t, json.Unmarshal, ok(t, ctl(t, nil, "--socket", sock+".nope", "version", "-o", "json")), &v)
	if v.Agent != nil || !strings.Contains(v.AgentError, "not running") || v.Client.Version == "" {
		t.Errorf("version json: %+v", v)
	}
}
