package services

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/config"
)

// AnnotationAdvertise, set to "false" on a Service, keeps all its addresses out of BGP.
const AnnotationAdvertise = "podroute.io/advertise"

// LabelExcludeFromLB on a Node keeps it from advertising any Service address: the label
// Kubernetes defines for nodes that must not receive load-balanced traffic.
const LabelExcludeFromLB = corev1.LabelNodeExcludeBalancers

// Service is a Service reduced to what advertisement needs.
type Service struct {
	Namespace, Name string
	// UID identifies the object, for Events about it.
	UID  types.UID
	Type corev1.ServiceType
	// ClusterIPs are spec.clusterIPs; empty for a headless Service.
	ClusterIPs []netip.Addr
	// ExternalIPs are spec.externalIPs that parse.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are status.loadBalancer.ingress[].ip whose ipMode is VIP (or unset):
	// kube-proxy does not capture a Proxy-mode address, so a node cannot serve it.
	LoadBalancerIPs []netip.Addr
	// ExternalLocal is externalTrafficPolicy Local; InternalLocal internalTrafficPolicy Local.
	ExternalLocal bool
	InternalLocal bool
	// HealthCheckNodePort is spec.healthCheckNodePort (a LoadBalancer with ExternalLocal):
	// kube-proxy answers there whether it forwards to local endpoints.
	HealthCheckNodePort int32
	// Advertise is false when the opt-out annotation says so.
	Advertise bool
	// Problem names a malformed podroute annotation; empty when there is none.
	Problem string
}

// Key is namespace/name.
func (s Service) Key() string { return s.Namespace + "/" + s.Name }

// HealthCheck is kube-proxy's health check of a Local Service on one node: its address of
// the family and the Service's healthCheckNodePort.
type HealthCheck struct {
	Addr netip.Addr
	Port int32
}

// Endpoint is one endpoint of an EndpointSlice: where it runs and its conditions.
type Endpoint struct {
	NodeName string
	// Ready, Serving and Terminating are the endpoint's conditions; an unset ready or
	// serving condition counts as true, as the EndpointSlice API says.
	Ready, Serving, Terminating bool
}

// Endpoints are the endpoints of one EndpointSlice of a Service.
type Endpoints struct {
	Namespace, Service string
	// IPv6 is the slice's address family: kube-proxy serves each family from its own
	// endpoints, so a node with only IPv6 endpoints cannot serve the IPv4 address.
	IPv6      bool
	Endpoints []Endpoint
}

// Key is namespace/name of the Service.
func (e Endpoints) Key() string { return e.Namespace + "/" + e.Service }

// Input is everything Desired decides from.
type Input struct {
	Services []Service
	// Endpoints may hold several entries per Service (one per EndpointSlice).
	Endpoints []Endpoints
	Nodes     []cluster.Node
	// NodeName is this node.
	NodeName string
	// KubeProxy is whether kube-proxy runs on this node in a mode that serves Service
	// addresses; without it the node advertises no Service address.
	KubeProxy bool
	Config    config.Configuration
}

// Advertisement is one prefix this node should advertise to its external peers.
type Advertisement struct {
	Prefix netip.Prefix
	Class  config.Class
	// Services are the Services behind the prefix (namespace/name, sorted), for display;
	// empty for a cluster IP range, several when Services share an address.
	Services []string
	// HealthCheckNodePorts are the healthCheckNodePorts of the externalTrafficPolicy Local
	// Services behind the prefix: the node should advertise it only once its kube-proxy
	// answers 200 there for the prefix's family, i.e. forwards to the local endpoints.
	HealthCheckNodePorts []int32
	// Handovers are set when this node serves the prefix only through terminating endpoints
	// while other nodes have ready ones: kube-proxy's health checks on those nodes. Once one
	// answers 200 the other node advertises too, and this node should withdraw (after a
	// moment for that advertisement to reach the rack), before its endpoints stop serving.
	Handovers []HealthCheck
	config.Attributes
}

// String is for logs: "203.0.113.10/32 loadBalancerIPs [default/web]".
func (a Advertisement) String() string {
	return fmt.Sprintf("%s %s %v", a.Prefix, a.Class, a.Services)
}

