package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// crossCheckPolicies are the policy sets the evaluator is checked on against Compile: each
// feature of the API, and what the API server would refuse.
func crossCheckPolicies() map[string][]*networkingv1.NetworkPolicy {
	server := map[string]string{"app": "server"}
	client := map[string]string{"app": "client"}
	return map[string][]*networkingv1.NetworkPolicy{
		"none":                  nil,
		"ingress default deny":  {policy("default", "deny", nil)},
		"egress default deny":   {policy("default", "deny", nil, types(tOut))},
		"both default deny":     {policy("default", "deny", nil, types(tIn, tOut)), policy("prod", "deny", nil, types(tIn, tOut))},
		"egress to an ipBlock":  {policy("default", "p", server, egressRule(peers(block("192.0.2.0/24", "192.0.2.128/25"))))},
		"ipBlock v6 and except": {policy("default", "p", nil, ingressRule(peers(block("2001:db8::/32", "2001:db8:1::/48"), block("10.0.0.0/8", "10.0.2.0/24"))))},
		"podSelector alone":     {policy("default", "p", server, ingressRule(peers(podPeer("app", "client"))))},
		"namespaceSelector": {policy("default", "p", server, ingressRule(peers(nsPeer("team", "b")), port("TCP", 8080))),
			policy("prod", "web", map[string]string{"app": "web"}, ingressRule(peers(nsPeer()), protoPort("UDP")))},
		"namespace and pod selectors": {policy("default", "p", nil, types(tIn, tOut),
			ingressRule(peers(nsPodPeer(sel(corev1.LabelMetadataName, "prod"), sel("app", "client")))),
			egressRule(peers(nsPodPeer(&metav1.LabelSelector{}, sel("app", "web"))), port("TCP", 9090), port("", 80)))},
		"ports, ranges and protocols": {policy("default", "p", server,
			ingressRule(nil, portRangeOf("TCP", 8000, 8100), port("UDP", 5353), protoPort("SCTP")),
			ingressRule(peers(block("192.0.2.0/24")), port("TCP", 443)))},
		"named ports, ingress": {policy("default", "p", server, ingressRule(nil, namedPort("TCP", "http"), namedPort("UDP", "dns"), namedPort("SCTP", "sig"))),
			policy("prod", "p", nil, ingressRule(peers(podPeer()), namedPort("", "http")))},
		"named ports, egress": {policy("default", "p", client, types(tOut),
			egressRule(peers(podPeer("app", "server")), namedPort("TCP", "http"), port("UDP", 5353)),
			egressRule(peers(block("192.0.2.0/24")), namedPort("", "http")),
			egressRule(nil, namedPort("UDP", "dns")))},
		"several policies add up": {policy("default", "a", server, ingressRule(peers(podPeer("app", "client")), port("TCP", 8080))),
			policy("default", "b", server, ingressRule(peers(nsPeer("team", "b")), port("TCP", 9000)), egressRule(nil, port("UDP", 53))),
			policy("default", "c", nil, types(tOut), egressRule(peers(nsPeer()), port("TCP", 8080)))},
		"refused by the API": {policy("default", "p", server,
			ingressRule(peers(networkingv1.NetworkPolicyPeer{}), port("TCP", 8080)),
			ingressRule(peers(block("not-a-cidr")), port("TCP", 8080)),
			ingressRule(peers(podPeer("app", "client")), port("ICMP", 1), port("TCP", 9000)),
			egressRule(nil, portRangeOf("TCP", 90, 80)))},
	}
}

// allLocal is the fixture with every pod that has an address on this node, so the compiled
// ruleset polices every pod and the simulation judges both ends of any connection.
func allLocal(pols []*networkingv1.NetworkPolicy) (*Input, map[string]string) {
	in := fixture(pols...)
	veths := map[string]string{}
	for _, lp := range in.Local {
		veths[podKey(&lp.Pod)] = lp.HostVeth
	}
	for i, p := range in.Pods {
		if p.HostNetwork {
			continue
		}
		v := fmt.Sprintf("prremote%d", i)
		in.Local = append(in.Local, LocalPod{Pod: p, HostVeth: v})
		veths[podKey(&p)] = v
	}
	in.Pods = nil
	return in, veths
}

