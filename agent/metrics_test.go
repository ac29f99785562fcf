package agent

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/policy"
)

// gathered is every series of the policy drop metrics, "namespace/policy direction" → value.
func gathered(t *testing.T, m *Metrics) (map[string]float64, float64) {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	held := -1.0
	for _, mf := range mfs {
		switch mf.GetName() {
		case "podroute_policy_dropped_packets_total":
			for _, s := range mf.GetMetric() {
				out[label(s, "namespace")+"/"+label(s, "policy")+" "+label(s, "direction")] = s.GetCounter().GetValue()
			}
		case "podroute_policy_held_packets_total":
			held = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return out, held
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// The kernel's counters, per chain, become per-policy counters: the first read is a
// baseline, later reads add each chain's growth to every policy behind it, a chain made
// after the first read counts from zero, and one made anew under its name counts again.
func TestDropCounter(t *testing.T) {
	m := newMetrics()
	in := shopInput()
	deny := denyAll("shop")
	in.Policies = append(in.Policies, deny)
	rs := policy.Compile(&in)
	pass := &policyPass{in: &in, rs: rs}
	ingress := rs.Ingress["prabcdef012345"]
	if ingress == "" {
		t.Fatal("web-0 has no ingress chain")
	}
	dc := newDropCounter(m)
	step := func(drops policy.Drops, pass *policyPass, want map[string]float64, wantHeld float64) {
		t.Helper()
		dc.update(drops, pass)
		got, held := gathered(t, m)
		if !maps.Equal(got, want) || held != wantHeld {
			t.Errorf("after %v: got %v held %v, want %v held %v", drops, got, held, want, wantHeld)
		}
	}
	// Counted by an agent before this one: not this one's to report.
	step(policy.Drops{ingress: 40, policy.HoldChain: 3}, pass, map[string]float64{}, 0)
	both := func(n float64) map[string]float64 {
		return map[string]float64{"shop/allow-web ingress": n, "shop/deny-all ingress": n}
	}
	step(policy.Drops{ingress: 45, policy.HoldChain: 4}, pass, both(5), 1)
	step(policy.Drops{ingress: 45, policy.HoldChain: 4}, pass, both(5), 1)
	// The table was deleted and made again: the chain's counter starts over.
	step(policy.Drops{ingress: 2, policy.HoldChain: 4}, pass, both(7), 1)

	// allow-web goes: web-0's chain is new (its name is its rules), counting from zero, and
	// only for deny-all; the gone policy's series goes too.
	in2 := in
	in2.Policies = []*networkingv1.NetworkPolicy{deny}
	rs2 := policy.Compile(&in2)
	ingress2 := rs2.Ingress["prabcdef012345"]
	if ingress2 == ingress {
		t.Fatal("same chain for other policies")
	}
	pass2 := &policyPass{in: &in2, rs: rs2}
	step(policy.Drops{ingress: 2, ingress2: 6, policy.HoldChain: 4}, pass2,
		map[string]float64{"shop/deny-all ingress": 13}, 1)
	// The old chain, still in the kernel a moment, keeps its owners.
	step(policy.Drops{ingress: 3, ingress2: 6}, pass2,
		map[string]float64{"shop/deny-all ingress": 14, "shop/allow-web ingress": 1}, 1)
	// Then it is deleted, and forgotten.
	step(policy.Drops{ingress2: 6}, pass2,
		map[string]float64{"shop/deny-all ingress": 14, "shop/allow-web ingress": 1}, 1)
	if _, ok := dc.owners[ingress]; ok {
		t.Error("a deleted chain's owners are kept")
	}
}

// The policy loop starts reading the drop counters when it has metrics.
func TestPolicyLoopReadsDrops(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	src := &fakePolicySource{changed: make(chan struct{}, 1)}
	var reads atomic.Int64
	np := &networkPolicy{source: src, kernel: &nopPolicyKernel{}, log: log, said: newProblemLog(log), metrics: newMetrics(),
		readDrops: func(context.Context) (policy.Drops, error) { reads.Add(1); return policy.Drops{}, nil }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go np.run(ctx)
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return reads.Load() > 0, nil
	}); err != nil {
		t.Fatal("the drop counters were never read")
	}
}

type nopPolicyKernel struct{}

func (nopPolicyKernel) Sync(context.Context, *policy.Ruleset) (policy.Changes, error) {
	return policy.Changes{}, nil
}
func (nopPolicyKernel) Invalidate() {}

// bfdGauge is podroute_bgp_peer_bfd_up (or the gauge named), "peer kind" → value.
func bfdGauge(t *testing.T, m *Metrics, name ...string) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == append(name, "podroute_bgp_peer_bfd_up")[0] {
			for _, s := range mf.GetMetric() {
				out[label(s, "peer")+" "+label(s, "kind")] = s.GetGauge().GetValue()
			}
		}
	}
	return out
}

// The BFD gauge has a series per peer running BFD, 1 when up, refreshed after a pass; a
// peer that drops BFD loses its series.
func TestPeerBFDGauge(t *testing.T) {
	r, nodes, tor, c := newBFDRig(t, nil)
	peers := r.a.settings.Snapshot().Peers
	r.pass(t)
	want := map[string]float64{
		nodes[1].Addresses[0].String() + " mesh": 1,
		nodes[2].Addresses[0].String() + " mesh": 0,
	}
	if got := bfdGauge(t, r.a.metrics); !maps.Equal(got, want) {
		t.Errorf("gauge %v, want %v (the ToR runs no BFD: no series)", got, want)
	}
	flaps := map[string]float64{nodes[1].Addresses[0].String() + " mesh": 0, nodes[2].Addresses[0].String() + " mesh": 2}
	if got := bfdGauge(t, r.a.metrics, "podroute_bgp_peer_bfd_flaps"); !maps.Equal(got, flaps) {
		t.Errorf("flaps gauge %v, want %v", got, flaps)
	}

	c.MeshBFD = nil
	peers[0].BFD = &bgp.BFDConfig{MinTx: 100 * time.Millisecond, MinRx: 100 * time.Millisecond, Multiplier: 3}
	r.a.settings = &fakeSettings{config.Settings{Synced: true, Configuration: c, Peers: peers}}
	r.a.metricsAt = time.Time{} // the gauges refresh at most every peerMetricsEvery
	r.pass(t)
	if got, want := bfdGauge(t, r.a.metrics), map[string]float64{tor.String() + " external": 1}; !maps.Equal(got, want) {
		t.Errorf("after the mesh dropped BFD: gauge %v, want %v", got, want)
	}
}