// Desired returns the Service prefixes this node should advertise, sorted by prefix, and the
// problems found on the way (each naming its object and field). It never fails: what is
// wrong with one Service leaves the others alone.
//
// Rules, in order:
//   - a node that does not run kube-proxy, carries LabelExcludeFromLB, or is not among
//     Nodes advertises nothing;
//   - headless and ExternalName Services and Services annotated AnnotationAdvertise=false
//     are ignored;
//   - each range of Config.ServiceClusterIPs is advertised as a whole;
//   - a cluster IP inside those ranges of an internalTrafficPolicy Local Service is also
//     advertised as /32 (/128) from the nodes with a usable local endpoint, because
//     kube-proxy drops its traffic on the others;
//   - external IPs inside Config.ServiceExternalIPs and LoadBalancer IPs inside
//     Config.ServiceLoadBalancerIPs are advertised as /32 (/128): with
//     externalTrafficPolicy Cluster by every node while the Service has a usable endpoint
//     anywhere; with Local only by nodes with a usable local endpoint;
//   - usable endpoints are the ready ones; when a Service has none, its serving and
//     terminating ones (kube-proxy's fallback, so the last pods can drain); a Service
//     with neither is withdrawn everywhere;
//   - all of this per address family, as kube-proxy proxies each family with the
//     EndpointSlices of that family.
func Desired(in Input) ([]Advertisement, []string) {
	var problems []string
	self := slices.IndexFunc(in.Nodes, func(n cluster.Node) bool { return n.Name == in.NodeName })
	if self < 0 {
		return nil, []string{fmt.Sprintf("node %s: not among the Nodes; no Service address advertised", in.NodeName)}
	}
	if !in.KubeProxy {
		return nil, nil
	}
	if _, ok := in.Nodes[self].Labels[LabelExcludeFromLB]; ok {
		return nil, nil
	}
	cfg := in.Config
	out := map[netip.Prefix]*Advertisement{}
	add := func(p netip.Prefix, class config.Class, svc string) {
		a, ok := out[p]
		if !ok {
			a = &Advertisement{Prefix: p, Class: class, Attributes: cfg.Advertisements.For(class)}
			out[p] = a
		} else if classRank(class) > classRank(a.Class) {
			// One address both an external IP and a LoadBalancer IP: the more specific
			// role's attributes win.
			a.Class, a.Attributes = class, cfg.Advertisements.For(class)
		}
		if svc != "" && !slices.Contains(a.Services, svc) {
			a.Services = append(a.Services, svc)
		}
	}
	for _, p := range cfg.ServiceClusterIPs {
		add(p, config.ClassClusterIP, "")
	}

	type famKey struct {
		svc  string
		ipv6 bool
	}
	eps := map[famKey][]Endpoint{}
	for _, e := range in.Endpoints {
		k := famKey{e.Key(), e.IPv6}
		eps[k] = append(eps[k], e.Endpoints...)
	}
	for _, s := range in.Services {
		if s.Problem != "" {
			problems = append(problems, fmt.Sprintf("Service %s: %s", s.Key(), s.Problem))
		}
		if !s.Advertise || s.Type == corev1.ServiceTypeExternalName || len(s.ClusterIPs) == 0 {
			continue
		}
		var anywhere, local [2]bool    // per family: [0] IPv4, [1] IPv6
		var successors [2][]netip.Addr // nodes taking over from this one's draining endpoints
		for f, v6 := range []bool{false, true} {
			var next []string
			anywhere[f], local[f], next = usable(eps[famKey{s.Key(), v6}], in.NodeName)
			for _, name := range next {
				if i := slices.IndexFunc(in.Nodes, func(n cluster.Node) bool { return n.Name == name }); i >= 0 {
					if a, ok := in.Nodes[i].Address(v6); ok {
						successors[f] = append(successors[f], a)
					}
				}
			}
		}
		fam := func(ip netip.Addr) int {
			if ip.Unmap().Is6() {
				return 1
			}
			return 0
		}
		// serves says whether this node advertises ip under the external traffic policy.
		serves := func(ip netip.Addr) bool {
			f := fam(ip)
			return local[f] || anywhere[f] && !s.ExternalLocal
		}
		if s.InternalLocal {
			for _, ip := range s.ClusterIPs {
				if local[fam(ip)] && inAny(ip, cfg.ServiceClusterIPs) {
					add(host(ip), config.ClassClusterIP, s.Key())
				}
			}
		}
		// checked marks an address of a Local Service as one to confirm with kube-proxy.
		checked := func(ip netip.Addr) {
			if s.ExternalLocal && s.HealthCheckNodePort > 0 {
				a := out[host(ip)]
				if !slices.Contains(a.HealthCheckNodePorts, s.HealthCheckNodePort) {
					a.HealthCheckNodePorts = append(a.HealthCheckNodePorts, s.HealthCheckNodePort)
				}
				for _, n := range successors[fam(ip)] {
					if hc := (HealthCheck{Addr: n, Port: s.HealthCheckNodePort}); !slices.Contains(a.Handovers, hc) {
						a.Handovers = append(a.Handovers, hc)
					}
				}
			}
		}
		for _, ip := range s.ExternalIPs {
			if serves(ip) && inAny(ip, cfg.ServiceExternalIPs) {
				add(host(ip), config.ClassExternalIP, s.Key())
				checked(ip)
			}
		}
		if s.Type == corev1.ServiceTypeLoadBalancer {
			for _, ip := range s.LoadBalancerIPs {
				if serves(ip) && inAny(ip, cfg.ServiceLoadBalancerIPs) {
					add(host(ip), config.ClassLoadBalancerIP, s.Key())
					checked(ip)
				}
			}
		}
	}

	res := make([]Advertisement, 0, len(out))
	for _, a := range out {
		slices.Sort(a.Services)
		slices.Sort(a.HealthCheckNodePorts)
		slices.SortFunc(a.Handovers, func(x, y HealthCheck) int { return cmp.Or(x.Addr.Compare(y.Addr), cmp.Compare(x.Port, y.Port)) })
		res = append(res, *a)
	}
	slices.SortFunc(res, func(a, b Advertisement) int {
		return cmp.Or(a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
	})
	return res, problems
}

// Refusal is what of one Service podroute does not advertise, and why, naming the field: for
// an Event on the Service, so its owner learns it where they look.
type Refusal struct {
	Namespace, Name string
	UID             types.UID
	Field, Message  string
}

// Key identifies the refusal (the object and what is said of it).
func (r Refusal) Key() string { return string(r.UID) + "\x00" + r.Field + "\x00" + r.Message }

// Refusals lists, for every Service, its addresses outside the BGPConfiguration's allow-lists
// and its malformed annotations. A list that is empty (that class of address is not
// advertised at all) refuses nothing: only an operator who opted in hears of what falls
// outside. The result is the same on every node; one agent reports it.
func Refusals(svcs []Service, cfg config.Configuration) []Refusal {
	var out []Refusal
	for _, s := range svcs {
		say := func(field, format string, a ...any) {
			out = append(out, Refusal{Namespace: s.Namespace, Name: s.Name, UID: s.UID, Field: field, Message: fmt.Sprintf(format, a...)})
		}
		if s.Problem != "" {
			say("metadata.annotations["+AnnotationAdvertise+"]", "%s", s.Problem)
		}
		if !s.Advertise || s.Type == corev1.ServiceTypeExternalName {
			continue
		}
		if len(cfg.ServiceExternalIPs) > 0 {
			for _, ip := range s.ExternalIPs {
				if !inAny(ip, cfg.ServiceExternalIPs) {
					say("spec.externalIPs", "spec.externalIPs: %s is outside the BGPConfiguration's serviceExternalIPs %v: not advertised over BGP", ip, cfg.ServiceExternalIPs)
				}
			}
		}
		if s.Type == corev1.ServiceTypeLoadBalancer && len(cfg.ServiceLoadBalancerIPs) > 0 {
			for _, ip := range s.LoadBalancerIPs {
				if !inAny(ip, cfg.ServiceLoadBalancerIPs) {
					say("status.loadBalancer.ingress", "status.loadBalancer.ingress: %s is outside the BGPConfiguration's serviceLoadBalancerIPs %v: not advertised over BGP", ip, cfg.ServiceLoadBalancerIPs)
				}
			}
		}
	}
	return out
}

// usable reports whether kube-proxy forwards the Service's traffic to some endpoint: from
// anywhere (Cluster policy), and on node to a local one (Local policy). It is kube-proxy's
// own choice (CategorizeEndpoints): the ready endpoints, or when there are none the
// serving-and-terminating ones, decided cluster-wide for Cluster and per node for Local. So a
// node whose only pod is terminating keeps its Local address while the pod still serves,
// whatever other nodes have: in a rolling update the old node keeps the traffic until the
// new node advertises, instead of the rack having no route in between.
//
// successors are, when node's local endpoints are all draining, the other nodes with ready
// ones: where a Local Service's traffic goes next.
func usable(eps []Endpoint, node string) (anywhere, local bool, successors []string) {
	var readyAny, drainingAny, readyLocal, drainingLocal bool
	for _, e := range eps {
		draining := !e.Ready && e.Serving && e.Terminating
		readyAny = readyAny || e.Ready
		drainingAny = drainingAny || draining
		if e.NodeName == node {
			readyLocal = readyLocal || e.Ready
			drainingLocal = drainingLocal || draining
		}
	}
	if drainingLocal && !readyLocal {
		for _, e := range eps {
			if e.Ready && e.NodeName != node && e.NodeName != "" && !slices.Contains(successors, e.NodeName) {
				successors = append(successors, e.NodeName)
			}
		}
		slices.Sort(successors)
	}
	return readyAny || drainingAny, readyLocal || drainingLocal, successors
}

func classRank(c config.Class) int {
	switch c {
	case config.ClassLoadBalancerIP:
		return 3
	case config.ClassExternalIP:
		return 2
	case config.ClassClusterIP:
		return 1
	}
	return 0
}

func host(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen())
}

