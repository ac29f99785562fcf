package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/routes"
)

// rig is an agent on fakes: Nodes set by the test, a recording speaker, a kernel table in
// memory. It runs the agent's real pass (desired state and every reconciler) without root.
type rig struct {
	a       *Agent
	nodes   *fakeNodes
	table   *fakeTable
	masq    *fakeMasq
	routers []*fakeRouter
	// routerFail is applied to every new speaker.
	routerFail map[string]error
}

func newRig(tb testing.TB, nodes []cluster.Node, table *fakeTable, restarting bool) *rig {
	tb.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := testConfig()
	cfg.NodeName = nodes[0].Name
	cfg.Masquerade = true
	cfg.StaleTimeout = time.Hour
	cfg.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00:10:244::/48")}
	if err := cfg.Validate(); err != nil {
		tb.Fatal(err)
	}
	r := &rig{nodes: &fakeNodes{}, table: table, masq: &fakeMasq{}, routerFail: map[string]error{}}
	r.nodes.set(nodes)
	a := &Agent{cfg: cfg, log: log, nodes: r.nodes, metrics: newMetrics(), said: newProblemLog(log), restarting: restarting}
	a.snap.Store(&snapshot{})
	a.kubeProxy.Store(&kubeProxyState{})
	a.newRouter = func(c bgp.Config) (bgp.Router, error) {
		fr := newFakeRouter(c)
		for op, err := range r.routerFail {
			fr.fail[op] = err
		}
		r.routers = append(r.routers, fr)
		return fr, nil
	}
	a.buildReconcilers(table, r.masq, time.Now())
	r.a = a
	return r
}

func (r *rig) router() *fakeRouter { return r.routers[len(r.routers)-1] }

func (r *rig) pass(tb testing.TB) *snapshot {
	tb.Helper()
	r.a.pass(context.Background())
	return r.a.snap.Load()
}

// meshNodes are n nodes (i from 1) with 10.<i>.0/24 and fd00:10:244:<i>::/64, at 192.0.2.i
// (192.0.3.x from the 256th), inside the rig's cluster CIDRs.
func meshNodes(n int) []cluster.Node {
	var out []cluster.Node
	for i := 1; i <= n; i++ {
		out = append(out, meshNode(i))
	}
	return out
}

func meshNode(i int) cluster.Node {
	return cluster.Node{
		Name: fmt.Sprintf("node-%d", i),
		PodCIDRs: []netip.Prefix{
			netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
			netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x02, 0x44, byte(i >> 8), byte(i)}), 64),
		},
		Addresses: []netip.Addr{netip.AddrFrom4([4]byte{192, 0, byte(2 + i>>8), byte(i)})},
	}
}

// learnedFrom is the route BGP would learn from a mesh node for its IPv4 pod CIDR.
func learnedFrom(n cluster.Node) bgp.Route {
	return bgp.Route{Prefix: n.PodCIDRs[0], NextHops: []netip.Addr{n.Addresses[0]}}
}

func TestPassBringsUpTheNode(t *testing.T) {
	nodes := meshNodes(3)
	r := newRig(t, nodes, newFakeTable(), false)
	snap := r.pass(t)
	if snap.LastErr != nil {
		t.Fatalf("pass: %v", snap.LastErr)
	}
	fr := r.router()
	if !fr.started || fr.cfg.ASN != DefaultASN || fr.cfg.RouterID != nodes[0].Addresses[0] {
		t.Fatalf("speaker %+v", fr.cfg)
	}
	if len(fr.neighbors) != 2 || len(snap.Peers) != 2 {
		t.Fatalf("neighbors %v, snapshot peers %v: want the other two nodes", fr.neighbors, snap.Peers)
	}
	for _, p := range nodes[0].PodCIDRs {
		if _, ok := fr.advertised[p]; !ok {
			t.Errorf("%s not advertised: %v", p, fr.advertised)
		}
	}
	if len(snap.Advertised) != 2 {
		t.Errorf("snapshot advertised %v", snap.Advertised)
	}
	for _, p := range nodes[0].PodCIDRs {
		if rt, ok := r.table.routes[p]; !ok || !rt.Blackhole {
			t.Errorf("no blackhole for own %s: %v", p, r.table.routes)
		}
	}
	if len(r.masq.applied) != 1 || len(r.masq.applied[0].PodCIDRs) != 2 {
		t.Errorf("egress applied %v", r.masq.applied)
	}
	st := r.a.Status()
	if !st.Ready || !st.BGPStarted || st.Routes.Advertised != 2 || st.Routes.Installed != 2 {
		t.Errorf("status %+v", st)
	}

	// Routes learned reach the kernel on the next pass.
	fr.learned = []bgp.Route{learnedFrom(nodes[1]), learnedFrom(nodes[2])}
	snap = r.pass(t)
	for _, n := range nodes[1:] {
		rt, ok := r.table.routes[n.PodCIDRs[0]]
		if !ok || len(rt.NextHops) != 1 || rt.NextHops[0].Gateway != n.Addresses[0] {
			t.Errorf("route to %s: %+v", n.Name, rt)
		}
	}
	if snap.Learned != 2 || len(snap.Installed) != 4 {
		t.Errorf("snapshot learned %d installed %v", snap.Learned, snap.Installed)
	}
}

