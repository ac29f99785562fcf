// Package policy_test checks podroute's NetworkPolicy enforcement end to end: real agents in
// node namespaces against a real kube-apiserver, pods wired by the real CNI plugin, their Pod
// objects in the API as the kubelet would leave them, and traffic between them probed with a
// new connection each time, so what is counted is what the kernel's rules decide.
//
// One lab (two nodes, three pods on each) is shared by the subtests; each sets the policies
// it needs, and the last removes them all.
package policy_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podroute/podroute/policy"
	"github.com/podroute/podroute/test/lab"
)

const (
	// converge bounds set-up steps: agents ready, routes, a policy reaching both nodes.
	converge = 30 * time.Second
	// applyBound is the generous bound on a policy change reaching new connections: the
	// figures are printed, the bound only catches a change that never applies.
	applyBound = 10 * time.Second
	// probeTimeout is below TCP's first SYN retransmission (1 s), so an attempt tells what
	// the rules were when it started, not a second later.
	probeTimeout = 900 * time.Millisecond
)

type cluster struct {
	lab    *lab.Lab
	n1, n2 *lab.Node
	// web, client and stranger run on node-1, web2, client2 and stranger2 on node-2.
	web, client, stranger, web2, client2, stranger2 *lab.Pod
}

func TestPolicy(t *testing.T) {
	start := time.Now()
	l := lab.New(t, lab.Options{})
	c := &cluster{lab: l}
	c.n1 = l.AddNode(t, "node-1", lab.NodeOptions{Index: 1})
	c.n2 = l.AddNode(t, "node-2", lab.NodeOptions{Index: 2})
	for _, n := range []*lab.Node{c.n1, c.n2} {
		lab.Eventually(t, converge, n.Name+" ready", func() error { return ready(n) })
	}
	lab.Eventually(t, converge, "routes between the nodes", func() error {
		return cmpErr(c.n1.RouteVia(c.n2.PodCIDRs[0], c.n2.IPv4), c.n2.RouteVia(c.n1.PodCIDRs[0], c.n1.IPv4),
			c.n1.RouteVia(c.n2.PodCIDRs[1], c.n2.IPv6), c.n2.RouteVia(c.n1.PodCIDRs[1], c.n1.IPv6))
	})
	add := func(n *lab.Node, name, app string) *lab.Pod {
		p := n.AddAPIPod(t, name, map[string]string{"app": app})
		if err := lab.ServeEcho(t, p.NetNS); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c.web, c.client, c.stranger = add(c.n1, "web", "web"), add(c.n1, "client", "client"), add(c.n1, "stranger", "stranger")
	c.web2, c.client2, c.stranger2 = add(c.n2, "web", "web"), add(c.n2, "client", "client"), add(c.n2, "stranger", "stranger")
	c.expect(t, c.pairs(false), converge)
	t.Logf("two nodes, six pods, every pair reaching in %v", time.Since(start).Round(time.Millisecond))

	t.Run("ChangeLatency", c.testChangeLatency)
	t.Run("SIGKILL", func(t *testing.T) { c.testAgentDown(t, true) })
	t.Run("SIGTERM", func(t *testing.T) { c.testAgentDown(t, false) })
	t.Run("ChangedWhileDown", c.testChangedWhileDown)
	t.Run("NewPod", c.testNewPod)
	t.Run("NewPodAgentStopped", c.testNewPodAgentStopped)
	t.Run("RemoveAll", c.testRemoveAll)
}

func cmpErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func ready(n *lab.Node) error {
	st, err := n.Status()
	if err != nil {
		return err
	}
	if !st.Ready {
		return fmt.Errorf("%s not ready: %v", n.Name, st.NotReadyReasons)
	}
	return nil
}

// pair is a client, a server and whether the policy in force lets the client in.
type pair struct {
	from, to *lab.Pod
	allowed  bool
}

func (p pair) String() string {
	verdict := "denied"
	if p.allowed {
		verdict = "allowed"
	}
	return fmt.Sprintf("%s, %s)", strings.TrimSuffix(p.path(), ")"), verdict)
}

// path names the pair without its verdict.
func (p pair) path() string {
	where := "same node"
	if p.from.Node != p.to.Node {
		where = "across nodes"
	}
	return fmt.Sprintf("%s→%s (%s)", p.from.ObjectName(), p.to.ObjectName(), where)
}

// pairs are the client→web pairs under webPolicy("client") (enforced true) or under no
// policy (every pair allowed): same node and across nodes, towards each node's web pod.
func (c *cluster) pairs(enforced bool) []pair {
	var out []pair
	for _, web := range []*lab.Pod{c.web, c.web2} {
		for _, from := range []*lab.Pod{c.client, c.client2} {
			out = append(out, pair{from, web, true})
		}
		for _, from := range []*lab.Pod{c.stranger, c.stranger2} {
			out = append(out, pair{from, web, !enforced})
		}
	}
	return out
}

// probeKinds are the protocols and families every pair is probed with.
var probeKinds = []struct {
	proto string
	v6    bool
}{{"tcp", false}, {"udp", false}, {"tcp", true}}

// expect waits until every pair, every kind, has its outcome on a new connection. The
// attempts of one round run at once: a blocked one takes probeTimeout.
func (c *cluster) expect(t *testing.T, pairs []pair, timeout time.Duration) {
	t.Helper()
	lab.Eventually(t, timeout, "outcomes of the policy in force", func() error {
		var wg sync.WaitGroup
		errs := make([]error, len(pairs)*len(probeKinds))
		for i, p := range pairs {
			for j, k := range probeKinds {
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := lab.Reach(p.from.NetNS, k.proto, p.to.Addr(k.v6), probeTimeout)
					if p.allowed && err != nil {
						errs[i*len(probeKinds)+j] = fmt.Errorf("%s %s: %w", k.proto, p, err)
					}
					if !p.allowed && err == nil {
						errs[i*len(probeKinds)+j] = fmt.Errorf("%s %s to %s: reached", k.proto, p, p.to.Addr(k.v6))
					}
				}()
			}
		}
		wg.Wait()
		return errors.Join(errs...)
	})
}