// simulate runs one chain of the compiled ruleset on a packet: whether it lets the packet
// through, and the comment of the rule that did.
func simulate(t *testing.T, rs *Ruleset, veths map[string]string, dir string, pod string, p packet) (bool, string, bool) {
	t.Helper()
	m := rs.Ingress
	if dir == dirEgress {
		m = rs.Egress
	}
	chain, ok := m[veths[pod]]
	if !ok || veths[pod] == "" {
		return true, "", false
	}
	for _, r := range rs.Chains[chain].Rules {
		switch evalRule(t, rs, r.Rule, p) {
		case "return":
			return true, r.Comment, true
		case "drop":
			return false, "", true
		}
	}
	t.Fatalf("chain %s has no verdict", chain)
	return false, "", true
}

// TestCheckAgreesWithCompile asks the evaluator about every connection between the
// fixture's pods and some outside addresses, on ports of every kind, and compares its answer,
// direction by direction, with what the compiled ruleset does to the packet, including which
// rule lets it through.
func TestCheckAgreesWithCompile(t *testing.T) {
	outside := addrs("192.0.2.1", "192.0.2.200", "2001:db8::1", "2001:db8:1::1", "192.168.0.20", "10.0.2.77")
	type probe struct {
		proto string
		port  int
	}
	var probes []probe
	for _, p := range []int{80, 443, 5353, 5354, 8080, 8088, 8099, 9000, 9090} {
		probes = append(probes, probe{"tcp", p})
	}
	probes = append(probes, probe{"udp", 53}, probe{"udp", 5353}, probe{"udp", 5354}, probe{"sctp", 9000}, probe{"sctp", 1})

	for name, pols := range crossCheckPolicies() {
		t.Run(name, func(t *testing.T) {
			in, veths := allLocal(pols)
			rs := Compile(in)
			var sources []netip.Addr
			var dests []*Pod
			for _, p := range allPods(in) {
				sources = append(sources, p.IPs...)
				if len(p.IPs) > 0 {
					dests = append(dests, p)
				}
			}
			sources = append(sources, outside...)
			judged, denied := 0, 0
			for _, dst := range dests {
				for _, from := range sources {
					var toIP netip.Addr
					for _, a := range dst.IPs {
						if a.Is4() == from.Is4() {
							toIP = a
						}
					}
					if !toIP.IsValid() {
						continue
					}
					src := podWithIP(in, from)
					if src != nil && src == dst {
						continue
					}
					for _, pr := range probes {
						pkt := packet{src: from, dst: toIP, proto: pr.proto, dport: pr.port}
						v, err := Check(in, Connection{From: Endpoint{IP: from}, To: Endpoint{Namespace: dst.Namespace, Name: dst.Name}, Port: pr.port, Protocol: pr.proto})
						if err != nil {
							t.Fatalf("%s: %v", pkt, err)
						}
						judged++
						if !v.Allowed {
							denied++
						}
						if v.ToIP != toIP || v.FromIP != from {
							t.Errorf("%s: judged %s to %s", pkt, v.FromIP, v.ToIP)
						}
						egOK, egBy, egPoliced := true, "", false
						if src != nil {
							egOK, egBy, egPoliced = simulate(t, rs, veths, dirEgress, podKey(src), pkt)
						}
						inOK, inBy, inPoliced := simulate(t, rs, veths, dirIngress, podKey(dst), pkt)
						what := fmt.Sprintf("%s (%s to %s)", pkt, v.From, podKey(dst))
						compare(t, what+" egress", v.Egress, egOK, egBy, egPoliced)
						compare(t, what+" ingress", v.Ingress, inOK, inBy, inPoliced)
						if v.Allowed != (egOK && inOK) {
							t.Errorf("%s: allowed %v, the ruleset %v", what, v.Allowed, egOK && inOK)
						}
					}
				}
			}
			if judged < 500 {
				t.Errorf("only %d connections judged", judged)
			}
			if len(pols) > 0 && denied == 0 {
				t.Errorf("no connection of %d denied: the policies do nothing here", judged)
			}
			t.Logf("%d connections judged, %d denied", judged, denied)
		})
	}
}

