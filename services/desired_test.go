package services

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/config"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func testConfig() config.Configuration {
	cfg := config.DefaultConfiguration()
	cfg.ServiceClusterIPs = prefixes("10.96.0.0/12", "fd00:10:96::/108")
	cfg.ServiceExternalIPs = prefixes("198.51.100.0/24", "2001:db8:e::/64")
	cfg.ServiceLoadBalancerIPs = prefixes("203.0.113.0/24", "2001:db8:1b::/64")
	cfg.Advertisements.ClusterIPs = config.Attributes{Communities: []bgp.Community{bgp.NewCommunity(64512, 200)}}
	cfg.Advertisements.ExternalIPs = config.Attributes{Communities: []bgp.Community{bgp.NewCommunity(64512, 300)}, ASPathPrepend: 1}
	cfg.Advertisements.LoadBalancerIPs = config.Attributes{Communities: []bgp.Community{bgp.NewCommunity(64512, 400)}, ASPathPrepend: 2}
	return cfg
}

// lb is a LoadBalancer Service with one cluster IP, one external IP and one LB IP.
func lb(name string, mutate ...func(*Service)) Service {
	s := Service{Namespace: "default", Name: name, Type: corev1.ServiceTypeLoadBalancer, Advertise: true,
		ClusterIPs: addrs("10.96.0.10"), ExternalIPs: addrs("198.51.100.10"), LoadBalancerIPs: addrs("203.0.113.10")}
	for _, m := range mutate {
		m(&s)
	}
	return s
}

func local(s *Service) { s.ExternalLocal = true }

func eps(svc string, es ...Endpoint) Endpoints {
	return Endpoints{Namespace: "default", Service: svc, Endpoints: es}
}

func eps6(svc string, es ...Endpoint) Endpoints {
	return Endpoints{Namespace: "default", Service: svc, IPv6: true, Endpoints: es}
}

func ready(node string) Endpoint { return Endpoint{NodeName: node, Ready: true, Serving: true} }
func notReady(node string) Endpoint {
	return Endpoint{NodeName: node}
}
func draining(node string) Endpoint {
	return Endpoint{NodeName: node, Serving: true, Terminating: true}
}
func gone(node string) Endpoint { return Endpoint{NodeName: node, Terminating: true} }

const (
	rangeV4 = "10.96.0.0/12 clusterIPs []"
	rangeV6 = "fd00:10:96::/108 clusterIPs []"
)