// webPolicy lets pods labelled app=from into the pods labelled app=web, and nothing else.
func webPolicy(from string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "web-ingress", Namespace: lab.PodNamespace},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": from}}}},
			}},
		},
	}
}

// apply creates np, or updates it to np's spec if it exists.
func (c *cluster) apply(t *testing.T, np *networkingv1.NetworkPolicy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nps := c.lab.Kube.Client.NetworkingV1().NetworkPolicies(np.Namespace)
	cur, err := nps.Get(ctx, np.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = nps.Create(ctx, np, metav1.CreateOptions{})
	case err == nil:
		cur.Spec = np.Spec
		_, err = nps.Update(ctx, cur, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatalf("apply NetworkPolicy %s/%s: %v", np.Namespace, np.Name, err)
	}
}

// deleteAll deletes every NetworkPolicy of the pods' namespace.
func (c *cluster) deleteAll(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.lab.Kube.Client.NetworkingV1().NetworkPolicies(lab.PodNamespace).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("delete NetworkPolicies: %v", err)
	}
}

// dumpOnFailure logs every node's podroute-policy table when the test failed.
func (c *cluster) dumpOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range []*lab.Node{c.n1, c.n2} {
			out, err := n.Nft("list", "table", "inet", policy.TableName)
			t.Logf("%s: nft list table inet %s (%v):\n%s", n.Name, policy.TableName, err, out)
			out, err = n.IPOutput("-d", "link", "show")
			t.Logf("%s: ip -d link (%v):\n%s", n.Name, err, out)
		}
	})
}

// probeSet is one Prober per pair and kind.
type probeSet struct {
	probers []*lab.Prober
	pairs   []pair
}

func startProbes(pairs []pair, interval time.Duration, allowedTimeout time.Duration) *probeSet {
	s := &probeSet{}
	for _, p := range pairs {
		for _, k := range probeKinds {
			timeout := probeTimeout
			if p.allowed {
				timeout = allowedTimeout
			}
			s.probers = append(s.probers, lab.StartProber(p.from.NetNS, k.proto, p.to.Addr(k.v6), interval, timeout))
			s.pairs = append(s.pairs, p)
		}
	}
	return s
}

