package policy

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type check struct {
	p    packet
	want bool
}

func allow(p packet) check { return check{p, true} }
func deny(p packet) check  { return check{p, false} }

// TestCompileSemantics compiles policies against the fixture cluster and asks, packet by
// packet, what the resulting ruleset lets through.
func TestCompileSemantics(t *testing.T) {
	serverSel := map[string]string{"app": "server"}
	for _, tc := range []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		checks   []check
		problems []string // substrings, one per expected problem
	}{{
		name: "no policy: everything open, no table",
		checks: []check{
			allow(flow("ext", "server", "tcp", 1)),
			allow(flow("client", "ext", "udp", 53)),
		},
	}, {
		name:     "empty policy is a default deny for ingress only (policyTypes inferred)",
		policies: []*networkingv1.NetworkPolicy{policy("default", "deny", nil)},
		checks: []check{
			deny(flow("ext", "server", "tcp", 8080)),
			deny(flow("client", "server", "tcp", 8080)),
			deny(flow("prod-client", "client", "udp6", 53)),
			allow(flow("server", "ext", "tcp", 443)),        // egress is not a type of this policy
			allow(reply(flow("server", "ext", "tcp", 443))), // reply of an allowed connection
			allow(reply(flow("ext", "server", "tcp", 8080))),
		},
	}, {
		name: "egress rules make a policy Egress too; no ingress rules deny ingress",
		policies: []*networkingv1.NetworkPolicy{policy("default", "p", serverSel,
			egressRule(peers(block("192.0.2.0/24"))))},
		checks: []check{
			allow(flow("server", "ext", "tcp", 80)),
			deny(flow("server", "prod-web", "tcp", 80)),
			deny(flow("ext", "server", "tcp", 8080)),
			allow(flow("ext", "client", "tcp", 8080)), // client is not selected
			allow(flow("client", "prod-web", "tcp", 80)),
		},
	}, {
		name:     "egress-only default deny",
		policies: []*networkingv1.NetworkPolicy{policy("default", "p", nil, types(tOut))},
		checks: []check{
			deny(flow("client", "ext", "udp", 53)),
			deny(flow("client", "server", "tcp", 8080)),
			deny(flow("client", "ext", "tcp6", 443)),
			allow(flow("ext", "client", "tcp", 8080)),
			allow(reply(flow("ext", "client", "tcp", 8080))),
		},
	}, {
		name: "podSelector alone picks pods of the policy's namespace",
		policies: []*networkingv1.NetworkPolicy{policy("default", "p", serverSel,
			ingressRule(peers(podPeer("app", "client"))))},
		checks: []check{
			allow(flow("client", "server", "tcp", 8080)),
			allow(flow("client", "server", "udp6", 5353)),
			deny(flow("prod-client", "server", "tcp", 8080)),
			deny(flow("prod-client", "server", "tcp6", 8080)),
			deny(flow("third-client", "server", "tcp", 8080)),
			deny(flow("other", "server", "tcp", 8080)),
		},
	}, {
		name: "namespaceSelector {} is every pod of every namespace, and no host-network pod",
		policies: []*networkingv1.NetworkPolicy{policy("default", "p", serverSel,
			ingressRule(peers(nsPeer())))},
		checks: []check{
			allow(flow("client", "server", "tcp", 8080)),
			allow(flow("prod-client", "server", "tcp6", 8080)),
			allow(flow("third-client", "server", "tcp", 8080)), // no Namespace object: still a namespace
			deny(flow("remote-hn", "server", "tcp", 8080)),
			deny(flow("ext", "server", "tcp", 8080)),
		},
	}, {
		name: "namespaceSelector and podSelector together: both must match",
		policies: []*networkingv1.NetworkPolicy{policy("default", "p", serverSel,
			ingressRule(peers(nsPodPeer(sel("team", "b"), sel("app", "client")))))},
		checks: []check{
			allow(flow("prod-client", "server", "tcp", 8080)),
			allow(flow("prod-client", "server", "tcp6", 8080)),
			deny(flow("prod-web", "server", "tcp", 8080)),
			deny(flow("client", "server", "tcp", 8080)),
			deny(flow("third-client", "server", "tcp", 8080)),
		},
	}, {
		name: "namespaceSelector alone: every pod of the namespaces, by implied name label too",
		policies: []*networkingv1.NetworkPolicy{policy("default", "p", serverSel,
			ingressRule(peers(nsPeer(corev1.LabelMetadataName, "prod"))))},
		checks: []check{
			allow(flow("prod-client", "server", "tcp", 8080)),
			allow(flow("prod-web", "server", "tcp", 8080)),
			deny(flow("client", "server", "tcp", 8080)),
		},
	}, {
		name: "matchExpressions",
		policies: []*networkingv1.NetworkPolicy{policy("default", "p", serverSel,
			ingressRule(peers(networkingv1.NetworkPolicyPeer{
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: metav1.LabelSelectorOpExists}}},
				PodSelector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"web"}}}},
			})))},
		checks: []check{
			allow(flow("prod-client", "server", "tcp", 8080)),
			allow(flow("other", "server", "tcp", 8080)),
			deny(flow("prod-web", "server", "tcp", 8080)),
			deny(flow("third-client", "server", "tcp", 8080)), // namespace without the team label
		},
	}, {
		name: "an empty from allows every source; a rule {} allows everything",
		policies: []*networkingv1.NetworkPolicy{
			policy("default", "from-any-8080", serverSel, ingressRule(nil, port("TCP", 8080))),
			policy("default", "all", map[string]string{"app": "client"}, ingressRule(nil)),
		},
		checks: []check{
			allow(flow("ext", "server", "tcp", 8080)),
			allow(flow("ext", "server", "tcp6", 8080)),
			deny(flow("ext", "server", "tcp", 8081)),
			allow(flow("ext", "client", "udp6", 1)),
			allow(flow("ext", "client", "sctp", 7)),
		},
	}, {
		name: "ipBlock with except, IPv4 and IPv6; pod addresses in the block match too",
		policies: []*networkingv1.NetworkPolicy{policy("default", "p", serverSel,
			ingressRule(peers(
				block("192.0.2.0/24", "192.0.2.128/25"),
				block("2001:db8::/32", "2001:db8:1::/48"),
				block("10.0.2.4/32"))))},
		checks: []check{
			allow(flow("ext", "server", "tcp", 8080)),
			allow(flow("ext", "server", "tcp6", 8080)),
			deny(flow("ext-excepted", "server", "tcp", 8080)),
			deny(flow("ext-excepted", "server", "tcp6", 8080)),
			allow(flow("prod-client", "server", "udp", 53)), // by address
			deny(flow("prod-client", "server", "udp6", 53)), // its IPv6 address is not in a block
			deny(flow("prod-web", "server", "udp", 53)),
		},
	}, {
		name: "ports: number, protocol, range, protocol alone, SCTP",
		policies: []*networkingv1.NetworkPolicy{policy("default", "p", serverSel,
			ingressRule(nil, port("", 80), port("UDP", 53), portRangeOf("TCP", 8000, 8100), protoPort("SCTP")),
			ingressRule(peers(podPeer("app", "client")), protoPort("UDP")))},
		checks: []check{
			allow(flow("ext", "server", "tcp", 80)),
			deny(flow("ext", "server", "udp", 80)),
			allow(flow("ext", "server", "udp6", 53)),
			allow(flow("ext", "server", "tcp", 8000)),
			allow(flow("ext", "server", "tcp", 8050)),
			allow(flow("ext", "server", "tcp6", 8100)),
			deny(flow("ext", "server", "tcp", 8101)),
			deny(flow("ext", "server", "tcp", 7999)),
			allow(flow("ext", "server", "sctp", 1234)),
			allow(flow("client", "server", "udp", 9999)),
			deny(flow("client", "server", "tcp", 9999)),
			deny(flow("ext", "server", "udp", 9999)),
		},
	}, {
		name: "named ports resolve on the policed pod for ingress, by protocol",
		policies: []*networkingv1.NetworkPolicy{policy("default", "p", serverSel,
			ingressRule(nil, namedPort("TCP", "http"), namedPort("UDP", "dns"), namedPort("SCTP", "sig"), namedPort("TCP", "missing")))},
		checks: []check{
			allow(flow("ext", "server", "tcp", 8080)),
			allow(flow("ext", "server2", "tcp", 8080)),
			allow(flow("ext", "server", "udp", 5353)),
			deny(flow("ext", "server", "tcp", 5353)), // dns is 5354 over TCP, not named here
			deny(flow("ext", "server", "tcp", 5354)),
			allow(flow("ext", "server", "sctp", 9000)),
			deny(flow("ext", "server", "udp", 8080)),
		},
	}, {
		name: "named ports resolve on each destination pod for egress",
		policies: []*networkingv1.NetworkPolicy{
			policy("default", "to-web", map[string]string{"app": "client"}, types(tOut),
				egressRule(peers(nsPeer()), namedPort("TCP", "http"))),
			policy("default", "to-block", map[string]string{"app": "client"}, types(tOut),
				egressRule(peers(block("192.0.2.0/24")), namedPort("TCP", "http"))),
			policy("default", "from-server", serverSel, types(tOut),
				egressRule(nil, namedPort("", "http"))),
		},
		checks: []check{
			allow(flow("client", "prod-web", "tcp", 9090)),
			allow(flow("client", "prod-web", "tcp6", 9090)),
			deny(flow("client", "prod-web", "tcp", 8080)),
			allow(flow("client", "server", "tcp", 8080)),
			allow(flow("client", "server", "tcp6", 8080)),
			deny(flow("client", "server", "udp", 8080)),
			allow(flow("client", "prod-db", "tcp", 8088)), // a pod inside the ipBlock, by its port
			deny(flow("client", "ext", "tcp", 8088)),      // not a pod: a name resolves on pods only
			// An empty to: every pod that has the name.
			allow(flow("server", "prod-web", "tcp", 9090)),
			allow(flow("server", "server2", "tcp", 8080)),
			deny(flow("server", "ext", "tcp", 9090)),
			deny(flow("server", "prod-client", "tcp", 9090)),
		},
	}, {
		name: "policies add up, and one rule needs both peer and port",
		policies: []*networkingv1.NetworkPolicy{
			policy("default", "a", serverSel, ingressRule(peers(podPeer("app", "client")), port("TCP", 8080))),
			policy("default", "b", serverSel, ingressRule(peers(block("192.0.2.0/24")), port("UDP", 53))),
			policy("default", "c", nil, types(tIn)),
		},
		checks: []check{
			allow(flow("client", "server", "tcp", 8080)),
			deny(flow("client", "server", "udp", 53)),
			allow(flow("ext", "server", "udp", 53)),
			deny(flow("ext", "server", "tcp", 8080)),
			deny(flow("server", "client", "tcp", 8080)), // c selects client: default deny
		},
	}, {
		name: "pod to pod on the node needs the sender's egress and the receiver's ingress",
		policies: []*networkingv1.NetworkPolicy{
			policy("default", "client-out", map[string]string{"app": "client"}, types(tOut),
				egressRule(peers(podPeer("app", "server")), port("TCP", 8080))),
			policy("default", "server-in", serverSel, ingressRule(peers(podPeer("app", "client")), port("TCP", 8080), port("TCP", 9090))),
		},
		checks: []check{
			allow(flow("client", "server", "tcp", 8080)),
			allow(flow("client", "server", "tcp6", 8080)),
			deny(flow("client", "server", "tcp", 9090)), // server allows it, client's egress does not
			deny(flow("client", "server2", "tcp", 9091)),
			allow(reply(flow("client", "server", "tcp", 8080))),
		},
	}, {
		name:     "a pod cannot block itself (hairpin through a Service)",
		policies: []*networkingv1.NetworkPolicy{policy("default", "deny", nil, types(tIn, tOut))},
		checks: []check{
			allow(packet{iif: "prserver", oif: "prserver", src: netip.MustParseAddr("10.0.1.1"), dst: netip.MustParseAddr("10.0.1.1"), proto: "tcp", dport: 8080}),
			deny(flow("server", "server2", "tcp", 8080)),
		},
	}, {
		name: "a policy selects pods of its own namespace only",
		policies: []*networkingv1.NetworkPolicy{
			policy("prod", "deny", nil),
			policy("default", "deny-db", map[string]string{"app": "db"}),
		},
		checks: []check{
			allow(flow("ext", "server", "tcp", 8080)),
			allow(flow("ext", "client", "tcp", 8080)),
		},
	}, {
		name: "what the API refuses allows nothing, and is reported",
		policies: []*networkingv1.NetworkPolicy{policy("default", "bad", serverSel,
			ingressRule(peers(networkingv1.NetworkPolicyPeer{}), port("TCP", 1)),
			ingressRule(peers(block("not-a-cidr")), port("TCP", 2)),
			ingressRule(peers(block("192.0.2.0/24", "bad")), port("TCP", 3)),
			ingressRule(nil, networkingv1.NetworkPolicyPort{Protocol: proto("ICMP")}),
			ingressRule(nil, func() networkingv1.NetworkPolicyPort {
				p := namedPort("TCP", "http")
				end := int32(9000)
				p.EndPort = &end
				return p
			}()),
			ingressRule(nil, portRangeOf("TCP", 90, 80)),
			ingressRule(peers(networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Near"}}}}), port("TCP", 4)),
			ingressRule(peers(podPeer("app", "client")), port("TCP", 5)), // the valid part stays
		)},
		checks: []check{
			deny(flow("client", "server", "tcp", 1)),
			deny(flow("ext", "server", "tcp", 2)),
			deny(flow("ext", "server", "tcp", 3)),
			deny(flow("ext", "server", "icmp", 0)),
			deny(flow("ext", "server", "tcp", 8080)),
			deny(flow("ext", "server", "tcp", 85)),
			deny(flow("client", "server", "tcp", 4)),
			allow(flow("client", "server", "tcp", 5)),
		},
		problems: []string{
			"spec.ingress[0].from[0]: a peer without",
			"spec.ingress[1].from[0].ipBlock.cidr",
			"spec.ingress[2].from[0].ipBlock.except[0]",
			"spec.ingress[3].ports[0]: protocol \"ICMP\"",
			"spec.ingress[4].ports[0]: endPort with a named port",
			"spec.ingress[5].ports[0]: port 90 to 80",
			"spec.ingress[6].from[0].podSelector",
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			rs := Compile(fixture(tc.policies...))
			if rs.Active != (len(tc.policies) > 0) {
				t.Errorf("Active = %v with %d policies", rs.Active, len(tc.policies))
			}
			for _, c := range tc.checks {
				if got := allowed(t, rs, c.p); got != c.want {
					t.Errorf("%v: allowed = %v, want %v", c.p, got, c.want)
				}
			}
			if len(rs.Problems) != len(tc.problems) {
				t.Errorf("problems = %q, want %d", rs.Problems, len(tc.problems))
			}
			for _, want := range tc.problems {
				if !slices.ContainsFunc(rs.Problems, func(p string) bool { return strings.Contains(p, want) }) {
					t.Errorf("no problem mentions %q in %q", want, rs.Problems)
				}
			}
		})
	}
}

