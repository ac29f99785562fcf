package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Policy builders.

type specMod func(*networkingv1.NetworkPolicySpec)

func policy(ns, name string, sel map[string]string, mods ...specMod) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}},
	}
	for _, m := range mods {
		m(&p.Spec)
	}
	return p
}

func types(ts ...networkingv1.PolicyType) specMod {
	return func(s *networkingv1.NetworkPolicySpec) { s.PolicyTypes = ts }
}

const (
	tIn  = networkingv1.PolicyTypeIngress
	tOut = networkingv1.PolicyTypeEgress
)

func ingressRule(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) specMod {
	return func(s *networkingv1.NetworkPolicySpec) {
		s.Ingress = append(s.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports})
	}
}

func egressRule(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) specMod {
	return func(s *networkingv1.NetworkPolicySpec) {
		s.Egress = append(s.Egress, networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports})
	}
}

func peers(ps ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer { return ps }

func sel(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

func podPeer(kv ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: sel(kv...)}
}

func nsPeer(kv ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(kv...)}
}

func nsPodPeer(ns, pod *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: ns, PodSelector: pod}
}

func block(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func proto(p string) *corev1.Protocol {
	if p == "" {
		return nil
	}
	pp := corev1.Protocol(p)
	return &pp
}

func port(p string, n int32) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(n)
	return networkingv1.NetworkPolicyPort{Protocol: proto(p), Port: &v}
}

func portRangeOf(p string, lo, hi int32) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(lo)
	return networkingv1.NetworkPolicyPort{Protocol: proto(p), Port: &v, EndPort: &hi}
}

func namedPort(p, name string) networkingv1.NetworkPolicyPort {
	v := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: proto(p), Port: &v}
}

func protoPort(p string) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: proto(p)}
}

// The fixture cluster: this node runs default/server, default/server2, default/client,
// default/pending (bound, no address yet) and a host-network pod; the rest are elsewhere.

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

var serverPorts = []NamedPort{
	{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080},
	{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 5353},
	{Name: "dns", Protocol: corev1.ProtocolTCP, Port: 5354},
	{Name: "sig", Protocol: corev1.ProtocolSCTP, Port: 9000},
}

func fixture(pols ...*networkingv1.NetworkPolicy) *Input {
	return &Input{
		Policies: pols,
		Namespaces: map[string]map[string]string{
			"default":     {"team": "a", corev1.LabelMetadataName: "default"},
			"prod":        {"team": "b"}, // kubernetes.io/metadata.name is implied
			"kube-system": {},
		},
		Pods: []Pod{
			{Namespace: "default", Name: "other", Labels: map[string]string{"app": "other"}, IPs: addrs("10.0.2.3")},
			{Namespace: "prod", Name: "client", Labels: map[string]string{"app": "client"}, IPs: addrs("10.0.2.4", "fd00:2::4")},
			{Namespace: "prod", Name: "web", Labels: map[string]string{"app": "web"}, IPs: addrs("10.0.2.5", "fd00:2::5"),
				Ports: []NamedPort{{Name: "http", Port: 9090}}},
			{Namespace: "third", Name: "client", Labels: map[string]string{"app": "client"}, IPs: addrs("10.0.3.6")},
			{Namespace: "kube-system", Name: "hn", Labels: map[string]string{"app": "client"}, IPs: addrs("192.168.0.20"), HostNetwork: true},
			{Namespace: "prod", Name: "ext-looking", Labels: map[string]string{"app": "db"}, IPs: addrs("192.0.2.9"),
				Ports: []NamedPort{{Name: "http", Port: 8088}}},
		},
		Local: []LocalPod{
			{HostVeth: "prserver", Pod: Pod{Namespace: "default", Name: "server", Labels: map[string]string{"app": "server"},
				IPs: addrs("10.0.1.1", "fd00:1::1"), Ports: serverPorts}},
			{HostVeth: "prserver2", Pod: Pod{Namespace: "default", Name: "server2", Labels: map[string]string{"app": "server"},
				IPs: addrs("10.0.1.3"), Ports: serverPorts}},
			{HostVeth: "prclient", Pod: Pod{Namespace: "default", Name: "client", Labels: map[string]string{"app": "client"},
				IPs: addrs("10.0.1.2", "fd00:1::2")}},
			{HostVeth: "prpending", Pod: Pod{Namespace: "default", Name: "pending", Labels: map[string]string{"app": "server"},
				Ports: serverPorts}},
			{HostVeth: "", Pod: Pod{Namespace: "default", Name: "hostnet", Labels: map[string]string{"app": "server"},
				IPs: addrs("192.168.0.10"), HostNetwork: true}},
		},
	}
}

// endpoint is where a packet comes from or goes to: a local pod's host veth, or the uplink.
type endpoint struct {
	veth   string
	v4, v6 string
}

var endpoints = map[string]endpoint{
	"server":       {"prserver", "10.0.1.1", "fd00:1::1"},
	"server2":      {"prserver2", "10.0.1.3", ""},
	"client":       {"prclient", "10.0.1.2", "fd00:1::2"},
	"other":        {"uplink", "10.0.2.3", ""},
	"prod-client":  {"uplink", "10.0.2.4", "fd00:2::4"},
	"prod-web":     {"uplink", "10.0.2.5", "fd00:2::5"},
	"prod-db":      {"uplink", "192.0.2.9", ""},
	"third-client": {"uplink", "10.0.3.6", ""},
	"remote-hn":    {"uplink", "192.168.0.20", ""},
	"ext":          {"uplink", "192.0.2.1", "2001:db8::1"},
	"ext-excepted": {"uplink", "192.0.2.200", "2001:db8:1::1"},
}