// stop ends every prober and checks each attempt against its pair's verdict: zero wrong
// outcomes. It returns the number of attempts that reached and that were blocked.
func (s *probeSet) stop(t *testing.T) (reached, blocked int) {
	t.Helper()
	for i, as := range s.results() {
		p, pr := s.pairs[i], s.probers[i]
		tally := lab.Count(as)
		reached += tally.Reached
		blocked += tally.Blocked
		switch {
		case len(as) == 0:
			t.Errorf("%s %s: no attempt completed", pr, p)
		case p.allowed && tally.Blocked > 0:
			t.Errorf("%s %s: %v; first failure: %v", pr, p, tally, tally.FirstBlockedErr)
		case !p.allowed && tally.Reached > 0:
			t.Errorf("%s %s: %v, first reached at %s", pr, p, tally, tally.FirstReached.Format("15:04:05.000"))
		}
	}
	return reached, blocked
}

// results stops every prober and returns their attempts, in the order of s.probers.
func (s *probeSet) results() [][]lab.Attempt {
	var wg sync.WaitGroup
	results := make([][]lab.Attempt, len(s.probers))
	for i, p := range s.probers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = p.Stop()
		}()
	}
	wg.Wait()
	return results
}

// testAgentDown: with a policy in force, both agents are killed (SIGKILL) or stopped
// (SIGTERM), stay down, and start again, while every pair is probed on new connections
// throughout: nothing denied gets through, nothing allowed is dropped.
func (c *cluster) testAgentDown(t *testing.T, kill bool) {
	c.dumpOnFailure(t)
	c.apply(t, webPolicy("client"))
	c.expect(t, c.pairs(true), converge)

	probes := startProbes(c.pairs(true), 100*time.Millisecond, 3*time.Second)
	began := time.Now()
	time.Sleep(time.Second)
	nodes := []*lab.Node{c.n1, c.n2}
	for _, n := range nodes {
		var err error
		if kill {
			err = n.Agent.Kill()
		} else {
			err = n.Agent.Stop()
		}
		if err != nil {
			t.Fatalf("stop the agent of %s: %v", n.Name, err)
		}
	}
	down := time.Now()
	time.Sleep(2 * time.Second)
	for _, n := range nodes {
		if out, err := n.Nft("list", "tables"); err != nil || !strings.Contains(out, policy.TableName) {
			t.Errorf("%s with its agent down: nft list tables: %q (%v), want inet %s", n.Name, out, err, policy.TableName)
		}
	}
	time.Sleep(3 * time.Second)
	up := time.Now()
	logFrom := map[*lab.Node]int64{}
	for _, n := range nodes {
		logFrom[n] = n.Agent.LogSize()
		if err := n.Agent.Start(); err != nil {
			t.Fatalf("start the agent of %s: %v", n.Name, err)
		}
	}
	for _, n := range nodes {
		lab.Eventually(t, converge, n.Name+" policy synced after the restart", func() error { return policySynced(n, true) })
	}
	synced := time.Now()
	time.Sleep(2 * time.Second)
	reached, blocked := probes.stop(t)
	// The kernel already had what the restarted agent wants: its first pass changes nothing.
	for _, n := range nodes {
		for _, line := range strings.Split(n.Agent.LogSince(logFrom[n]), "\n") {
			if strings.Contains(line, "NetworkPolicy rules applied") {
				t.Errorf("%s: the restarted agent changed the table that was already right: %s", n.Name, line)
			}
		}
	}
	how := "SIGKILL"
	if !kill {
		how = "SIGTERM"
	}
	t.Logf("agents down (%s) for %v, policy synced %v after the start; over %v, %d probers (%d pairs × tcp4, udp4, tcp6): %d attempts on new connections, %d reached, %d blocked",
		how, up.Sub(down).Round(time.Millisecond), synced.Sub(up).Round(time.Millisecond), time.Since(began).Round(time.Millisecond),
		len(probes.probers), len(probes.pairs)/len(probeKinds), reached+blocked, reached, blocked)
	c.expect(t, c.pairs(true), converge)
}