func inAny(a netip.Addr, ps []netip.Prefix) bool {
	a = a.Unmap()
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
}

// FromObject reduces a Service object.
func FromObject(o *corev1.Service) Service {
	s := Service{
		Namespace:     o.Namespace,
		Name:          o.Name,
		UID:           o.UID,
		Type:          o.Spec.Type,
		ExternalLocal: o.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal,
		InternalLocal: o.Spec.InternalTrafficPolicy != nil && *o.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal,
		Advertise:     true,
	}
	if s.ExternalLocal {
		s.HealthCheckNodePort = o.Spec.HealthCheckNodePort
	}
	if s.Type == "" {
		s.Type = corev1.ServiceTypeClusterIP
	}
	ips := o.Spec.ClusterIPs
	if len(ips) == 0 && o.Spec.ClusterIP != "" {
		ips = []string{o.Spec.ClusterIP}
	}
	for _, v := range ips {
		if a, err := netip.ParseAddr(v); err == nil {
			s.ClusterIPs = append(s.ClusterIPs, a)
		}
	}
	for _, v := range o.Spec.ExternalIPs {
		if a, err := netip.ParseAddr(strings.TrimSpace(v)); err == nil {
			s.ExternalIPs = append(s.ExternalIPs, a)
		}
	}
	for _, in := range o.Status.LoadBalancer.Ingress {
		if in.IPMode != nil && *in.IPMode == corev1.LoadBalancerIPModeProxy {
			continue
		}
		if a, err := netip.ParseAddr(in.IP); err == nil {
			s.LoadBalancerIPs = append(s.LoadBalancerIPs, a)
		}
	}
	if v, ok := o.Annotations[AnnotationAdvertise]; ok {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			// Keep advertising: a typo must not cut a Service off.
			s.Problem = fmt.Sprintf("metadata.annotations[%s]: Invalid value: %q: must be true or false; advertising as if unset", AnnotationAdvertise, v)
		} else {
			s.Advertise = b
		}
	}
	return s
}

// EndpointsFromSlice reduces an EndpointSlice; ok is false when the slice names no Service
// or is not of an IP family.
func EndpointsFromSlice(o *discoveryv1.EndpointSlice) (Endpoints, bool) {
	svc := o.Labels[discoveryv1.LabelServiceName]
	if svc == "" {
		return Endpoints{}, false
	}
	var v6 bool
	switch o.AddressType {
	case discoveryv1.AddressTypeIPv4:
	case discoveryv1.AddressTypeIPv6:
		v6 = true
	default:
		return Endpoints{}, false // FQDN slices are not proxied
	}
	e := Endpoints{Namespace: o.Namespace, Service: svc, IPv6: v6}
	for _, ep := range o.Endpoints {
		c := ep.Conditions
		e.Endpoints = append(e.Endpoints, Endpoint{
			NodeName:    ptrOr(ep.NodeName, ""),
			Ready:       ptrOr(c.Ready, true),
			Serving:     ptrOr(c.Serving, true),
			Terminating: ptrOr(c.Terminating, false),
		})
	}
	return e, true
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}
