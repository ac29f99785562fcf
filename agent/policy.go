package agent

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/podroute/podroute/agentapi"
	"github.com/podroute/podroute/policy"
)

// policySource is the cluster's NetworkPolicies, Namespaces and Pods (cluster.PolicyWatcher).
type policySource interface {
	Run(ctx context.Context)
	Synced() bool
	Changed() <-chan struct{}
	Input() *policy.Input
}

// policyKernel is podroute's NetworkPolicy table in the kernel (policy.Reconciler).
type policyKernel interface {
	Sync(ctx context.Context, rs *policy.Ruleset) (policy.Changes, error)
	Invalidate()
}

// policyCheckEvery is how often the table is read back from the kernel even when nothing
// changed, so rules removed by hand come back.
const policyCheckEvery = 5 * time.Minute

// policyRetry is the wait after a failed pass before the next one.
const policyRetry = 2 * time.Second

// networkPolicy enforces NetworkPolicy for this node's pods. It runs on a loop of its own,
// woken by its own informers: policy depends on Pods, Namespaces and NetworkPolicies only,
// never on BGP or Nodes, so a Node event costs it nothing and a slow nft transaction never
// holds back routing (nor a BGP storm policy).
type networkPolicy struct {
	source policySource
	kernel policyKernel
	log    *slog.Logger
	said   *problemLog
	// logDrops asks for dropped packets in the kernel log (--policy-log-drops).
	logDrops bool
	// metrics, when set, get the drop counters (countDrops); readDrops reads them
	// (policy.ReadDrops when nil).
	metrics   *Metrics
	readDrops func(context.Context) (policy.Drops, error)
	// passes counts the passes, for tests; status is the last pass, for the API; last is
	// what the last pass compiled, for the API's questions and the drop counters.
	passes atomic.Int64
	status atomic.Pointer[policyStatus]
	last   atomic.Pointer[policyPass]
}

// policyPass is what one pass compiled: the Input it read (never changed once read) and its
// Ruleset.
type policyPass struct {
	in *policy.Input
	rs *policy.Ruleset
}

// policyStatus is the last policy pass as the local API shows it.
type policyStatus struct {
	Synced   bool // the informers had their first list and a pass applied it
	Active   bool // some NetworkPolicy exists: the table is in the kernel
	Policed  int  // local pods some policy selects (in either direction)
	Chains   int
	Problems []string
	At       time.Time
	Err      error
}

func (p *networkPolicy) run(ctx context.Context) {
	p.status.Store(&policyStatus{})
	if p.metrics != nil {
		go p.countDrops(ctx)
	}
	check := time.NewTicker(policyCheckEvery)
	defer check.Stop()
	// The first pass runs once the informers have synced, signal or not: the policies may
	// all have gone while the agent was down, leaving a table to delete.
	retry := time.After(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.source.Changed():
		case <-check.C:
			p.kernel.Invalidate()
		case <-retry:
		}
		retry = nil
		// A partial view would be applied as a true one: until the first full list of
		// every informer, leave the kernel as it is, rules of a previous run included.
		if !p.source.Synced() {
			retry = time.After(policyRetry)
			continue
		}
		if err := p.pass(ctx); err != nil {
			retry = time.After(policyRetry)
		}
	}
}

// pass compiles the cluster's policies for this node and applies them; passTimeout bounds it
// as it bounds the routing pass.
func (p *networkPolicy) pass(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, passTimeout)
	defer cancel()
	in := p.source.Input()
	in.LogDrops = p.logDrops
	rs := policy.Compile(in)
	p.last.Store(&policyPass{in: in, rs: rs})
	p.said.set("policy", rs.Problems, "NetworkPolicy not fully honoured", "problem")
	changes, err := p.kernel.Sync(pctx, rs)
	p.passes.Add(1)
	policed := map[string]bool{}
	for veth := range rs.Ingress {
		policed[veth] = true
	}
	for veth := range rs.Egress {
		policed[veth] = true
	}
	p.status.Store(&policyStatus{
		Synced: err == nil, Active: rs.Active, Policed: len(policed), Chains: len(rs.Chains),
		Problems: rs.Problems, At: time.Now(), Err: err,
	})
	p.said.setErr("policy-sync", err, "NetworkPolicy rules not applied", "err")
	if err != nil {
		return err
	}
	if !changes.Empty() {
		p.log.Info("NetworkPolicy rules applied", "changes", changes.String(), "policies", len(in.Policies), "localPods", len(in.Local), "policedPods", len(policed))
	}
	return nil
}

// report is the last pass, for the local API.
func (p *networkPolicy) report() (*agentapi.PolicyStatus, []string) {
	st := p.status.Load()
	if st == nil {
		return &agentapi.PolicyStatus{}, nil
	}
	out := &agentapi.PolicyStatus{Synced: st.Synced, Active: st.Active, PolicedPods: st.Policed, Chains: st.Chains, LastSync: st.At}
	if st.Err != nil {
		out.LastError = st.Err.Error()
	}
	return out, st.Problems
}