// testChangedWhileDown: the policy changes while both agents are killed. Until they are back
// the kernel keeps the old verdicts; once their first pass is applied, the new ones; and
// pairs that neither allows never get through, during the change included.
func (c *cluster) testChangedWhileDown(t *testing.T) {
	c.dumpOnFailure(t)
	c.apply(t, webPolicy("client"))
	c.expect(t, c.pairs(true), converge)
	nodes := []*lab.Node{c.n1, c.n2}
	for _, n := range nodes {
		if err := n.Agent.Kill(); err != nil {
			t.Fatalf("kill the agent of %s: %v", n.Name, err)
		}
	}
	killed := time.Now()
	c.apply(t, webPolicy("stranger"))
	// old and new: the verdicts before and after the change.
	type watched struct {
		pair
		old, new bool
	}
	ws := []watched{
		{pair{from: c.client, to: c.web}, true, false},
		{pair{from: c.client2, to: c.web}, true, false},
		{pair{from: c.stranger2, to: c.web}, false, true},
		{pair{from: c.stranger, to: c.web2}, false, true},
		{pair{from: c.web2, to: c.web}, false, false},
		{pair{from: c.web, to: c.web2}, false, false},
	}
	var pairs []pair
	for _, w := range ws {
		// An attempt is judged by when it ended or started, not by what it met on the way: a
		// pair allowed before or after may take its time, as a loaded machine makes it.
		p := w.pair
		p.allowed = w.old || w.new
		pairs = append(pairs, p)
	}
	probes := startProbes(pairs, 100*time.Millisecond, 3*time.Second)
	time.Sleep(3 * time.Second)
	up := time.Now()
	for _, n := range nodes {
		if err := n.Agent.Start(); err != nil {
			t.Fatalf("start the agent of %s: %v", n.Name, err)
		}
	}
	for _, n := range nodes {
		lab.Eventually(t, converge, n.Name+" policy synced after the restart", func() error { return policySynced(n, true) })
	}
	synced := time.Now()
	time.Sleep(1500 * time.Millisecond)
	var before, after, during int
	for i, as := range probes.results() {
		w, pr := ws[i/len(probeKinds)], probes.probers[i]
		for _, a := range as {
			switch {
			case a.End.Before(up):
				before++
				if a.OK() != w.old {
					t.Errorf("%s %s: attempt %s–%s with the agents down (killed at %s, started at %s): reach=%v (%v), want the old verdict %v",
						pr, w.path(), a.Start.Format("15:04:05.000"), a.End.Format("15:04:05.000"), killed.Format("15:04:05.000"), up.Format("15:04:05.000"), a.OK(), a.Err, w.old)
				}
			case a.Start.After(synced):
				after++
				if a.OK() != w.new {
					t.Errorf("%s %s: after the restart, reach=%v (%v), want the new verdict %v", pr, w.path(), a.OK(), a.Err, w.new)
				}
			default:
				during++
				if a.OK() && !w.old && !w.new {
					t.Errorf("%s %s: reached while the restarted agent applied the change, allowed neither before nor after", pr, w.path())
				}
			}
		}
	}
	t.Logf("policy changed with the agents down: %d attempts while down kept the old verdicts, %d after the restart's first pass (%v after the start) had the new ones, %d in between",
		before, after, synced.Sub(up).Round(time.Millisecond), during)
}

// policySynced reports an error until the agent's last policy pass succeeded with the table
// active (or not).
func policySynced(n *lab.Node, active bool) error {
	st, err := n.Status()
	if err != nil {
		return err
	}
	ps := st.NetworkPolicy
	if ps == nil || !ps.Synced || ps.Active != active {
		return fmt.Errorf("%s: policy status %+v, want synced and active=%v", n.Name, ps, active)
	}
	return nil
}