func TestDesired(t *testing.T) {
	nodes := []cluster.Node{{Name: "n1"}, {Name: "n2"}, {Name: "gw", Labels: map[string]string{LabelExcludeFromLB: ""}}}
	for _, tc := range []struct {
		name      string
		node      string // default n1
		noProxy   bool
		cfg       func(*config.Configuration)
		services  []Service
		endpoints []Endpoints
		want      []string // Advertisement.String()s, sorted by prefix
		problem   string
	}{
		{name: "cluster policy: every node while any endpoint is ready",
			services:  []Service{lb("web")},
			endpoints: []Endpoints{eps("web", ready("n2"))},
			want:      []string{rangeV4, "198.51.100.10/32 externalIPs [default/web]", "203.0.113.10/32 loadBalancerIPs [default/web]", rangeV6}},
		{name: "local policy: node with a ready local endpoint",
			services:  []Service{lb("web", local)},
			endpoints: []Endpoints{eps("web", ready("n1"), ready("n2"))},
			want:      []string{rangeV4, "198.51.100.10/32 externalIPs [default/web]", "203.0.113.10/32 loadBalancerIPs [default/web]", rangeV6}},
		{name: "local policy: not from a node without a local endpoint",
			services:  []Service{lb("web", local)},
			endpoints: []Endpoints{eps("web", ready("n2"))},
			want:      []string{rangeV4, rangeV6}},
		{name: "local policy: a not-ready local endpoint does not count",
			services:  []Service{lb("web", local)},
			endpoints: []Endpoints{eps("web", notReady("n1"), ready("n2"))},
			want:      []string{rangeV4, rangeV6}},
		{name: "local policy: a serving-but-terminating local endpoint keeps the node while it serves, others ready or not (kube-proxy decides per node)",
			services:  []Service{lb("web", local)},
			endpoints: []Endpoints{eps("web", draining("n1"), ready("n2"))},
			want:      []string{rangeV4, "198.51.100.10/32 externalIPs [default/web]", "203.0.113.10/32 loadBalancerIPs [default/web]", rangeV6}},
		{name: "local policy: a terminating local endpoint that no longer serves does not count",
			services:  []Service{lb("web", local)},
			endpoints: []Endpoints{eps("web", gone("n1"), ready("n2"))},
			want:      []string{rangeV4, rangeV6}},
		{name: "local policy: a ready local endpoint wins over a draining one on the same node",
			services:  []Service{lb("web", local)},
			endpoints: []Endpoints{eps("web", draining("n1"), ready("n1"))},
			want:      []string{rangeV4, "198.51.100.10/32 externalIPs [default/web]", "203.0.113.10/32 loadBalancerIPs [default/web]", rangeV6}},
		{name: "local policy: serving-but-terminating endpoints drain when no endpoint is ready",
			services:  []Service{lb("web", local)},
			endpoints: []Endpoints{eps("web", draining("n1"), notReady("n2"))},
			want:      []string{rangeV4, "198.51.100.10/32 externalIPs [default/web]", "203.0.113.10/32 loadBalancerIPs [default/web]", rangeV6}},
		{name: "local policy: endpoints split over several slices",
			services:  []Service{lb("web", local)},
			endpoints: []Endpoints{eps("web", ready("n2")), eps("web", ready("n1"))},
			want:      []string{rangeV4, "198.51.100.10/32 externalIPs [default/web]", "203.0.113.10/32 loadBalancerIPs [default/web]", rangeV6}},
		{name: "cluster policy: serving-but-terminating elsewhere keeps it while nothing is ready",
			services:  []Service{lb("web")},
			endpoints: []Endpoints{eps("web", draining("n2"))},
			want:      []string{rangeV4, "198.51.100.10/32 externalIPs [default/web]", "203.0.113.10/32 loadBalancerIPs [default/web]", rangeV6}},
		{name: "no usable endpoint: withdrawn everywhere",
			services:  []Service{lb("web"), lb("db", local, func(s *Service) { s.ExternalIPs = addrs("198.51.100.11"); s.LoadBalancerIPs = addrs("203.0.113.11") })},
			endpoints: []Endpoints{eps("web", notReady("n1"), gone("n2")), eps("db", gone("n1"))},
			want:      []string{rangeV4, rangeV6}},
		{name: "no EndpointSlice at all: withdrawn",
			services: []Service{lb("web")},
			want:     []string{rangeV4, rangeV6}},
		{name: "excluded node advertises nothing",
			node:      "gw",
			services:  []Service{lb("web")},
			endpoints: []Endpoints{eps("web", ready("gw"))}},
		{name: "node without kube-proxy advertises nothing",
			noProxy:   true,
			services:  []Service{lb("web")},
			endpoints: []Endpoints{eps("web", ready("n1"))}},
		{name: "opt-out annotation",
			services:  []Service{lb("web", func(s *Service) { s.Advertise = false })},
			endpoints: []Endpoints{eps("web", ready("n1"))},
			want:      []string{rangeV4, rangeV6}},
		{name: "addresses outside the allow-lists",
			services: []Service{lb("web", func(s *Service) {
				s.ExternalIPs = addrs("192.0.2.1", "198.51.100.10")
				s.LoadBalancerIPs = addrs("198.51.100.99", "203.0.113.10") // an external-IP range is no LB allow-list
			})},
			endpoints: []Endpoints{eps("web", ready("n1"))},
			want:      []string{rangeV4, "198.51.100.10/32 externalIPs [default/web]", "203.0.113.10/32 loadBalancerIPs [default/web]", rangeV6}},
		{name: "nothing configured: nothing advertised",
			cfg:       func(c *config.Configuration) { *c = config.DefaultConfiguration() },
			services:  []Service{lb("web")},
			endpoints: []Endpoints{eps("web", ready("n1"))}},
		{name: "cluster IP range as a whole, not per Service",
			cfg:       func(c *config.Configuration) { c.ServiceClusterIPs = prefixes("10.96.0.0/12") },
			services:  []Service{{Namespace: "default", Name: "api", Type: corev1.ServiceTypeClusterIP, Advertise: true, ClusterIPs: addrs("10.96.0.1")}},
			endpoints: []Endpoints{eps("api", ready("n2"))},
			want:      []string{rangeV4}},
		{name: "internalTrafficPolicy Local: cluster IP /32 from nodes with a local endpoint only",
			services: []Service{
				{Namespace: "default", Name: "a", Type: corev1.ServiceTypeClusterIP, Advertise: true, InternalLocal: true, ClusterIPs: addrs("10.96.0.20", "fd00:10:96::20")},
				{Namespace: "default", Name: "b", Type: corev1.ServiceTypeClusterIP, Advertise: true, InternalLocal: true, ClusterIPs: addrs("10.96.0.21")},
			},
			endpoints: []Endpoints{eps("a", ready("n1")), eps6("a", ready("n1")), eps("b", ready("n2"))},
			want:      []string{rangeV4, "10.96.0.20/32 clusterIPs [default/a]", rangeV6, "fd00:10:96::20/128 clusterIPs [default/a]"}},
		{name: "internalTrafficPolicy does not change external advertisement",
			services:  []Service{lb("web", func(s *Service) { s.InternalLocal = true })},
			endpoints: []Endpoints{eps("web", ready("n2"))},
			want:      []string{rangeV4, "198.51.100.10/32 externalIPs [default/web]", "203.0.113.10/32 loadBalancerIPs [default/web]", rangeV6}},
		{name: "dual-stack",
			services: []Service{lb("web", local, func(s *Service) {
				s.ClusterIPs = addrs("10.96.0.10", "fd00:10:96::10")
				s.ExternalIPs = addrs("198.51.100.10", "2001:db8:e::10")
				s.LoadBalancerIPs = addrs("203.0.113.10", "2001:db8:1b::10")
			})},
			endpoints: []Endpoints{eps("web", ready("n1")), eps6("web", ready("n1"))},
			want: []string{rangeV4, "198.51.100.10/32 externalIPs [default/web]", "203.0.113.10/32 loadBalancerIPs [default/web]",
				"2001:db8:e::10/128 externalIPs [default/web]", "2001:db8:1b::10/128 loadBalancerIPs [default/web]", rangeV6}},
		{name: "dual-stack: each family from the nodes with a local endpoint of that family",
			services: []Service{lb("web", local, func(s *Service) {
				s.ExternalIPs = nil
				s.LoadBalancerIPs = addrs("203.0.113.10", "2001:db8:1b::10")
			})},
			endpoints: []Endpoints{eps("web", ready("n2")), eps6("web", ready("n1"))},
			want:      []string{rangeV4, "2001:db8:1b::10/128 loadBalancerIPs [default/web]", rangeV6}},
		{name: "dual-stack cluster policy: a family without endpoints is withdrawn",
			services: []Service{lb("web", func(s *Service) {
				s.ExternalIPs = nil
				s.LoadBalancerIPs = addrs("203.0.113.10", "2001:db8:1b::10")
			})},
			endpoints: []Endpoints{eps("web", ready("n2")), eps6("web", notReady("n2"))},
			want:      []string{rangeV4, "203.0.113.10/32 loadBalancerIPs [default/web]", rangeV6}},
		{name: "headless and ExternalName ignored",
			services: []Service{
				{Namespace: "default", Name: "headless", Type: corev1.ServiceTypeClusterIP, Advertise: true, ExternalIPs: addrs("198.51.100.10")},
				{Namespace: "default", Name: "ext", Type: corev1.ServiceTypeExternalName, Advertise: true, ExternalIPs: addrs("198.51.100.11")},
			},
			endpoints: []Endpoints{eps("headless", ready("n1")), eps("ext", ready("n1"))},
			want:      []string{rangeV4, rangeV6}},
		{name: "external IPs of a ClusterIP Service; LB status only counts on type LoadBalancer",
			services:  []Service{lb("web", func(s *Service) { s.Type = corev1.ServiceTypeClusterIP })},
			endpoints: []Endpoints{eps("web", ready("n1"))},
			want:      []string{rangeV4, "198.51.100.10/32 externalIPs [default/web]", rangeV6}},
		{name: "a shared LoadBalancer IP lists both Services",
			services:  []Service{lb("a", func(s *Service) { s.ExternalIPs = nil }), lb("b", func(s *Service) { s.ExternalIPs = nil })},
			endpoints: []Endpoints{eps("a", ready("n2")), eps("b", ready("n2"))},
			want:      []string{rangeV4, "203.0.113.10/32 loadBalancerIPs [default/a default/b]", rangeV6}},
		{name: "shared Local IP: from nodes serving either Service",
			services:  []Service{lb("a", local, func(s *Service) { s.ExternalIPs = nil }), lb("b", local, func(s *Service) { s.ExternalIPs = nil })},
			endpoints: []Endpoints{eps("a", ready("n2")), eps("b", ready("n1"))},
			want:      []string{rangeV4, "203.0.113.10/32 loadBalancerIPs [default/b]", rangeV6}},
		{name: "an address both external and LoadBalancer takes the LoadBalancer class",
			cfg:       func(c *config.Configuration) { c.ServiceExternalIPs = prefixes("203.0.113.0/24") },
			services:  []Service{lb("web", func(s *Service) { s.ExternalIPs = addrs("203.0.113.10") })},
			endpoints: []Endpoints{eps("web", ready("n1"))},
			want:      []string{rangeV4, "203.0.113.10/32 loadBalancerIPs [default/web]", rangeV6}},
		{name: "unknown node",
			node:    "n9",
			problem: "node n9: not among the Nodes"},
		{name: "malformed annotation is reported and the Service still advertised",
			services: []Service{lb("web", func(s *Service) {
				s.Problem = "metadata.annotations[podroute.io/advertise]: Invalid value: \"nope\": must be true or false"
			})},
			endpoints: []Endpoints{eps("web", ready("n1"))},
			want:      []string{rangeV4, "198.51.100.10/32 externalIPs [default/web]", "203.0.113.10/32 loadBalancerIPs [default/web]", rangeV6},
			problem:   "Service default/web: metadata.annotations[podroute.io/advertise]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			in := Input{Services: tc.services, Endpoints: tc.endpoints, Nodes: nodes, NodeName: "n1", KubeProxy: !tc.noProxy, Config: cfg}
			if tc.node != "" {
				in.NodeName = tc.node
			}
			got, problems := Desired(in)
			var gs []string
			for _, a := range got {
				gs = append(gs, a.String())
			}
			if !slices.Equal(gs, tc.want) {
				t.Errorf("advertised\n  %q\nwant\n  %q", gs, tc.want)
			}
			if tc.problem == "" && len(problems) != 0 || tc.problem != "" && (len(problems) != 1 || !strings.Contains(problems[0], tc.problem)) {
				t.Errorf("problems %q, want %q", problems, tc.problem)
			}
		})
	}
}

