package policy

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/knftables"
)

func newFake() *knftables.Fake { return knftables.NewFake(knftables.InetFamily, TableName) }

func mustSync(t *testing.T, r *Reconciler, rs *Ruleset) Changes {
	t.Helper()
	ch, err := r.Sync(context.Background(), rs)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return ch
}

// noFlushOfLiveObjects fails if the last transaction flushed anything: incremental passes
// change elements and whole chains, never empty what packets are going through.
func noFlush(t *testing.T, fake *knftables.Fake) {
	t.Helper()
	if s := fake.LastTransaction.String(); strings.Contains(s, "flush ") {
		t.Errorf("the pass flushed something:\n%s", s)
	}
}

func basePolicies() []*networkingv1.NetworkPolicy {
	return []*networkingv1.NetworkPolicy{
		policy("default", "server-in", map[string]string{"app": "server"},
			ingressRule(peers(podPeer("app", "client"), nsPeer("team", "b")), port("TCP", 8080))),
		policy("default", "client-out", map[string]string{"app": "client"}, types(tOut),
			egressRule(peers(podPeer("app", "server")), namedPort("TCP", "http")),
			egressRule(peers(block("0.0.0.0/0", "10.0.0.0/8")))),
	}
}

func TestReconcileIdempotent(t *testing.T) {
	fake := newFake()
	r := NewReconciler(fake, testLog(t))
	rs := Compile(fixture(basePolicies()...))
	ch := mustSync(t, r, rs)
	if !ch.TableCreated || ch.ChainsAdded != 4 || ch.SetsAdded == 0 || ch.VethsAdded != 4 {
		t.Errorf("first pass: %v", ch)
	}
	if ch := mustSync(t, r, rs); !ch.Empty() {
		t.Errorf("second pass changed %v", ch)
	}
	if ch := mustSync(t, r, Compile(fixture(basePolicies()...))); !ch.Empty() {
		t.Errorf("a pass with a fresh compilation changed %v", ch)
	}

	// An agent that restarts finds the table and changes nothing.
	r2 := NewReconciler(fake, testLog(t))
	ch = mustSync(t, r2, rs)
	if !ch.Empty() || !ch.KernelRead {
		t.Errorf("first pass after a restart: %v (read %v)", ch, ch.KernelRead)
	}
	// Forcing a read changes nothing either.
	r2.Invalidate()
	if ch := mustSync(t, r2, rs); !ch.Empty() || !ch.KernelRead {
		t.Errorf("pass after Invalidate: %v", ch)
	}
}

