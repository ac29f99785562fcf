package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/egress"
	"github.com/podroute/podroute/routes"
)

// fakeNodes is a node source whose Nodes the test sets.
type fakeNodes struct {
	mu    sync.Mutex
	nodes []cluster.Node
}

func (f *fakeNodes) Run(context.Context)               {}
func (f *fakeNodes) Synced() bool                      { return true }
func (f *fakeNodes) Changed() <-chan struct{}          { return nil }
func (f *fakeNodes) Health() (bool, string, time.Time) { return true, "", time.Time{} }
func (f *fakeNodes) Nodes() []cluster.Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.nodes)
}
func (f *fakeNodes) set(nodes []cluster.Node) {
	f.mu.Lock()
	f.nodes = nodes
	f.mu.Unlock()
}

// ops counts the calls a fake made, by kind.
type ops map[string]int

func (o ops) total() int {
	n := 0
	for _, v := range o {
		n += v
	}
	return n
}

// fakeRouter is a bgp.Router that records what it was asked and holds the routes the test
// says were learned.
type fakeRouter struct {
	mu         sync.Mutex
	cfg        bgp.Config
	started    bool
	stopped    bool
	neighbors  map[netip.Addr]bgp.Neighbor
	advertised map[netip.Prefix]bgp.Attributes
	filter     bgp.ImportFilter
	learned    []bgp.Route
	calls      ops
	// fail makes the named operation fail.
	fail map[string]error
}

func newFakeRouter(cfg bgp.Config) *fakeRouter {
	return &fakeRouter{cfg: cfg, neighbors: map[netip.Addr]bgp.Neighbor{}, advertised: map[netip.Prefix]bgp.Attributes{},
		filter: cfg.ImportFilter, calls: ops{}, fail: map[string]error{}}
}

func (r *fakeRouter) call(op string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[op]++
	return r.fail[op]
}

func (r *fakeRouter) Start(context.Context) error { r.started = true; return r.call("start") }
func (r *fakeRouter) Stop(bool) error             { r.stopped = true; return r.call("stop") }
func (r *fakeRouter) AddNeighbor(_ context.Context, n bgp.Neighbor) error {
	if err := r.call("add-neighbor"); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.neighbors[n.Address]; dup {
		return fmt.Errorf("neighbor %s exists", n.Address)
	}
	r.neighbors[n.Address] = n
	return nil
}
func (r *fakeRouter) UpdateNeighbor(_ context.Context, n bgp.Neighbor) error {
	if err := r.call("update-neighbor"); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.neighbors[n.Address]; !ok {
		return fmt.Errorf("neighbor %s unknown", n.Address)
	}
	r.neighbors[n.Address] = n
	return nil
}
func (r *fakeRouter) RemoveNeighbor(_ context.Context, a netip.Addr) error {
	if err := r.call("remove-neighbor"); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.neighbors[a]; !ok {
		return fmt.Errorf("neighbor %s unknown", a)
	}
	delete(r.neighbors, a)
	return nil
}
func (r *fakeRouter) Advertise(_ context.Context, p netip.Prefix, a bgp.Attributes) error {
	if err := r.call("advertise"); err != nil {
		return err
	}
	r.mu.Lock()
	r.advertised[p] = a
	r.mu.Unlock()
	return nil
}
func (r *fakeRouter) Withdraw(_ context.Context, p netip.Prefix) error {
	if err := r.call("withdraw"); err != nil {
		return err
	}
	r.mu.Lock()
	delete(r.advertised, p)
	r.mu.Unlock()
	return nil
}
func (r *fakeRouter) UpdateImportFilter(_ context.Context, f bgp.ImportFilter) error {
	if err := r.call("update-filter"); err != nil {
		return err
	}
	r.mu.Lock()
	r.filter = f
	r.mu.Unlock()
	return nil
}
func (r *fakeRouter) Sessions(ctx context.Context) ([]bgp.PeerState, error) {
	return r.Neighbors(ctx, false)
}

func (r *fakeRouter) Neighbors(context.Context, bool) ([]bgp.PeerState, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []bgp.PeerState
	for _, n := range r.neighbors {
		out = append(out, bgp.PeerState{Neighbor: n, State: bgp.StateEstablished})
	}
	return out, nil
}
func (r *fakeRouter) Routes(context.Context) ([]bgp.Route, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.learned), nil
}
func (r *fakeRouter) Synced(context.Context) (bool, error)      { return true, nil }
func (r *fakeRouter) Subscribe(context.Context) <-chan struct{} { return nil }
func (r *fakeRouter) Refusals() []bgp.Refusal                   { return nil }

func (r *fakeRouter) resetCalls() ops {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = ops{}
	return c
}

// fakeTable is a kernel route table in memory.
type fakeTable struct {
	routes map[netip.Prefix]routes.Route
	calls  ops // routes added, replaced, removed
}

func newFakeTable() *fakeTable {
	return &fakeTable{routes: map[netip.Prefix]routes.Route{}, calls: ops{}}
}

func (t *fakeTable) Owned() ([]routes.Route, error) {
	var out []routes.Route
	for _, r := range t.routes {
		out = append(out, r)
	}
	return out, nil
}

func (t *fakeTable) Reconcile(want []routes.Route) (routes.Result, error) {
	var res routes.Result
	seen := map[netip.Prefix]bool{}
	for _, w := range want {
		seen[w.Prefix] = true
		old, ok := t.routes[w.Prefix]
		switch {
		case !ok:
			res.Added++
		case !slices.Equal(old.NextHops, w.NextHops) || old.Blackhole != w.Blackhole:
			res.Replaced++
		default:
			continue
		}
		t.routes[w.Prefix] = w
	}
	for p := range t.routes {
		if !seen[p] {
			delete(t.routes, p)
			res.Removed++
		}
	}
	t.calls["added"] += res.Added
	t.calls["replaced"] += res.Replaced
	t.calls["removed"] += res.Removed
	return res, nil
}

// fakeMasq records the egress configurations applied.
type fakeMasq struct{ applied []egress.Config }

func (m *fakeMasq) Sync(_ context.Context, c egress.Config) error {
	m.applied = append(m.applied, c)
	return nil
}