func TestDesiredAttributes(t *testing.T) {
	cfg := testConfig()
	got, _ := Desired(Input{
		Services:  []Service{lb("web")},
		Endpoints: []Endpoints{eps("web", ready("n1"))},
		Nodes:     []cluster.Node{{Name: "n1"}}, NodeName: "n1", KubeProxy: true, Config: cfg,
	})
	if len(got) != 4 {
		t.Fatalf("got %v", got)
	}
	for _, a := range got {
		if want := cfg.Advertisements.For(a.Class); !slices.Equal(a.Communities, want.Communities) || a.ASPathPrepend != want.ASPathPrepend {
			t.Errorf("%s: attributes %+v, want %+v", a, a.Attributes, want)
		}
	}
	if got[1].Class != config.ClassExternalIP || got[1].Communities[0].String() != "64512:300" || got[1].ASPathPrepend != 1 {
		t.Errorf("external IP advertisement %+v", got[1])
	}
}

func ptr[T any](v T) *T { return &v }

func TestFromObject(t *testing.T) {
	proxy := corev1.LoadBalancerIPModeProxy
	o := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", Annotations: map[string]string{AnnotationAdvertise: "false"}},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10", "fd00:10:96::10"},
			ExternalIPs:           []string{"198.51.100.10", "not-an-ip"},
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			InternalTrafficPolicy: ptr(corev1.ServiceInternalTrafficPolicyLocal),
		},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{
			{IP: "203.0.113.10"}, {IP: "203.0.113.11", IPMode: &proxy}, {Hostname: "lb.example"},
		}}},
	}
	s := FromObject(o)
	if s.Key() != "ns/web" || s.Advertise || !s.ExternalLocal || !s.InternalLocal || s.Problem != "" ||
		!slices.Equal(s.ClusterIPs, addrs("10.96.0.10", "fd00:10:96::10")) || !slices.Equal(s.ExternalIPs, addrs("198.51.100.10")) ||
		!slices.Equal(s.LoadBalancerIPs, addrs("203.0.113.10")) {
		t.Errorf("reduced %+v", s)
	}
	o.Annotations[AnnotationAdvertise] = "nope"
	o.Spec.ClusterIPs, o.Spec.ClusterIP = nil, corev1.ClusterIPNone
	if s := FromObject(o); !s.Advertise || !strings.Contains(s.Problem, `metadata.annotations[podroute.io/advertise]: Invalid value: "nope"`) || len(s.ClusterIPs) != 0 {
		t.Errorf("bad annotation, headless: %+v", s)
	}

	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-abc", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv6,
		Endpoints: []discoveryv1.Endpoint{
			{NodeName: ptr("n1")},
			{NodeName: ptr("n2"), Conditions: discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(true), Terminating: ptr(true)}},
			{Conditions: discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(false)}},
		},
	}
	e, ok := EndpointsFromSlice(es)
	want := []Endpoint{{NodeName: "n1", Ready: true, Serving: true}, {NodeName: "n2", Serving: true, Terminating: true}, {}}
	if !ok || e.Key() != "ns/web" || !e.IPv6 || !slices.Equal(e.Endpoints, want) {
		t.Errorf("endpoints %+v %v", e, ok)
	}
	es.AddressType = discoveryv1.AddressTypeFQDN
	if _, ok := EndpointsFromSlice(es); ok {
		t.Error("an FQDN slice accepted")
	}
	es.AddressType = discoveryv1.AddressTypeIPv4
	delete(es.Labels, discoveryv1.LabelServiceName)
	if _, ok := EndpointsFromSlice(es); ok {
		t.Error("a slice without kubernetes.io/service-name accepted")
	}
}