// newPodProbes wires a new web pod on node-1 (Pod object first, then CNI ADD, then its
// addresses published, as scheduler, runtime and kubelet do) while its policy exists, with
// strangers probing its predicted addresses from before the plugin runs and clients probing
// them to time their admission. between runs after CNI ADD and returns when the clients
// may be expected through; its time is when they may be.
func (c *cluster) newPodProbes(t *testing.T, name string, between func() time.Time) (sb *lab.Sandbox, wired, admitted time.Time, probes *probeSet) {
	t.Helper()
	sb, err := c.n1.PrepareSandbox(t, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.ServeEcho(t, sb.NetNS); err != nil {
		t.Fatal(err)
	}
	v4, v6, err := c.n1.NextPodAddrs()
	if err != nil {
		t.Fatal(err)
	}
	// The probes aim at the predicted addresses; a placeholder pod carries them until the
	// sandbox is wired.
	target := &lab.Pod{Name: name, Node: c.n1, NetNS: sb.NetNS, IPv4: v4, IPv6: v6}
	var pairs []pair
	for _, from := range []*lab.Pod{c.stranger, c.stranger2} {
		pairs = append(pairs, pair{from, target, false})
	}
	for _, from := range []*lab.Pod{c.client, c.client2} {
		pairs = append(pairs, pair{from, target, true})
	}
	if _, err := c.n1.CreatePodObject(t, name, map[string]string{"app": "web"}); err != nil {
		t.Fatal(err)
	}
	// The clients' attempts fail until the pod is wired and judged; all use probeTimeout, so
	// each tells the state when it started, and the clients' are checked apart.
	probes = startProbes(pairs, 50*time.Millisecond, probeTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := sb.Wire(ctx); err != nil {
		probes.stop(t)
		t.Fatal(err)
	}
	wired = time.Now()
	if sb.IPv4 != v4 || sb.IPv6 != v6 {
		probes.stop(t)
		t.Fatalf("CNI ADD gave %s and %s, predicted %s and %s: the probes aimed elsewhere", sb.IPv4, sb.IPv6, v4, v6)
	}
	if err := sb.PublishPodIPs(); err != nil {
		probes.stop(t)
		t.Fatal(err)
	}
	admitted = between()
	return sb, wired, admitted, probes
}

// judgeNewPod stops the probes once every client got through (or applyBound passed), checks
// that no stranger ever did and no client did before notBefore, and returns when each
// client kind first got through.
func (c *cluster) judgeNewPod(t *testing.T, probes *probeSet, notBefore time.Time) (first time.Time) {
	t.Helper()
	deadline := time.Now().Add(applyBound + 5*time.Second)
	for time.Now().Before(deadline) {
		all := true
		for i, pr := range probes.probers {
			if probes.pairs[i].allowed && lab.Count(pr.Attempts()).Reached == 0 {
				all = false
			}
		}
		if all {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second)
	results := probes.results()
	var strangers, clients lab.Tally
	for i, as := range results {
		p, pr := probes.pairs[i], probes.probers[i]
		tally := lab.Count(as)
		if !p.allowed {
			strangers.Reached += tally.Reached
			strangers.Blocked += tally.Blocked
			if tally.Reached > 0 {
				t.Errorf("%s %s: %v: a denied client reached the new pod, first at %s", pr, p, tally, tally.FirstReached.Format("15:04:05.000"))
			}
			continue
		}
		clients.Reached += tally.Reached
		clients.Blocked += tally.Blocked
		if tally.Reached == 0 {
			t.Errorf("%s %s: %v: an allowed client never reached the new pod; last failure: %v", pr, p, tally, lastErr(as))
			continue
		}
		if tally.FirstReached.Before(notBefore) {
			t.Errorf("%s %s: reached the new pod at %s, before %s", pr, p, tally.FirstReached.Format("15:04:05.000"), notBefore.Format("15:04:05.000"))
		}
		t.Logf("%s %s: first through at %s; %v", pr, p, tally.FirstReached.Format("15:04:05.000"), tally)
		if first.IsZero() || tally.FirstReached.After(first) {
			first = tally.FirstReached // the last of the clients' first successes
		}
	}
	t.Logf("probes of the new pod: denied clients %v; allowed clients %v", strangers, clients)
	return first
}

func lastErr(as []lab.Attempt) error {
	for i := len(as) - 1; i >= 0; i-- {
		if as[i].Err != nil {
			return as[i].Err
		}
	}
	return nil
}

// testNewPod: a pod created while its policy exists is never reachable by a denied client,
// from the moment its address exists; the time until allowed clients get in is measured.
func (c *cluster) testNewPod(t *testing.T) {
	c.dumpOnFailure(t)
	c.apply(t, webPolicy("client"))
	c.expect(t, c.pairs(true), converge)
	_, wired, _, probes := c.newPodProbes(t, "web-new", time.Now)
	first := c.judgeNewPod(t, probes, time.Time{})
	if !first.IsZero() {
		d := first.Sub(wired)
		t.Logf("new pod (agent running): allowed clients on both nodes through %v after CNI ADD returned (negative: before it returned; ADD returned at %s, last client through at %s)",
			d.Round(time.Millisecond), wired.Format("15:04:05.000"), first.Format("15:04:05.000"))
		if d > applyBound {
			t.Errorf("allowed clients took %v to reach the new pod, want < %v", d, applyBound)
		}
	}
}

// testNewPodAgentStopped: with node-1's agent stopped, a new pod there stays dark (the hold)
// for denied and allowed clients alike; once the agent is back, allowed ones get in and
// denied ones still do not.
func (c *cluster) testNewPodAgentStopped(t *testing.T) {
	c.dumpOnFailure(t)
	c.apply(t, webPolicy("client"))
	c.expect(t, c.pairs(true), converge)
	if err := c.n1.Agent.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !c.n1.Agent.Running() {
			_ = c.n1.Agent.Start()
		}
	})
	sb, wired, restarted, probes := c.newPodProbes(t, "web-dark", func() time.Time {
		time.Sleep(3 * time.Second)
		at := time.Now()
		if err := c.n1.Agent.Start(); err != nil {
			t.Errorf("start the agent of node-1: %v", err)
		}
		return at
	})
	out, _ := c.n1.IPOutput("-d", "link", "show", sb.HostVeth())
	if !strings.Contains(out, fmt.Sprintf("group %d", policy.PodInterfaceGroup)) {
		t.Errorf("host veth of the new pod: %q, want group %d", out, policy.PodInterfaceGroup)
	}
	first := c.judgeNewPod(t, probes, restarted)
	if !first.IsZero() {
		t.Logf("new pod (agent stopped): dark for %v after CNI ADD until the agent started; allowed clients through %v after the start",
			restarted.Sub(wired).Round(time.Millisecond), first.Sub(restarted).Round(time.Millisecond))
	}
	lab.Eventually(t, converge, "node-1 policy synced", func() error { return policySynced(c.n1, true) })
}

// transition is what a policy change must bring about: pr's new connections reaching or not.
type transition struct {
	pr    *lab.Prober
	reach bool
}

// settle returns when every prober's latest attempts (a run of at least a second, started
// after at) have the wanted outcome, with the time from at to the start of that run for
// each; it fails the test after applyBound plus that second.
func settle(t *testing.T, at time.Time, want []transition) time.Duration {
	t.Helper()
	const run = time.Second
	deadline := at.Add(applyBound + run + probeTimeout)
	var worst time.Duration
	for {
		worst = 0
		settled := true
		for _, w := range want {
			as := w.pr.Attempts()
			sort.Slice(as, func(i, j int) bool { return as[i].Start.Before(as[j].Start) })
			// The run of wanted outcomes that ends the record.
			i := len(as)
			for i > 0 && as[i-1].OK() == w.reach {
				i--
			}
			if i == len(as) || as[len(as)-1].Start.Sub(as[i].Start) < run {
				settled = false
				break
			}
			// The first attempt of the run may have started before the change: then the
			// kernel already agreed, which counts as no delay.
			if d := as[i].Start.Sub(at); d > worst {
				worst = d
			}
		}
		if settled {
			return worst
		}
		if time.Now().After(deadline) {
			for _, w := range want {
				t.Errorf("%s: want reach=%v; %v", w.pr, w.reach, lab.Count(w.pr.Attempts()))
			}
			t.Fatalf("new connections did not follow the change within %v", applyBound)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testChangeLatency creates, changes and deletes a policy, round after round, and measures
// how long each takes to apply to new connections.
func (c *cluster) testChangeLatency(t *testing.T) {
	c.dumpOnFailure(t)
	c.deleteAll(t)
	c.expect(t, c.pairs(false), converge)
	const rounds = 4
	steps := []struct {
		name string
		do   func(t *testing.T)
		// whether client (node-1 → web, same node) and stranger2 (node-2 → web, across)
		// reach web after the step.
		client, stranger bool
	}{
		{"create", func(t *testing.T) { c.apply(t, webPolicy("client")) }, true, false},
		{"change", func(t *testing.T) { c.apply(t, webPolicy("stranger")) }, false, true},
		{"delete", func(t *testing.T) { c.deleteAll(t) }, true, true},
	}
	took := map[string][]time.Duration{}
	for r := 0; r < rounds; r++ {
		for _, s := range steps {
			pc := lab.StartProber(c.client.NetNS, "tcp", c.web.IPv4, changeProbeEvery, probeTimeout)
			ps := lab.StartProber(c.stranger2.NetNS, "tcp", c.web.IPv4, changeProbeEvery, probeTimeout)
			time.Sleep(300 * time.Millisecond)
			at := time.Now()
			s.do(t)
			d := settle(t, at, []transition{{pc, s.client}, {ps, s.stranger}})
			pc.Stop()
			ps.Stop()
			took[s.name] = append(took[s.name], d)
		}
	}
	var all []time.Duration
	for _, s := range steps {
		ds := took[s.name]
		all = append(all, ds...)
		t.Logf("policy %s → new connections follow: median %v, worst %v over %d rounds (%v)", s.name, median(ds), slices.Max(ds), len(ds), ds)
	}
	t.Logf("policy change → new connections follow, every step: median %v, worst %v over %d changes (resolution %v)", median(all), slices.Max(all), len(all), changeProbeEvery)
}

// changeProbeEvery is how often a new connection is tried while a change applies: the
// resolution of the figures.
const changeProbeEvery = 20 * time.Millisecond

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// testRemoveAll: with policies of both directions in force, deleting every NetworkPolicy
// removes table inet podroute-policy from every node, and every pair reaches again.
func (c *cluster) testRemoveAll(t *testing.T) {
	c.dumpOnFailure(t)
	c.apply(t, webPolicy("client"))
	egress := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "stranger-egress", Namespace: lab.PodNamespace},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "stranger"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		},
	}
	c.apply(t, egress)
	nodes := []*lab.Node{c.n1, c.n2}
	for _, n := range nodes {
		lab.Eventually(t, converge, n.Name+" table present", func() error {
			out, err := n.Nft("list", "tables")
			if err != nil {
				return err
			}
			if !strings.Contains(out, "inet "+policy.TableName) {
				return fmt.Errorf("%s: nft list tables: %q", n.Name, out)
			}
			return policySynced(n, true)
		})
	}
	// The egress policy isolates the strangers altogether: even to web2 across nodes, even
	// to a pod no ingress policy selects (client2).
	c.expect(t, []pair{{c.stranger, c.client2, false}, {c.stranger2, c.client, false}, {c.client, c.client2, true}}, converge)

	c.deleteAll(t)
	at := time.Now()
	gone := map[*lab.Node]time.Duration{}
	lab.Eventually(t, applyBound, "table inet "+policy.TableName+" gone from every node", func() error {
		var errs []error
		for _, n := range nodes {
			if _, ok := gone[n]; ok {
				continue
			}
			out, err := n.Nft("list", "tables")
			if err != nil {
				errs = append(errs, err)
			} else if strings.Contains(out, policy.TableName) {
				errs = append(errs, fmt.Errorf("%s: nft list tables: %q", n.Name, out))
			} else {
				gone[n] = time.Since(at)
			}
		}
		return errors.Join(errs...)
	})
	for _, n := range nodes {
		out, _ := n.Nft("list", "tables")
		t.Logf("%s: table gone %v after the last NetworkPolicy was deleted (nft polled every 100ms); nft list tables: %s",
			n.Name, gone[n].Round(time.Millisecond), strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "))
		lab.Eventually(t, converge, n.Name+" policy inactive", func() error { return policySynced(n, false) })
	}
	all := c.pairs(false)
	all = append(all, pair{c.stranger, c.client2, true}, pair{c.stranger2, c.client, true}, pair{c.web, c.web2, true})
	c.expect(t, all, converge)
	// Pods not in the API at all (no Pod object, so never judged) reach too: nothing holds
	// group 201 veths once the table is gone.
	for _, n := range nodes {
		ghost := n.AddPod(t, "ghost")
		if err := lab.ServeEcho(t, ghost.NetNS); err != nil {
			t.Fatal(err)
		}
		c.expect(t, []pair{{c.client2, ghost, true}, {ghost, c.web, true}}, converge)
	}
}