func compare(t *testing.T, what string, j Judgement, ok bool, by string, policed bool) {
	t.Helper()
	if j.Allowed != ok {
		t.Errorf("%s: evaluator says allowed=%v (%s), the ruleset %v", what, j.Allowed, j.Reason, ok)
		return
	}
	if j.Policed != policed {
		t.Errorf("%s: evaluator says policed=%v, the ruleset %v", what, j.Policed, policed)
	}
	if !ok || !policed {
		return
	}
	// The ruleset's comment is "ns/name ingress[0]"; the evaluator's "ns/name ingress rule 0".
	want := strings.Replace(strings.Replace(by, "[", " rule ", 1), "]", "", 1)
	if j.Rule != want {
		t.Errorf("%s: evaluator says %q allowed it, the ruleset %q", what, j.Rule, want)
	}
}

// TestExplainAgreesWithCompile: a local pod is policed in a direction (has a chain) exactly
// when Explain lists policies for it, and the chain's rules come from those policies.
func TestExplainAgreesWithCompile(t *testing.T) {
	for name, pols := range crossCheckPolicies() {
		t.Run(name, func(t *testing.T) {
			in := fixture(pols...)
			rs := Compile(in)
			chains := ChainPolicies(in, rs)
			for _, lp := range in.Local {
				pp, err := Explain(in, lp.Namespace, lp.Name)
				if err != nil {
					t.Fatal(err)
				}
				if !pp.Local {
					t.Errorf("%s: not local", lp.Name)
				}
				for _, d := range []struct {
					dir   string
					veths map[string]string
					pols  []PolicyRules
				}{{dirIngress, rs.Ingress, pp.Ingress}, {dirEgress, rs.Egress, pp.Egress}} {
					chain, policed := d.veths[lp.HostVeth]
					if policed != (len(d.pols) > 0) {
						t.Errorf("%s %s: chain %q, evaluator lists %d policies", lp.Name, d.dir, chain, len(d.pols))
					}
					if !policed {
						continue
					}
					var keys []string
					for _, p := range d.pols {
						keys = append(keys, p.Policy)
					}
					if !slices.Equal(chains[chain], keys) {
						t.Errorf("%s %s: ChainPolicies %q, Explain %q", lp.Name, d.dir, chains[chain], keys)
					}
					for _, r := range rs.Chains[chain].Rules {
						if r.Comment == dropComment {
							continue
						}
						pol, _, _ := strings.Cut(r.Comment, " ")
						if !slices.Contains(keys, pol) {
							t.Errorf("%s %s: rule %q of a policy Explain does not list", lp.Name, d.dir, r.Comment)
						}
					}
				}
			}
			if len(chains) != len(rs.Chains)-1 && rs.Active {
				t.Errorf("ChainPolicies names %d chains, the ruleset has %d besides hold", len(chains), len(rs.Chains)-1)
			}
		})
	}
}