func TestRefusals(t *testing.T) {
	cfg := config.DefaultConfiguration()
	web := Service{Namespace: "shop", Name: "web", UID: "u1", Type: corev1.ServiceTypeLoadBalancer, Advertise: true,
		ExternalIPs:     []netip.Addr{netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("192.0.2.50")},
		LoadBalancerIPs: []netip.Addr{netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("2001:db8:1b::5")}}
	typo := Service{Namespace: "shop", Name: "typo", UID: "u2", Type: corev1.ServiceTypeClusterIP, Advertise: true,
		Problem: `metadata.annotations[podroute.io/advertise]: Invalid value: "nope": must be true or false; advertising as if unset`}
	off := web
	off.Name, off.UID, off.Advertise = "off", "u3", false

	// Nothing opted in: only the malformed annotation is said.
	if got := Refusals([]Service{web, typo, off}, cfg); len(got) != 1 || got[0].UID != "u2" || got[0].Field != "metadata.annotations[podroute.io/advertise]" {
		t.Errorf("no allow-lists: %+v", got)
	}

	cfg.ServiceExternalIPs = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	cfg.ServiceLoadBalancerIPs = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	got := Refusals([]Service{web, typo, off}, cfg)
	var msgs []string
	for _, r := range got {
		if r.UID == "u3" {
			t.Errorf("a Service opted out is refused nothing: %+v", r)
		}
		msgs = append(msgs, r.Field+" | "+r.Message)
	}
	want := []string{
		"spec.externalIPs | spec.externalIPs: 192.0.2.50 is outside the BGPConfiguration's serviceExternalIPs [198.51.100.0/24]: not advertised over BGP",
		"status.loadBalancer.ingress | status.loadBalancer.ingress: 2001:db8:1b::5 is outside the BGPConfiguration's serviceLoadBalancerIPs [203.0.113.0/24]: not advertised over BGP",
	}
	for _, w := range want {
		if !slices.Contains(msgs, w) {
			t.Errorf("refusals %q lack %q", msgs, w)
		}
	}
	if len(got) != 3 {
		t.Errorf("%d refusals, want 3: %q", len(got), msgs)
	}
	if got[0].Key() == got[1].Key() {
		t.Errorf("two refusals share a key: %q", got[0].Key())
	}
}