func TestReconcileIncremental(t *testing.T) {
	fake := newFake()
	r := NewReconciler(fake, testLog(t))
	in := fixture(basePolicies()...)
	mustSync(t, r, Compile(in))

	t.Run("a pod elsewhere comes: one element", func(t *testing.T) {
		in.Pods = append(in.Pods, Pod{Namespace: "default", Name: "client-2", Labels: map[string]string{"app": "client"}, IPs: addrs("10.0.9.9")})
		ch := mustSync(t, r, Compile(in))
		if ch != (Changes{ElementsAdded: 1, Operations: 2}) { // the table's idempotent add, the element
			t.Errorf("changes %+v, want one element added", ch)
		}
		noFlush(t, fake)
		if tx := fake.LastTransaction.String(); !strings.Contains(tx, "add element inet podroute-policy pods4-") || !strings.Contains(tx, "10.0.9.9") {
			t.Errorf("transaction:\n%s", tx)
		}
	})
	t.Run("and goes: one element", func(t *testing.T) {
		in.Pods = in.Pods[:len(in.Pods)-1]
		ch := mustSync(t, r, Compile(in))
		if ch != (Changes{ElementsDeleted: 1, Operations: 2}) {
			t.Errorf("changes %+v, want one element deleted", ch)
		}
		noFlush(t, fake)
	})
	t.Run("a dual-stack pod that a named port reaches: its addresses and port", func(t *testing.T) {
		in.Pods = append(in.Pods, Pod{Namespace: "default", Name: "server-9", Labels: map[string]string{"app": "server"},
			IPs: addrs("10.0.9.10", "fd00:9::10"), Ports: serverPorts})
		ch := mustSync(t, r, Compile(in))
		// The named-port sets, IPv4 and IPv6 (client-out names the port only: no address set).
		if ch != (Changes{ElementsAdded: 2, Operations: 3}) {
			t.Errorf("changes %+v, want 2 elements added", ch)
		}
		if tx := fake.LastTransaction.String(); !strings.Contains(tx, "10.0.9.10 . tcp . 8080") || !strings.Contains(tx, "fd00:9::10 . tcp . 8080") {
			t.Errorf("transaction:\n%s", tx)
		}
		noFlush(t, fake)
	})
	t.Run("a local pod comes: judged, self, its map entries; the chain exists", func(t *testing.T) {
		in.Local = append(in.Local, LocalPod{HostVeth: "prserver3", Pod: Pod{Namespace: "default", Name: "server3",
			Labels: map[string]string{"app": "server"}, Ports: serverPorts}})
		ch := mustSync(t, r, Compile(in))
		if ch != (Changes{ElementsAdded: 2, VethsAdded: 1, Operations: 4}) {
			t.Errorf("changes %+v", ch)
		}
		noFlush(t, fake)
	})
	t.Run("a local pod that no policy selects: judged only", func(t *testing.T) {
		in.Local = append(in.Local, LocalPod{HostVeth: "propen", Pod: Pod{Namespace: "default", Name: "open",
			Labels: map[string]string{"app": "open"}}})
		ch := mustSync(t, r, Compile(in))
		if ch != (Changes{ElementsAdded: 1, Operations: 2}) {
			t.Errorf("changes %+v", ch)
		}
	})
	t.Run("a policy changes: only its chain is replaced", func(t *testing.T) {
		before := Compile(in)
		pols := basePolicies()
		pols[0] = policy("default", "server-in", map[string]string{"app": "server"},
			ingressRule(peers(podPeer("app", "client"), nsPeer("team", "b")), port("TCP", 8443)))
		in.Policies = pols
		after := Compile(in)
		ch := mustSync(t, r, after)
		// One new chain, the old one deleted, the four server veths (server, server2,
		// pending, server3) repointed; no set changes: the selections are the same.
		if ch != (Changes{ChainsAdded: 1, ChainsDeleted: 1, VethsChanged: 4, Operations: ch.Operations}) {
			t.Errorf("changes %+v", ch)
		}
		if before.Egress["prclient"] != after.Egress["prclient"] {
			t.Error("the client's egress chain changed with a policy that does not select it")
		}
		if _, ok := fake.Table.Chains[before.Ingress["prserver"]]; ok {
			t.Error("the old chain is still there")
		}
		if fake.Table.Chains[after.Ingress["prserver"]] == nil {
			t.Error("the new chain is missing")
		}
		if fake.Table.Maps[IngressMap].FindElement("prserver").Value[0] != "jump "+after.Ingress["prserver"] {
			t.Error("prserver does not jump to the new chain")
		}
	})
	t.Run("a label change moves a pod to other chains", func(t *testing.T) {
		in.Local[2].Labels = map[string]string{"app": "server"} // client becomes a server
		ch := mustSync(t, r, Compile(in))
		if ch.VethsAdded != 1 || ch.VethsDeleted != 1 || ch.ChainsAdded != 0 {
			t.Errorf("changes %+v", ch)
		}
		if fake.Table.Maps[EgressMap].FindElement("prclient") != nil {
			t.Error("the former client still has an egress chain")
		}
	})
	t.Run("a new selector: new sets, a new chain", func(t *testing.T) {
		in.Policies = append(in.Policies, policy("default", "db", map[string]string{"app": "open"},
			ingressRule(peers(nsPodPeer(sel("team", "b"), sel("app", "web"))))))
		ch := mustSync(t, r, Compile(in))
		if ch.SetsAdded != 2 || ch.ChainsAdded != 1 || ch.VethsAdded != 1 {
			t.Errorf("changes %+v", ch)
		}
		in.Policies = in.Policies[:len(in.Policies)-1]
		ch = mustSync(t, r, Compile(in))
		if ch.SetsDeleted != 2 || ch.ChainsDeleted != 1 || ch.VethsDeleted != 1 {
			t.Errorf("changes after the policy went: %+v", ch)
		}
	})
	t.Run("a fresh reader agrees with the image", func(t *testing.T) {
		if ch := mustSync(t, NewReconciler(fake, testLog(t)), Compile(in)); !ch.Empty() {
			t.Errorf("changes %+v", ch)
		}
	})
	t.Run("removing every policy removes the table", func(t *testing.T) {
		in.Policies = nil
		ch := mustSync(t, r, Compile(in))
		if !ch.TableDeleted || fake.Table != nil {
			t.Errorf("changes %+v, table %v", ch, fake.Table != nil)
		}
		if ch := mustSync(t, r, Compile(in)); !ch.Empty() {
			t.Errorf("second pass without policies: %+v", ch)
		}
		if ch := mustSync(t, NewReconciler(fake, testLog(t)), Compile(in)); !ch.Empty() || !ch.KernelRead {
			t.Errorf("first pass of a new reconciler without policies: %+v", ch)
		}
	})
}