func TestPassWithNothingChangedDoesNothing(t *testing.T) {
	nodes := meshNodes(5)
	r := newRig(t, nodes, newFakeTable(), false)
	r.pass(t)
	r.router().resetCalls()
	r.table.calls = ops{}
	for range 3 {
		r.pass(t)
	}
	if c := r.router().resetCalls(); c.total() != 0 {
		t.Errorf("speaker calls on unchanged passes: %v", c)
	}
	if r.table.calls.total() != 0 {
		t.Errorf("kernel changes on unchanged passes: %v", r.table.calls)
	}
	if len(r.masq.applied) != 1 {
		t.Errorf("egress re-applied %d times", len(r.masq.applied))
	}
}

// A Node joining or leaving costs one neighbour and one filter update, whatever the size of
// the cluster: no other session is touched and nothing is re-advertised.
func TestNodeEventCostsWhatItChanges(t *testing.T) {
	const n = 200
	nodes := meshNodes(n)
	r := newRig(t, nodes, newFakeTable(), false)
	r.pass(t)
	fr := r.router()
	if len(fr.neighbors) != n-1 {
		t.Fatalf("%d neighbors, want %d", len(fr.neighbors), n-1)
	}
	fr.resetCalls()

	joined := meshNode(n + 1)
	r.nodes.set(append(meshNodes(n), joined))
	r.pass(t)
	if c := fr.resetCalls(); c["add-neighbor"] != 1 || c["update-filter"] != 1 || c.total() != 2 {
		t.Errorf("join: speaker calls %v, want one add-neighbor and one update-filter", c)
	}
	if _, ok := fr.neighbors[joined.Addresses[0]]; !ok {
		t.Errorf("joined node not a neighbor")
	}
	if got := fr.filter.PeerPrefixes[joined.Addresses[0]]; len(got) != 2 {
		t.Errorf("filter for the joined node: %v, want its two pod CIDRs", got)
	}

	fr.learned = append(fr.learned, learnedFrom(joined))
	r.table.calls = ops{}
	r.pass(t)
	if r.table.calls["added"] != 1 || r.table.calls.total() != 1 {
		t.Errorf("kernel changes for one learned route: %v", r.table.calls)
	}

	r.nodes.set(meshNodes(n))
	fr.learned = nil
	fr.resetCalls()
	r.table.calls = ops{}
	r.pass(t)
	if c := fr.resetCalls(); c["remove-neighbor"] != 1 || c["update-filter"] != 1 || c.total() != 2 {
		t.Errorf("leave: speaker calls %v, want one remove-neighbor and one update-filter", c)
	}
	if r.table.calls["removed"] != 1 || r.table.calls.total() != 1 {
		t.Errorf("kernel changes for the node leaving: %v", r.table.calls)
	}
}

// A new mesh peer must not come up while the filter that restricts it to its own pod CIDRs
// failed to apply; existing sessions stay.
func TestFilterFailureHoldsBackNewPeers(t *testing.T) {
	r := newRig(t, meshNodes(3), newFakeTable(), false)
	r.pass(t)
	fr := r.router()
	fr.fail["update-filter"] = errors.New("speaker busy")
	r.nodes.set(meshNodes(4))
	snap := r.pass(t)
	if snap.LastErr == nil {
		t.Fatal("pass hid the filter error")
	}
	if len(fr.neighbors) != 2 {
		t.Fatalf("neighbors %v: the new node must wait for its filter", fr.neighbors)
	}
	delete(fr.fail, "update-filter")
	if snap = r.pass(t); snap.LastErr != nil {
		t.Fatal(snap.LastErr)
	}
	if len(fr.neighbors) != 3 {
		t.Fatalf("neighbors %v after the filter applied", fr.neighbors)
	}
}