type packet struct {
	iif, oif    string
	src, dst    netip.Addr
	proto       string
	dport       int
	established bool
}

func (p packet) String() string {
	return fmt.Sprintf("%s(%s) -> %s(%s) %s/%d", p.src, p.iif, p.dst, p.oif, p.proto, p.dport)
}

// flow is a new connection from one endpoint to another ("v6" after the protocol for IPv6).
func flow(from, to, proto string, dport int) packet {
	f, t := endpoints[from], endpoints[to]
	v6 := strings.HasSuffix(proto, "6")
	proto = strings.TrimSuffix(proto, "6")
	src, dst := f.v4, t.v4
	if v6 {
		src, dst = f.v6, t.v6
	}
	if src == "" || dst == "" {
		panic("no address for " + from + " -> " + to)
	}
	return packet{iif: f.veth, oif: t.veth, src: netip.MustParseAddr(src), dst: netip.MustParseAddr(dst), proto: proto, dport: dport}
}

func reply(p packet) packet {
	return packet{iif: p.oif, oif: p.iif, src: p.dst, dst: p.src, proto: p.proto, dport: 40000, established: true}
}

// allowed evaluates the forward chain, as the kernel would, for a packet that is not held
// (see TestHoldRule for the rules about unjudged interfaces).
func allowed(t *testing.T, rs *Ruleset, p packet) bool {
	t.Helper()
	if !rs.Active || p.established {
		return true
	}
	if s := rs.Sets[SelfSet]; s != nil && slices.ContainsFunc(s.Elements, func(e []string) bool { return e[0] == p.iif && e[1] == p.oif }) {
		return true
	}
	if c, ok := rs.Egress[p.iif]; ok && !runChain(t, rs, c, p) {
		return false
	}
	if c, ok := rs.Ingress[p.oif]; ok && !runChain(t, rs, c, p) {
		return false
	}
	return true
}

// runChain tells whether a chain returns (true) or drops (false).
func runChain(t *testing.T, rs *Ruleset, name string, p packet) bool {
	t.Helper()
	c := rs.Chains[name]
	if c == nil {
		t.Fatalf("chain %s is not in the ruleset", name)
	}
	for _, r := range c.Rules {
		switch v := evalRule(t, rs, r.Rule, p); v {
		case "return":
			return true
		case "drop":
			return false
		}
	}
	return true
}

// evalRule interprets the rule forms Compile writes; it fails the test on any other.
func evalRule(t *testing.T, rs *Ruleset, rule string, p packet) string {
	t.Helper()
	tok := strings.Fields(rule)
	for i := 0; i < len(tok); i++ {
		switch tok[i] {
		case "counter":
		case "return", "drop":
			return tok[i]
		case "ip", "ip6":
			if (tok[i] == "ip") != p.src.Is4() {
				return ""
			}
			addr := p.src
			if tok[i+1] == "daddr" {
				addr = p.dst
			}
			if tok[i+2] == "." { // ip daddr . meta l4proto . th dport @set
				if strings.Join(tok[i+2:i+8], " ") != ". meta l4proto . th dport" {
					t.Fatalf("unknown rule %q", rule)
				}
				if !inSet(t, rs, tok[i+8], []string{addr.String(), p.proto, strconv.Itoa(p.dport)}) {
					return ""
				}
				i += 8
				continue
			}
			if !inSet(t, rs, tok[i+2], []string{addr.String()}) {
				return ""
			}
			i += 2
		case "meta":
			if tok[i+1] != "l4proto" {
				t.Fatalf("unknown rule %q", rule)
			}
			if p.proto != tok[i+2] {
				return ""
			}
			i += 2
		case "tcp", "udp", "sctp":
			if tok[i+1] != "dport" {
				t.Fatalf("unknown rule %q", rule)
			}
			word := tok[i]
			var items []string
			j := i + 2
			if tok[j] == "{" {
				for j++; tok[j] != "}"; j++ {
					items = append(items, strings.TrimSuffix(tok[j], ","))
				}
			} else {
				items = []string{tok[j]}
			}
			i = j
			if p.proto != word || !portIn(p.dport, items) {
				return ""
			}
		default:
			t.Fatalf("unknown token %q in rule %q", tok[i], rule)
		}
	}
	t.Fatalf("rule %q has no verdict", rule)
	return ""
}

func portIn(port int, items []string) bool {
	for _, it := range items {
		lo, hi, ok := strings.Cut(it, "-")
		if !ok {
			hi = lo
		}
		l, _ := strconv.Atoi(lo)
		h, _ := strconv.Atoi(hi)
		if port >= l && port <= h {
			return true
		}
	}
	return false
}

func inSet(t *testing.T, rs *Ruleset, ref string, key []string) bool {
	t.Helper()
	s := rs.Sets[strings.TrimPrefix(ref, "@")]
	if s == nil {
		t.Fatalf("set %s is not in the ruleset", ref)
	}
	for _, e := range s.Elements {
		if s.Interval {
			pfx := netip.MustParsePrefix(e[0])
			if pfx.Contains(netip.MustParseAddr(key[0])) {
				return true
			}
			continue
		}
		if slices.Equal(e, key) {
			return true
		}
	}
	return false
}
