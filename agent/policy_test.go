package agent

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/knftables"

	"github.com/podroute/podroute/policy"
)

// fakePolicySource is the cluster's policy objects as the test sets them.
type fakePolicySource struct {
	mu      sync.Mutex
	in      policy.Input
	synced  atomic.Bool
	changed chan struct{}
}

func (f *fakePolicySource) Run(context.Context)      {}
func (f *fakePolicySource) Synced() bool             { return f.synced.Load() }
func (f *fakePolicySource) Changed() <-chan struct{} { return f.changed }
func (f *fakePolicySource) Input() *policy.Input {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := f.in
	return &in
}
func (f *fakePolicySource) set(in policy.Input) {
	f.mu.Lock()
	f.in = in
	f.mu.Unlock()
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// denyAll is a default-deny ingress policy for every pod of namespace ns.
func denyAll(ns string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "deny-all"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}
}

// The policy loop on podroute's real policy reconciler, over knftables' fake: nothing is
// applied before the informers have synced, the first pass runs once they have (signal or
// not), and every change is applied.
func TestNetworkPolicyLoop(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	fake := knftables.NewFake(knftables.InetFamily, policy.TableName)
	src := &fakePolicySource{changed: make(chan struct{}, 1)}
	np := &networkPolicy{source: src, kernel: policy.NewReconciler(fake, log), log: log, said: newProblemLog(log)}
	pod := policy.LocalPod{Pod: policy.Pod{Namespace: "shop", Name: "web-0", Labels: map[string]string{"app": "web"},
		IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}}, HostVeth: "prabcdef012345"}
	src.set(policy.Input{Policies: []*networkingv1.NetworkPolicy{denyAll("shop")}, Local: []policy.LocalPod{pod}})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go np.run(ctx)
	time.Sleep(3 * policyRetry / 2)
	if n := np.passes.Load(); n != 0 {
		t.Fatalf("%d passes before the informers synced: a partial view must never be applied", n)
	}
	if fake.Table != nil {
		t.Fatal("table written before the informers synced")
	}

	src.synced.Store(true)
	waitPolicy(t, np, func(st *policyStatus) bool { return st.Synced && st.Active && st.Policed == 1 })
	if fake.Table == nil {
		t.Fatal("no table after the first pass")
	}

	// The last policy goes: the table goes with it.
	src.set(policy.Input{Local: []policy.LocalPod{pod}})
	waitPolicy(t, np, func(st *policyStatus) bool { return st.Synced && !st.Active })
	if fake.Table != nil {
		t.Fatal("table kept with no NetworkPolicy left")
	}
	st, problems := np.report()
	if !st.Synced || st.Active || st.PolicedPods != 0 || len(problems) != 0 {
		t.Fatalf("report %+v, problems %v", st, problems)
	}
}

func waitPolicy(t *testing.T, np *networkPolicy, ok func(*policyStatus) bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		st := np.status.Load()
		return st != nil && ok(st), nil
	})
	if err != nil {
		t.Fatalf("policy status never as expected: %+v", np.status.Load())
	}
}