// A new BGP identity (here the node's address, which is its router ID) needs a new speaker:
// the old one stops and the new one gets every neighbour and advertisement afresh.
func TestIdentityChangeRestartsTheSpeaker(t *testing.T) {
	nodes := meshNodes(3)
	r := newRig(t, nodes, newFakeTable(), false)
	r.pass(t)
	old := r.router()
	nodes[0].Addresses = []netip.Addr{netip.MustParseAddr("192.0.2.200")}
	r.nodes.set(nodes)
	r.pass(t)
	if len(r.routers) != 2 || !old.stopped {
		t.Fatalf("speakers %d, old stopped %v", len(r.routers), old.stopped)
	}
	nr := r.router()
	if nr.cfg.RouterID != netip.MustParseAddr("192.0.2.200") || len(nr.neighbors) != 2 || len(nr.advertised) != 2 {
		t.Fatalf("new speaker: router ID %v, %d neighbors, %d advertised", nr.cfg.RouterID, len(nr.neighbors), len(nr.advertised))
	}
}

// After a restart the routes a previous run left stay until BGP has resynchronised.
func TestRestartKeepsStaleRoutesUntilSynced(t *testing.T) {
	nodes := meshNodes(3)
	table := newFakeTable()
	stale := routes.Route{Prefix: nodes[2].PodCIDRs[0], NextHops: []routes.NextHop{{Gateway: nodes[2].Addresses[0]}}}
	table.routes[stale.Prefix] = stale
	r := newRig(t, nodes, table, true)
	r.pass(t)
	fr := r.router()
	if !fr.cfg.Restarting {
		t.Error("speaker not told it restarted")
	}
	// The fake speaker reports synced at once: the stale route goes on the first pass, as
	// it would once every peer sent End-of-RIB.
	if _, ok := table.routes[stale.Prefix]; ok {
		t.Error("stale route kept although BGP resynchronised")
	}

	table2 := newFakeTable()
	table2.routes[stale.Prefix] = stale
	r2 := newRig(t, nodes, table2, true)
	r2.a.speaker.newRouter = func(c bgp.Config) (bgp.Router, error) { return &unsyncedRouter{newFakeRouter(c)}, nil }
	r2.pass(t)
	if _, ok := table2.routes[stale.Prefix]; !ok {
		t.Error("stale route removed before BGP resynchronised")
	}
}

type unsyncedRouter struct{ *fakeRouter }

func (unsyncedRouter) Synced(context.Context) (bool, error) { return false, nil }

// racingRouter learns a peer's routes and its End-of-RIB between the agent's two questions,
// as a session coming up after a restart does: the first Synced answers true, and by then the
// routes are in.
type racingRouter struct {
	*fakeRouter
	arrive []bgp.Route
}

func (r *racingRouter) Synced(context.Context) (bool, error) {
	r.mu.Lock()
	r.learned = append(r.learned, r.arrive...)
	r.arrive = nil
	r.mu.Unlock()
	return true, nil
}

// After a restart, routes that arrive just before End-of-RIB are never swept with the stale
// ones: the sweep must judge by what was learned once BGP said it had resynchronised.
func TestRestartSweepKeepsRoutesLearnedBeforeEndOfRIB(t *testing.T) {
	nodes := meshNodes(3)
	table := newFakeTable()
	for _, n := range nodes[1:] {
		table.routes[n.PodCIDRs[0]] = routes.Route{Prefix: n.PodCIDRs[0], NextHops: []routes.NextHop{{Gateway: n.Addresses[0]}}}
	}
	r := newRig(t, nodes, table, true)
	r.a.speaker.newRouter = func(c bgp.Config) (bgp.Router, error) {
		return &racingRouter{fakeRouter: newFakeRouter(c), arrive: []bgp.Route{learnedFrom(nodes[1]), learnedFrom(nodes[2])}}, nil
	}
	r.pass(t)
	if table.calls["removed"] != 0 || table.calls["added"] != 2 {
		t.Fatalf("kernel changes %v: the routes learned before End-of-RIB were swept (want only the two blackholes added)", table.calls)
	}
	for _, n := range nodes[1:] {
		if _, ok := table.routes[n.PodCIDRs[0]]; !ok {
			t.Errorf("route to %s gone", n.Name)
		}
	}
}