func TestExplainSummaries(t *testing.T) {
	in := fixture(
		policy("default", "web", map[string]string{"app": "server"},
			ingressRule(peers(podPeer("app", "client"), nsPodPeer(sel("team", "b"), nil), block("192.0.2.0/24", "192.0.2.128/25")),
				port("TCP", 80), portRangeOf("TCP", 8000, 8100), namedPort("TCP", "http"), namedPort("UDP", "nope"), protoPort("SCTP")),
			ingressRule(nil),
			egressRule(peers(nsPeer()), namedPort("", "http"))),
		policy("default", "deny", nil, types(tIn, tOut)),
		policy("default", "bad", nil, ingressRule(peers(block("300.0.0.0/8")))),
		policy("prod", "elsewhere", nil),
	)
	got, err := Explain(in, "default", "server")
	if err != nil {
		t.Fatal(err)
	}
	want := &PodPolicies{
		Namespace: "default", Name: "server", Local: true, IPs: addrs("10.0.1.1", "fd00:1::1"),
		Ingress: []PolicyRules{
			{Policy: "default/bad", Rules: []RuleSummary{{Index: 0, Peers: []string{"nothing (invalid ipBlock, see problems)"}}}},
			{Policy: "default/deny"},
			{Policy: "default/web", Rules: []RuleSummary{
				{Index: 0,
					Peers: []string{"pods {app=client} in namespace default (1 pod now)", "every pod in namespaces {team=b} (3 pods now)", "ipBlock 192.0.2.0/24 except 192.0.2.128/25"},
					Ports: []string{"tcp/80", "tcp/8000-8100", "sctp (every port)", "tcp/http (= 8080 on this pod)", "udp/nope (not a port of this pod: matches nothing)"}},
				{Index: 1},
			}},
		},
		Egress: []PolicyRules{
			{Policy: "default/deny"},
			{Policy: "default/web", Rules: []RuleSummary{{Index: 0, Peers: []string{"every pod in every namespace (8 pods now)"}, Ports: []string{"tcp/http (as each destination pod names it)"}}}},
		},
		Problems: []string{`default/bad: spec.ingress[0].from[0].ipBlock.cidr: "300.0.0.0/8" is not a CIDR (the peer matches nothing)`},
	}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Errorf("Explain:\n got %+v\nwant %+v", got, want)
	}

	open, err := Explain(in, "prod", "web")
	if err != nil {
		t.Fatal(err)
	}
	if open.Local || len(open.Ingress) != 1 || len(open.Egress) != 0 {
		t.Errorf("prod/web: %+v", open)
	}
	hn, err := Explain(in, "default", "hostnet")
	if err != nil || !hn.HostNetwork || hn.Ingress != nil || hn.Egress != nil {
		t.Errorf("host network pod: %+v, %v", hn, err)
	}
}

func TestCheckReasons(t *testing.T) {
	in := fixture(
		policy("default", "web", map[string]string{"app": "server"}, ingressRule(peers(podPeer("app", "client")), port("TCP", 8080))),
		policy("default", "deny", nil, types(tIn, tOut)),
	)
	for _, tc := range []struct {
		conn          Connection
		allowed       bool
		egress, ingrs string
	}{{
		conn:    Connection{From: Endpoint{Namespace: "default", Name: "client"}, To: Endpoint{Namespace: "default", Name: "server"}, Port: 8080, Protocol: "TCP"},
		allowed: false,
		egress:  "selected by default/deny; no rule allows it",
		ingrs:   "allowed by default/web ingress rule 0",
	}, {
		conn:    Connection{From: Endpoint{IP: netip.MustParseAddr("192.0.2.1")}, To: Endpoint{Namespace: "default", Name: "server"}, Port: 8080, Protocol: "tcp"},
		allowed: false,
		egress:  "192.0.2.1 is not a pod's address: no egress policy applies",
		ingrs:   "selected by default/deny, default/web; no rule allows it",
	}, {
		conn:    Connection{From: Endpoint{Namespace: "default", Name: "server"}, To: Endpoint{Namespace: "prod", Name: "web"}, Port: 80, Protocol: "tcp"},
		allowed: false,
		egress:  "selected by default/deny; no rule allows it",
		ingrs:   "no policy selects prod/web for ingress: open",
	}, {
		conn:    Connection{From: Endpoint{Namespace: "prod", Name: "client"}, To: Endpoint{Namespace: "prod", Name: "web"}, Port: 80, Protocol: "udp"},
		allowed: true,
		egress:  "no policy selects prod/client for egress: open",
		ingrs:   "no policy selects prod/web for ingress: open",
	}, {
		conn:    Connection{From: Endpoint{Namespace: "kube-system", Name: "hn"}, To: Endpoint{Namespace: "prod", Name: "web"}, Port: 80, Protocol: "udp"},
		allowed: true,
		egress:  "kube-system/hn is on the host network: never policed",
		ingrs:   "no policy selects prod/web for ingress: open",
	}, {
		conn:    Connection{From: Endpoint{Namespace: "default", Name: "server"}, To: Endpoint{Namespace: "default", Name: "server"}, Port: 1, Protocol: "sctp"},
		allowed: true,
		egress:  "a pod cannot block itself",
		ingrs:   "a pod cannot block itself",
	}} {
		v, err := Check(in, tc.conn)
		if err != nil {
			t.Errorf("%+v: %v", tc.conn, err)
			continue
		}
		if v.Allowed != tc.allowed || v.Egress.Reason != tc.egress || v.Ingress.Reason != tc.ingrs {
			t.Errorf("%s to %s %d/%s: allowed %v, egress %q, ingress %q", v.From, v.To, v.Port, v.Protocol, v.Allowed, v.Egress.Reason, v.Ingress.Reason)
		}
	}
}

