package policy

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/knftables"
)

// benchCluster is 20 namespaces of 50 pods each (1,000 pods, dual-stack, two named ports) and
// 100 policies, 5 per namespace: a default deny, same-namespace and cross-namespace
// selections, ipBlocks with excepts, numeric, ranged and named ports, egress to named ports.
// The first `local` pods (spread over the namespaces) are this node's.
func benchCluster(local int) *Input {
	const namespaces, perNS = 20, 50
	in := &Input{Namespaces: map[string]map[string]string{}}
	tiers := []string{"web", "api", "db"}
	for n := 0; n < namespaces; n++ {
		ns := fmt.Sprintf("ns%d", n)
		in.Namespaces[ns] = map[string]string{"team": fmt.Sprintf("t%d", n%4), "env": []string{"prod", "dev"}[n%2]}
	}
	for i := 0; i < namespaces*perNS; i++ {
		n := i % namespaces
		p := Pod{
			Namespace: fmt.Sprintf("ns%d", n),
			Name:      fmt.Sprintf("pod%d", i),
			Labels:    map[string]string{"app": fmt.Sprintf("app%d", (i/namespaces)%10), "tier": tiers[i%3]},
			IPs: []netip.Addr{
				netip.AddrFrom4([4]byte{10, 244, byte(i / 250), byte(i%250 + 1)}),
				netip.MustParseAddr(fmt.Sprintf("fd00:10:244::%x", i+1)),
			},
			Ports: []NamedPort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080}, {Name: "metrics", Protocol: corev1.ProtocolTCP, Port: 9100}},
		}
		if i < local {
			in.Local = append(in.Local, LocalPod{Pod: p, HostVeth: fmt.Sprintf("pr%013x", i)})
		} else {
			in.Pods = append(in.Pods, p)
		}
	}
	for n := 0; n < namespaces; n++ {
		ns := fmt.Sprintf("ns%d", n)
		app := func(k int) map[string]string { return map[string]string{"app": fmt.Sprintf("app%d", (n+k)%10)} }
		in.Policies = append(in.Policies,
			policy(ns, "default-deny", nil, types(tIn, tOut)),
			policy(ns, "web", map[string]string{"tier": "web"},
				ingressRule(peers(podPeer("tier", "api"), nsPodPeer(sel("env", "prod"), sel("tier", "web"))), port("TCP", 8080), portRangeOf("TCP", 8443, 8453)),
				ingressRule(peers(block("0.0.0.0/0", "10.0.0.0/8", "192.168.0.0/16")), port("TCP", 443))),
			policy(ns, "api", map[string]string{"tier": "api"},
				ingressRule(peers(podPeer("tier", "web")), namedPort("TCP", "http")),
				egressRule(peers(podPeer("tier", "db")), namedPort("TCP", "http"))),
			policy(ns, "db", map[string]string{"tier": "db"},
				ingressRule(peers(nsPodPeer(sel("team", fmt.Sprintf("t%d", n%4)), &metav1.LabelSelector{MatchLabels: app(1)})), port("TCP", 5432))),
			policy(ns, "dns-and-metrics", nil, types(tIn, tOut),
				egressRule(peers(nsPodPeer(&metav1.LabelSelector{}, sel("app", "app0"))), port("UDP", 53), port("TCP", 53)),
				ingressRule(peers(nsPeer("env", "prod")), namedPort("TCP", "metrics"))),
		)
	}
	return in
}

func BenchmarkCompile(b *testing.B) {
	for _, local := range []int{110, 1000} {
		b.Run(fmt.Sprintf("pods=1000/policies=100/local=%d", local), func(b *testing.B) {
			in := benchCluster(local)
			var rs *Ruleset
			for b.Loop() {
				rs = Compile(in)
			}
			reportSize(b, rs)
		})
	}
}

// BenchmarkCompileAndDiff is a pass of the agent after one pod changed address:
// compile everything, then plan the transaction against the image of the table.
func BenchmarkCompileAndDiff(b *testing.B) {
	for _, local := range []int{110, 1000} {
		b.Run(fmt.Sprintf("pods=1000/policies=100/local=%d", local), func(b *testing.B) {
			in := benchCluster(local)
			rs := Compile(in)
			cur := stateOf(rs)
			fake := knftables.NewFake(knftables.InetFamily, TableName)
			var moved *Pod
			if len(in.Pods) > 0 {
				moved = &in.Pods[len(in.Pods)-1]
			} else {
				moved = &in.Local[len(in.Local)-1].Pod
			}
			addrs := []netip.Addr{moved.IPs[0], netip.MustParseAddr("10.244.200.1")}
			i, ops := 0, 0
			for b.Loop() {
				i++
				moved.IPs[0] = addrs[i%2]
				ch := plan(fake.NewTransaction(), cur, Compile(in))
				ops = max(ops, ch.Operations)
			}
			b.ReportMetric(float64(ops), "tx-ops")
			reportSize(b, rs)
		})
	}
}

func reportSize(b *testing.B, rs *Ruleset) {
	elements := 0
	for _, s := range rs.Sets {
		elements += len(s.Elements)
	}
	b.ReportMetric(float64(len(rs.Chains)), "chains")
	b.ReportMetric(float64(len(rs.Sets)), "sets")
	b.ReportMetric(float64(elements), "elements")
}

// TestBenchClusterCompiles keeps the benchmark's cluster honest: it compiles without
// problems and polices its local pods.
func TestBenchClusterCompiles(t *testing.T) {
	rs := Compile(benchCluster(110))
	if len(rs.Problems) > 0 {
		t.Fatalf("problems: %q", rs.Problems)
	}
	if len(rs.Ingress) != 110 || len(rs.Egress) != 110 {
		t.Errorf("%d ingress and %d egress veths, want 110 each", len(rs.Ingress), len(rs.Egress))
	}
}