func TestReconcileRepairs(t *testing.T) {
	fake := newFake()
	r := NewReconciler(fake, testLog(t))
	rs := Compile(fixture(basePolicies()...))
	mustSync(t, r, rs)
	chain := rs.Ingress["prserver"]

	t.Run("a chain whose rules were cut is refilled on a read", func(t *testing.T) {
		fake.Table.Chains[chain].Rules = fake.Table.Chains[chain].Rules[1:]
		r.Invalidate()
		ch := mustSync(t, r, rs)
		if ch.ChainsRewritten != 1 || len(fake.Table.Chains[chain].Rules) != len(rs.Chains[chain].Rules) {
			t.Errorf("changes %+v", ch)
		}
	})
	t.Run("a base chain of another layout is rewritten in place", func(t *testing.T) {
		fake.Table.Chains[ForwardChain].Rules = fake.Table.Chains[ForwardChain].Rules[:2]
		r.Invalidate()
		if ch := mustSync(t, r, rs); ch.ChainsRewritten != 1 {
			t.Errorf("changes %+v", ch)
		}
	})
	t.Run("objects the layout does not know are deleted", func(t *testing.T) {
		tx := fake.NewTransaction()
		tx.Add(&knftables.Set{Name: "pods4-0000000000000000", Type: "ipv4_addr"})
		tx.Add(&knftables.Chain{Name: "ingress-0000000000000000"})
		tx.Add(&knftables.Rule{Chain: "ingress-0000000000000000", Rule: "ip saddr @pods4-0000000000000000 drop"})
		tx.Add(&knftables.Map{Name: "old-map", Type: "ifname : verdict"})
		if err := fake.Run(context.Background(), tx); err != nil {
			t.Fatal(err)
		}
		r.Invalidate()
		ch := mustSync(t, r, rs)
		if ch.SetsDeleted != 1 || ch.ChainsDeleted != 1 || fake.Table.Maps["old-map"] != nil {
			t.Errorf("changes %+v", ch)
		}
	})
	t.Run("a stale image: the failed transaction is retried after a read", func(t *testing.T) {
		// Someone deletes an element behind the reconciler's back; the next pass wants it
		// gone too, which fails against the kernel, so the reconciler reads and retries.
		pc := setNamed(t, rs, "pods{app=client} in namespace default")
		tx := fake.NewTransaction()
		tx.Delete(&knftables.Element{Set: pods4Prefix + pc, Key: []string{"10.0.1.2"}})
		if err := fake.Run(context.Background(), tx); err != nil {
			t.Fatal(err)
		}
		in := fixture(basePolicies()...)
		in.Local[2].IPs = addrs("fd00:1::2") // the client loses its IPv4 address
		ch := mustSync(t, r, Compile(in))
		if !ch.KernelRead || ch.ElementsDeleted != 0 {
			t.Errorf("changes %+v: want a read and nothing left to delete", ch)
		}
	})
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLog(t testing.TB) *slog.Logger { return slog.New(slog.NewTextHandler(testWriter{t}, nil)) }