func TestCheckErrors(t *testing.T) {
	in := fixture(policy("default", "deny", nil))
	server := Endpoint{Namespace: "default", Name: "server"}
	for _, tc := range []struct {
		conn Connection
		is   error
		msg  string
	}{
		{Connection{From: server, To: server, Port: 80, Protocol: "icmp"}, ErrInvalid, "protocol"},
		{Connection{From: server, To: server, Port: 0, Protocol: "tcp"}, ErrInvalid, "port: 0"},
		{Connection{From: server, To: server, Port: 65536, Protocol: "tcp"}, ErrInvalid, "port: 65536"},
		{Connection{From: server, Port: 80, Protocol: "tcp"}, ErrInvalid, "destination"},
		{Connection{To: server, Port: 80, Protocol: "tcp"}, ErrInvalid, "source"},
		{Connection{From: server, To: Endpoint{Namespace: "default", Name: "ghost"}, Port: 80, Protocol: "tcp"}, ErrNoPod, "default/ghost"},
		{Connection{From: Endpoint{Namespace: "x", Name: "ghost"}, To: server, Port: 80, Protocol: "tcp"}, ErrNoPod, "source pod x/ghost"},
		{Connection{From: server, To: Endpoint{Namespace: "default", Name: "pending"}, Port: 80, Protocol: "tcp"}, ErrInvalid, "no address yet"},
		{Connection{From: Endpoint{Namespace: "default", Name: "pending"}, To: server, Port: 80, Protocol: "tcp"}, ErrInvalid, "source pod default/pending has no address yet"},
		{Connection{From: Endpoint{IP: netip.MustParseAddr("2001:db8::1")}, To: Endpoint{Namespace: "default", Name: "server2"}, Port: 80, Protocol: "tcp"}, ErrInvalid, "no address of the family"},
	} {
		_, err := Check(in, tc.conn)
		if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%+v: %v, want %v with %q", tc.conn, err, tc.is, tc.msg)
		}
	}
	if _, err := Explain(in, "default", "ghost"); !errors.Is(err, ErrNoPod) {
		t.Errorf("Explain of a missing pod: %v", err)
	}
	if _, err := Explain(in, "", "server"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Explain without namespace: %v", err)
	}
}

// BenchmarkExplainAndCheck: each API question builds the compiler's view of the cluster
// (peers, selections) anew; the baseline, measured in the same run, is a whole Compile, what
// every policy pass costs. ChainPolicies runs once per pass, for the drop counters.
func BenchmarkExplainAndCheck(b *testing.B) {
	in := benchCluster(110)
	// The baseline runs first, as a sub-benchmark of its own (testing.Benchmark cannot run
	// inside a benchmark).
	var compileNs float64
	b.Run("pods=1000/policies=100/local=110/Compile", func(b *testing.B) {
		for b.Loop() {
			Compile(in)
		}
		compileNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	rs := Compile(in)
	src, dst := in.Pods[0], in.Local[1].Pod
	for _, bc := range []struct {
		name string
		f    func() error
	}{
		{"Check", func() error {
			_, err := Check(in, Connection{From: Endpoint{Namespace: src.Namespace, Name: src.Name}, To: Endpoint{Namespace: dst.Namespace, Name: dst.Name}, Port: 8080, Protocol: "tcp"})
			return err
		}},
		{"Explain", func() error { _, err := Explain(in, dst.Namespace, dst.Name); return err }},
		{"ChainPolicies", func() error { ChainPolicies(in, rs); return nil }},
	} {
		b.Run("pods=1000/policies=100/local=110/"+bc.name, func(b *testing.B) {
			for b.Loop() {
				if err := bc.f(); err != nil {
					b.Fatal(err)
				}
			}
			perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(compileNs, "compile-ns/op")
			b.ReportMetric(perOp/compileNs, "of-compile")
		})
	}
}