// A Local Service's addresses carry its healthCheckNodePort, for the node to confirm with
// kube-proxy before advertising; a Cluster Service's do not.
func TestHealthCheckNodePorts(t *testing.T) {
	cfg := config.DefaultConfiguration()
	cfg.ServiceLoadBalancerIPs = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	withPort := func(s *Service) { s.HealthCheckNodePort = 31000 }
	in := Input{
		Services: []Service{
			lb("web", local, withPort),
			lb("db", withPort, func(s *Service) { s.ExternalIPs = nil; s.LoadBalancerIPs = addrs("203.0.113.11") }),
		},
		Endpoints: []Endpoints{eps("web", ready("n1")), eps("db", ready("n1"))},
		Nodes:     []cluster.Node{{Name: "n1"}},
		NodeName:  "n1", KubeProxy: true, Config: cfg,
	}
	got, _ := Desired(in)
	ports := map[string][]int32{}
	for _, a := range got {
		ports[a.Prefix.String()] = a.HealthCheckNodePorts
	}
	if p := ports["203.0.113.10/32"]; !slices.Equal(p, []int32{31000}) {
		t.Errorf("Local Service's address: ports %v, want [31000] (%v)", p, got)
	}
	if p, ok := ports["203.0.113.11/32"]; !ok || len(p) != 0 {
		t.Errorf("Cluster Service's address: ports %v (advertised %v), want none", p, ok)
	}

	o := &corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, HealthCheckNodePort: 31000,
		ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal}}
	if s := FromObject(o); s.HealthCheckNodePort != 31000 {
		t.Errorf("FromObject: healthCheckNodePort %d", s.HealthCheckNodePort)
	}
	o.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	if s := FromObject(o); s.HealthCheckNodePort != 0 {
		t.Errorf("FromObject, Cluster: healthCheckNodePort %d, want none", s.HealthCheckNodePort)
	}
}