// TestCompileLayout checks what the table holds, beyond what packets see.
func TestCompileLayout(t *testing.T) {
	pols := []*networkingv1.NetworkPolicy{
		policy("default", "server-in", map[string]string{"app": "server"},
			ingressRule(peers(podPeer("app", "client"), nsPeer("team", "b")), port("TCP", 8080)),
			ingressRule(peers(podPeer("app", "client")), namedPort("UDP", "dns"))),
		policy("default", "client-out", map[string]string{"app": "client"}, types(tOut),
			egressRule(peers(podPeer("app", "server")), port("TCP", 8080))),
	}
	in := fixture(pols...)
	rs := Compile(in)

	t.Run("deterministic", func(t *testing.T) {
		if again := Compile(fixture(pols...)); !reflect.DeepEqual(rs, again) {
			t.Error("two compilations of the same input differ")
		}
	})
	t.Run("judged: every local pod that is not on the host network", func(t *testing.T) {
		want := [][]string{{"prclient"}, {"prpending"}, {"prserver"}, {"prserver2"}}
		if got := rs.Sets[JudgedSet].Elements; !reflect.DeepEqual(got, want) {
			t.Errorf("judged = %v, want %v", got, want)
		}
		want = [][]string{{"prclient", "prclient"}, {"prpending", "prpending"}, {"prserver", "prserver"}, {"prserver2", "prserver2"}}
		if got := rs.Sets[SelfSet].Elements; !reflect.DeepEqual(got, want) {
			t.Errorf("self = %v, want %v", got, want)
		}
	})
	t.Run("pods with the same policies and ports share a chain; a pod without addresses has it already", func(t *testing.T) {
		c := rs.Ingress["prserver"]
		if c == "" || rs.Ingress["prserver2"] != c || rs.Ingress["prpending"] != c {
			t.Errorf("ingress chains: %v", rs.Ingress)
		}
		if _, ok := rs.Ingress["prclient"]; ok {
			t.Error("client has an ingress chain, but no Ingress policy selects it")
		}
		if _, ok := rs.Egress["prserver"]; ok {
			t.Error("server has an egress chain, but no Egress policy selects it")
		}
		if !strings.HasPrefix(rs.Egress["prclient"], egressPrefix) || !strings.HasPrefix(c, ingressPrefix) {
			t.Errorf("chain names: %v %v", rs.Ingress, rs.Egress)
		}
		if len(rs.Chains) != 3 { // ingress, egress, hold
			t.Errorf("%d chains, want 3", len(rs.Chains))
		}
	})
	t.Run("a pod whose named port differs gets its own chain", func(t *testing.T) {
		in := fixture(pols...)
		in.Local[1].Ports = []NamedPort{{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53}}
		rs := Compile(in)
		if rs.Ingress["prserver"] == rs.Ingress["prserver2"] {
			t.Error("server and server2 share a chain though dns is 5353 on one, 53 on the other")
		}
	})
	t.Run("the rules", func(t *testing.T) {
		var got []string
		for _, r := range rs.Chains[rs.Ingress["prserver"]].Rules {
			got = append(got, r.Rule+" # "+r.Comment)
		}
		pc := setNamed(t, rs, "pods{app=client} in namespace default")
		pb := setNamed(t, rs, "pods{} in namespaces{team=b}")
		want := []string{
			"ip saddr @pods4-" + pc + " tcp dport 8080 return # default/server-in ingress[0]",
			"ip6 saddr @pods6-" + pc + " tcp dport 8080 return # default/server-in ingress[0]",
			"ip saddr @pods4-" + pb + " tcp dport 8080 return # default/server-in ingress[0]",
			"ip6 saddr @pods6-" + pb + " tcp dport 8080 return # default/server-in ingress[0]",
			"ip saddr @pods4-" + pc + " udp dport 5353 return # default/server-in ingress[1]",
			"ip6 saddr @pods6-" + pc + " udp dport 5353 return # default/server-in ingress[1]",
			"counter drop # podroute-policy: not allowed by any policy",
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("server's ingress chain:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if got := rs.Sets[pods4Prefix+pc].Elements; !reflect.DeepEqual(got, [][]string{{"10.0.1.2"}}) {
			t.Errorf("pods{app=client} IPv4 = %v", got)
		}
		if got := rs.Sets[pods6Prefix+pb].Elements; !reflect.DeepEqual(got, [][]string{{"fd00:2::4"}, {"fd00:2::5"}}) {
			t.Errorf("pods in team=b IPv6 = %v", got)
		}
	})
	t.Run("identical selectors share sets across policies", func(t *testing.T) {
		n := 0
		for name := range rs.Sets {
			if strings.HasPrefix(name, pods4Prefix) {
				n++
			}
		}
		if n != 3 { // app=client, team=b, app=server
			t.Errorf("%d IPv4 pod sets, want 3", n)
		}
	})
	t.Run("a host-network local pod is not policed", func(t *testing.T) {
		rs := Compile(fixture(policy("default", "deny", nil)))
		for veth := range rs.Ingress {
			if veth == "" {
				t.Error("a host-network pod has a chain")
			}
		}
		if len(rs.Ingress) != 4 {
			t.Errorf("ingress map %v, want the 4 pods with a veth", rs.Ingress)
		}
	})
	t.Run("a local pod missing from Pods is still a peer", func(t *testing.T) {
		in := fixture(pols...)
		in.Pods = nil
		rs := Compile(in)
		pc := setNamed(t, rs, "pods{app=client} in namespace default")
		if got := rs.Sets[pods4Prefix+pc].Elements; !reflect.DeepEqual(got, [][]string{{"10.0.1.2"}}) {
			t.Errorf("pods{app=client} IPv4 = %v", got)
		}
	})
}

func setNamed(t *testing.T, rs *Ruleset, key string) string {
	t.Helper()
	d := digest("pods", key)
	if rs.Sets[pods4Prefix+d] == nil || rs.Sets[pods6Prefix+d] == nil {
		var names []string
		for n, s := range rs.Sets {
			names = append(names, n+" "+s.Comment)
		}
		t.Fatalf("no sets for %q in %q", key, names)
	}
	return d
}

func TestSubtract(t *testing.T) {
	for _, tc := range []struct {
		cidr   string
		except []string
		want   []string
	}{
		{"10.0.0.0/8", nil, []string{"10.0.0.0/8"}},
		{"10.0.0.0/8", []string{"10.0.0.0/8"}, nil},
		{"10.0.0.0/8", []string{"0.0.0.0/0"}, nil},
		{"10.0.0.0/30", []string{"10.0.0.1/32"}, []string{"10.0.0.0/32", "10.0.0.2/31"}},
		{"0.0.0.0/0", []string{"128.0.0.0/1"}, []string{"0.0.0.0/1"}},
		{"192.0.2.0/24", []string{"192.0.2.0/26", "192.0.2.192/26"}, []string{"192.0.2.64/26", "192.0.2.128/26"}},
		{"2001:db8::/32", []string{"2001:db8:8000::/33"}, []string{"2001:db8::/33"}},
		{"fd00::/126", []string{"fd00::3/128"}, []string{"fd00::/127", "fd00::2/128"}},
	} {
		var ex []netip.Prefix
		for _, e := range tc.except {
			ex = append(ex, netip.MustParsePrefix(e))
		}
		var got []string
		for _, p := range subtract(netip.MustParsePrefix(tc.cidr), ex) {
			got = append(got, p.String())
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s except %v = %v, want %v", tc.cidr, tc.except, got, tc.want)
		}
	}
}

func TestPortClauses(t *testing.T) {
	ps := portSpec{all: map[string]bool{"sctp": true}, ranges: map[string][]portRange{
		"tcp": {{443, 443}, {80, 80}, {81, 90}, {85, 100}, {8000, 8100}},
		"udp": {{53, 53}, {53, 53}},
	}}
	want := []string{"tcp dport { 80-100, 443, 8000-8100 }", "udp dport 53", "meta l4proto sctp"}
	if got := ps.clauses(); !reflect.DeepEqual(got, want) {
		t.Errorf("clauses = %q, want %q", got, want)
	}
	if got := (portSpec{any: true}).clauses(); !reflect.DeepEqual(got, []string{""}) {
		t.Errorf("no ports: %q", got)
	}
	if got := (portSpec{}).clauses(); got != nil {
		t.Errorf("nothing resolved: %q", got)
	}
}

func TestPodFromAPI(t *testing.T) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Labels: map[string]string{"a": "b"}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9100, Protocol: corev1.ProtocolTCP}}}},
			Containers: []corev1.Container{{Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
				{ContainerPort: 9999},
			}}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}}},
	}
	got := PodFromAPI(p)
	want := Pod{Namespace: "ns", Name: "p", Labels: map[string]string{"a": "b"}, IPs: addrs("10.0.0.1", "fd00::1"),
		Ports: []NamedPort{{Name: "metrics", Protocol: corev1.ProtocolTCP, Port: 9100}, {Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("PodFromAPI = %+v, want %+v", got, want)
	}
	p.Status.Phase = corev1.PodSucceeded
	if got := PodFromAPI(p); got.IPs != nil {
		t.Errorf("a finished pod keeps its addresses: %v", got.IPs)
	}
}