// A node whose Local endpoints all drain names the nodes with ready ones, per family, for the
// handover; a node with a ready local endpoint names none.
func TestHandovers(t *testing.T) {
	cfg := config.DefaultConfiguration()
	cfg.ServiceLoadBalancerIPs = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8:1b::/64")}
	nodes := []cluster.Node{
		{Name: "n1", Addresses: addrs("192.0.2.1", "2001:db8::1")},
		{Name: "n2", Addresses: addrs("192.0.2.2", "2001:db8::2")},
		{Name: "n3", Addresses: addrs("192.0.2.3")},
	}
	svc := lb("web", local, func(s *Service) {
		s.HealthCheckNodePort = 31000
		s.LoadBalancerIPs = addrs("203.0.113.10", "2001:db8:1b::10")
	})
	in := Input{Services: []Service{svc}, Nodes: nodes, NodeName: "n1", KubeProxy: true, Config: cfg,
		Endpoints: []Endpoints{eps("web", draining("n1"), ready("n2"), ready("n3")), eps6("web", draining("n1"), ready("n2"), ready("n3"))}}
	got, _ := Desired(in)
	hand := map[string][]HealthCheck{}
	for _, a := range got {
		hand[a.Prefix.String()] = a.Handovers
	}
	want4 := []HealthCheck{{netip.MustParseAddr("192.0.2.2"), 31000}, {netip.MustParseAddr("192.0.2.3"), 31000}}
	if h := hand["203.0.113.10/32"]; !slices.Equal(h, want4) {
		t.Errorf("IPv4 handovers %v, want %v", h, want4)
	}
	// n3 has no IPv6 address: nothing to ask it on.
	if h := hand["2001:db8:1b::10/128"]; !slices.Equal(h, []HealthCheck{{netip.MustParseAddr("2001:db8::2"), 31000}}) {
		t.Errorf("IPv6 handovers %v", h)
	}
	in.Endpoints = []Endpoints{eps("web", draining("n1"), ready("n1"), ready("n2"))}
	got, _ = Desired(in)
	for _, a := range got {
		if len(a.Handovers) != 0 {
			t.Errorf("%s: handovers %v with a ready local endpoint", a.Prefix, a.Handovers)
		}
	}
}
