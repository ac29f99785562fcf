package lbipam

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func mustPool(t *testing.T, name string, addrs ...string) Pool {
	t.Helper()
	p, errs := (&LoadBalancerIPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: PoolSpec{Addresses: addrs}}).Parse()
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	return p
}

func ips(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func req(key string, mutate ...func(*Request)) Request {
	r := Request{Key: key, Families: []bool{false}, Ports: []Port{{"TCP", 80}}}
	for _, m := range mutate {
		m(&r)
	}
	return r
}

func reason(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return fmt.Sprint(err)
}

func assign(t *testing.T, a *Allocator, r Request, want ...string) {
	t.Helper()
	got, err := a.Assign(r)
	if err != nil {
		t.Fatalf("Assign(%s): %v", r.Key, err)
	}
	if !slices.Equal(got, ips(want...)) {
		t.Fatalf("Assign(%s) = %v, want %v", r.Key, got, want)
	}
}

func refuse(t *testing.T, a *Allocator, r Request, wantReason, wantMsg string) {
	t.Helper()
	got, err := a.Assign(r)
	if err == nil || reason(err) != wantReason || !strings.Contains(err.Error(), wantMsg) {
		t.Fatalf("Assign(%s) = %v, %v; want %s containing %q", r.Key, got, err, wantReason, wantMsg)
	}
	if held := a.Assigned(r.Key); len(held) != 0 {
		t.Fatalf("%s holds %v after a refusal", r.Key, held)
	}
}

func TestAllocateAndExhaust(t *testing.T) {
	a := NewAllocator()
	a.SetPools([]Pool{mustPool(t, "b", "203.0.113.8/31"), mustPool(t, "a", "203.0.113.1-203.0.113.2")})
	assign(t, a, req("ns/s1"), "203.0.113.1") // pools in name order: a first
	assign(t, a, req("ns/s2"), "203.0.113.2")
	assign(t, a, req("ns/s3"), "203.0.113.8")
	assign(t, a, req("ns/s1"), "203.0.113.1") // idempotent
	assign(t, a, req("ns/s4"), "203.0.113.9")
	refuse(t, a, req("ns/s5"), ReasonPoolExhausted, "every IPv4 address of LoadBalancerIPPool a, b is in use")

	// Release frees the address for the next Service; nothing is handed out twice.
	a.Release("ns/s2")
	assign(t, a, req("ns/s5"), "203.0.113.2")
	seen := map[netip.Addr]string{}
	for _, k := range []string{"ns/s1", "ns/s3", "ns/s4", "ns/s5"} {
		for _, ip := range a.Assigned(k) {
			if prev, dup := seen[ip]; dup {
				t.Errorf("%s given to %s and %s", ip, prev, k)
			}
			seen[ip] = k
		}
	}
	if u := a.Usage(mustPool(t, "a", "203.0.113.1-203.0.113.2"), false); u != (FamilyUsage{Allocated: 2, Total: 2}) {
		t.Errorf("usage %+v", u)
	}
	if u := a.Usage(mustPool(t, "v6", "2001:db8::/64"), true); u != (FamilyUsage{Allocated: 0, Total: math.MaxInt64}) {
		t.Errorf("IPv6 /64 usage %+v, want the total saturated", u)
	}
}

// The search for a free address resumes where the last one ended, and a release anywhere
// below, even at the very end of the address space, makes that address the next one.
func TestAllocateAfterRelease(t *testing.T) {
	a := NewAllocator()
	a.SetPools([]Pool{mustPool(t, "end", "255.255.255.253-255.255.255.255"), mustPool(t, "v6end", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127")})
	for i, want := range []string{"255.255.255.253", "255.255.255.254", "255.255.255.255"} {
		assign(t, a, req(fmt.Sprintf("ns/s%d", i)), want)
	}
	refuse(t, a, req("ns/s3"), ReasonPoolExhausted, "in use")
	a.Release("ns/s2")
	a.Release("ns/s1")
	assign(t, a, req("ns/s3"), "255.255.255.254")
	assign(t, a, req("ns/s4"), "255.255.255.255")
	six := func(k string) Request { return req(k, func(r *Request) { r.Families = []bool{true} }) }
	assign(t, a, six("ns/v6a"), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")
	assign(t, a, six("ns/v6b"), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
	refuse(t, a, six("ns/v6c"), ReasonPoolExhausted, "IPv6")
	a.Release("ns/v6b")
	assign(t, a, six("ns/v6c"), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
}

func TestRequestedIPs(t *testing.T) {
	a := NewAllocator()
	a.SetPools([]Pool{mustPool(t, "p", "203.0.113.0/29", "2001:db8::/125")})
	assign(t, a, req("ns/want", func(r *Request) { r.Requested = ips("203.0.113.5") }), "203.0.113.5")
	refuse(t, a, req("ns/outside", func(r *Request) { r.Requested = ips("198.51.100.1") }), ReasonOutsidePools,
		"198.51.100.1 is in no LoadBalancerIPPool that serves this Service")
	refuse(t, a, req("ns/taken", func(r *Request) { r.Requested = ips("203.0.113.5") }), ReasonAlreadyInUse,
		"203.0.113.5 is already used by Service ns/want (sharing needs the annotation podroute.io/sharing-key on both)")
	refuse(t, a, req("ns/family", func(r *Request) { r.Requested = ips("2001:db8::1") }), ReasonInvalidRequest, "not a family of spec.ipFamilies")
	// Free allocation skips the requested address.
	assign(t, a, req("ns/any1"), "203.0.113.0")
	assign(t, a, req("ns/any2"), "203.0.113.1")
	// A changed request that cannot be met keeps what the Service had.
	got, err := a.Assign(req("ns/any2", func(r *Request) { r.Requested = ips("203.0.113.5") }))
	if reason(err) != ReasonAlreadyInUse || !slices.Equal(got, ips("203.0.113.1")) || !slices.Equal(a.Assigned("ns/any2"), ips("203.0.113.1")) {
		t.Errorf("unmet request: %v %v, holds %v; want IPAlreadyInUse keeping 203.0.113.1", got, err, a.Assigned("ns/any2"))
	}
	// Changing the request moves the Service.
	assign(t, a, req("ns/any1", func(r *Request) { r.Requested = ips("203.0.113.7") }), "203.0.113.7")
	assign(t, a, req("ns/any3"), "203.0.113.0")
	// Dual-stack request of both families.
	assign(t, a, req("ns/dual", func(r *Request) {
		r.Families, r.Policy, r.Requested = []bool{true, false}, RequireDualStack, ips("2001:db8::3", "203.0.113.3")
	}), "2001:db8::3", "203.0.113.3")
}

func TestSharing(t *testing.T) {
	a := NewAllocator()
	a.SetPools([]Pool{mustPool(t, "p", "203.0.113.0/30")})
	shared := func(key string, port int32, more ...func(*Request)) Request {
		return req(key, append([]func(*Request){func(r *Request) { r.SharingKey = "web"; r.Ports = []Port{{"TCP", port}} }}, more...)...)
	}
	assign(t, a, shared("ns/http", 80), "203.0.113.0")
	assign(t, a, shared("ns/https", 443), "203.0.113.0")                                                             // same key, other port: shares
	assign(t, a, shared("ns/http2", 80), "203.0.113.1")                                                              // port clash: its own
	assign(t, a, req("ns/plain", func(r *Request) { r.Ports = []Port{{"TCP", 22}} }), "203.0.113.2")                 // no key: never shares
	assign(t, a, shared("ns/local", 53, func(r *Request) { r.Local = true; r.Selector = "app=dns" }), "203.0.113.3") // Local vs Cluster
	refuse(t, a, shared("ns/udp", 80, func(r *Request) { r.Requested = ips("203.0.113.1") }), ReasonAlreadyInUse, "(a port clashes)")
	// Another protocol on the same port does not clash.
	assign(t, a, shared("ns/udp", 80, func(r *Request) { r.Ports = []Port{{"UDP", 80}}; r.Requested = ips("203.0.113.1") }), "203.0.113.1")
	refuse(t, a, req("ns/other-key", func(r *Request) { r.SharingKey = "db"; r.Requested = ips("203.0.113.0") }), ReasonAlreadyInUse, "(another sharing key)")
	if h := a.Holders(netip.MustParseAddr("203.0.113.0")); !slices.Equal(h, []string{"ns/http", "ns/https"}) {
		t.Errorf("holders %v", h)
	}
	// Releasing one sharer keeps the address with the other.
	a.Release("ns/http")
	if h := a.Holders(netip.MustParseAddr("203.0.113.0")); !slices.Equal(h, []string{"ns/https"}) {
		t.Errorf("holders after release %v", h)
	}
	if u := a.Usage(mustPool(t, "p", "203.0.113.0/30"), false); u.Allocated != 4 || u.Total != 4 {
		t.Errorf("usage %+v", u)
	}
	// A Service that stops asking to share while sharing is moved off on its next Assign.
	assign(t, a, shared("ns/http", 80), "203.0.113.0")
	refuse(t, a, req("ns/https", func(r *Request) { r.Ports = []Port{{"TCP", 443}} }), ReasonPoolExhausted, "in use")
}

func TestDualStack(t *testing.T) {
	a := NewAllocator()
	a.SetPools([]Pool{mustPool(t, "v4", "203.0.113.0/32"), mustPool(t, "v6", "2001:db8::/127")})
	dual := func(key string, p DualStack) Request {
		return req(key, func(r *Request) { r.Families, r.Policy = []bool{true, false}, p })
	}
	assign(t, a, dual("ns/require", RequireDualStack), "2001:db8::", "203.0.113.0")
	refuse(t, a, dual("ns/require2", RequireDualStack), ReasonPoolExhausted, "IPv4")
	if len(a.Assigned("ns/require2")) != 0 || len(a.Holders(netip.MustParseAddr("2001:db8::1"))) != 0 {
		t.Fatal("a failed RequireDualStack kept its IPv6 address")
	}
	assign(t, a, dual("ns/prefer", PreferDualStack), "2001:db8::1") // IPv4 exhausted: IPv6 alone
	refuse(t, a, req("ns/single"), ReasonPoolExhausted, "every IPv4 address of LoadBalancerIPPool v4 is in use")
	// Once an IPv4 address is free again, the PreferDualStack Service gets one too.
	a.Release("ns/require")
	assign(t, a, dual("ns/prefer", PreferDualStack), "2001:db8::1", "203.0.113.0")
	// SingleStack takes the first of spec.ipFamilies only.
	assign(t, a, dual("ns/six", SingleStack), "2001:db8::")
	// No pool of a family: named.
	b := NewAllocator()
	b.SetPools([]Pool{mustPool(t, "v4", "203.0.113.0/30")})
	refuse(t, b, dual("ns/x", RequireDualStack), ReasonNoMatchingPool, "no LoadBalancerIPPool with IPv6 addresses serves this Service")
	assign(t, b, dual("ns/x", PreferDualStack), "203.0.113.0")
}

func TestPoolSelectionAndMoves(t *testing.T) {
	a := NewAllocator()
	sel, errs := (&LoadBalancerIPPool{ObjectMeta: metav1.ObjectMeta{Name: "public"}, Spec: PoolSpec{
		Addresses: []string{"198.51.100.0/31"}, ServiceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"exposure": "public"}},
	}}).Parse()
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	classed := mustPool(t, "classed", "192.0.2.0/31")
	classed.Class = "example.com/other"
	a.SetPools([]Pool{sel, classed, mustPool(t, "private", "10.0.0.0/31")})
	assign(t, a, req("ns/pub", func(r *Request) { r.Labels = map[string]string{"exposure": "public"} }), "10.0.0.0") // "private" < "public"; both serve
	assign(t, a, req("ns/pub2", func(r *Request) {
		r.Labels = map[string]string{"exposure": "public"}
		r.Requested = ips("198.51.100.1")
	}), "198.51.100.1")
	refuse(t, a, req("ns/priv", func(r *Request) { r.Requested = ips("198.51.100.0") }), ReasonOutsidePools, "no LoadBalancerIPPool that serves this Service")
	assign(t, a, req("ns/cls", func(r *Request) { r.Class = "example.com/other"; r.Requested = ips("192.0.2.1") }), "192.0.2.1")
	refuse(t, a, req("ns/nocls", func(r *Request) { r.Requested = ips("192.0.2.0") }), ReasonOutsidePools, "192.0.2.0")

	// The pool of an address goes away: the Service moves on its next Assign.
	a.SetPools([]Pool{sel, classed, mustPool(t, "private2", "10.1.0.0/31")})
	assign(t, a, req("ns/pub", func(r *Request) { r.Labels = map[string]string{"exposure": "public"} }), "10.1.0.0")
	// Labels change so the selector no longer matches: moved off the selective pool.
	refuse(t, a, req("ns/pub2", func(r *Request) { r.Requested = ips("198.51.100.1") }), ReasonOutsidePools, "198.51.100.1")
}

func TestRestore(t *testing.T) {
	a := NewAllocator()
	a.SetPools([]Pool{mustPool(t, "p", "203.0.113.0/30")})
	// Oldest first, as the controller restores: the second claimant of .1 loses.
	if err := a.Restore(req("ns/old"), ips("203.0.113.1")); err != nil {
		t.Fatal(err)
	}
	if err := a.Restore(req("ns/young"), ips("203.0.113.1")); reason(err) != ReasonAlreadyInUse {
		t.Fatalf("second claimant: %v", err)
	}
	if err := a.Restore(req("ns/gone-pool"), ips("198.51.100.1")); reason(err) != ReasonOutsidePools {
		t.Fatalf("address of a deleted pool: %v", err)
	}
	// Sharers both restore.
	sh := func(k string, port int32) Request {
		return req(k, func(r *Request) { r.SharingKey = "k"; r.Ports = []Port{{"TCP", port}} })
	}
	if err := a.Restore(sh("ns/a", 80), ips("203.0.113.2")); err != nil {
		t.Fatal(err)
	}
	if err := a.Restore(sh("ns/b", 443), ips("203.0.113.2")); err != nil {
		t.Fatal(err)
	}
	// New allocations avoid what was restored; the loser gets a fresh address.
	assign(t, a, req("ns/young"), "203.0.113.0")
	assign(t, a, req("ns/old"), "203.0.113.1")
	assign(t, a, req("ns/new"), "203.0.113.3")
	refuse(t, a, req("ns/more"), ReasonPoolExhausted, "in use")
}

func TestParsePool(t *testing.T) {
	p := mustPool(t, "p", "203.0.113.0/30", " 198.51.100.10 - 198.51.100.12 ", "2001:db8::/126")
	if len(p.Ranges) != 3 || p.Ranges[1] != (Range{ips("198.51.100.10")[0], ips("198.51.100.12")[0]}) ||
		p.Ranges[2].Last != netip.MustParseAddr("2001:db8::3") || !p.Contains(netip.MustParseAddr("198.51.100.11")) ||
		p.Contains(netip.MustParseAddr("198.51.100.13")) || p.Contains(netip.MustParseAddr("::ffff:203.0.113.1")) {
		t.Errorf("parsed %+v", p)
	}
	bad := &LoadBalancerIPPool{ObjectMeta: metav1.ObjectMeta{Name: "bad"}, Spec: PoolSpec{
		Addresses:       []string{"203.0.113.1/30", "10.0.0.5-10.0.0.1", "10.0.0.1-2001:db8::1", "nope", "10.0.0.0/24", "10.0.0.128/25"},
		ServiceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "In"}}},
	}}
	_, errs := bad.Parse()
	got := errs.ToAggregate().Error()
	for _, want := range []string{
		`spec.addresses[0]: Invalid value: "203.0.113.1/30": has host bits set (did you mean 203.0.113.0/30?)`,
		`spec.addresses[1]: Invalid value: "10.0.0.5-10.0.0.1": the first address must not be after the last`,
		`spec.addresses[2]: Invalid value: "10.0.0.1-2001:db8::1": both ends of a range must be of the same family`,
		`spec.addresses[3]: Invalid value: "nope": must be a CIDR or a range`,
		`spec.addresses[5]: Invalid value: "10.0.0.128/25": overlaps 10.0.0.0/24`,
		`spec.serviceSelector: Invalid value`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("errors %q lack %q", got, want)
		}
	}
	if _, errs := (&LoadBalancerIPPool{}).Parse(); !strings.Contains(errs.ToAggregate().Error(), "spec.addresses: Required value") {
		t.Errorf("empty pool: %v", errs)
	}
}

func TestRequestFor(t *testing.T) {
	cls := "podroute.io/lbipam"
	dual := corev1.IPFamilyPolicyRequireDualStack
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", Labels: map[string]string{"a": "b"},
			Annotations: map[string]string{AnnotationIPs: "203.0.113.5, 2001:db8::5", AnnotationSharingKey: "web"}},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: &cls, IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol},
			IPFamilyPolicy: &dual, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Port: 80}, {Port: 53, Protocol: corev1.ProtocolUDP}},
		},
	}
	r, err := RequestFor(s)
	if err != nil || r.Key != "ns/web" || r.Class != cls || !slices.Equal(r.Families, []bool{true, false}) || r.Policy != RequireDualStack ||
		!slices.Equal(r.Requested, ips("203.0.113.5", "2001:db8::5")) || r.SharingKey != "web" || !r.Local || r.Selector != "app=web" ||
		!slices.Equal(r.Ports, []Port{{"TCP", 80}, {"UDP", 53}}) {
		t.Fatalf("request %+v %v", r, err)
	}
	for _, tc := range []struct {
		mutate func(*corev1.Service)
		want   string
	}{
		{func(s *corev1.Service) { s.Annotations[AnnotationIPs] = "203.0.113.5,203.0.113.6" }, `metadata.annotations[podroute.io/loadbalancer-ips]: Invalid value: "203.0.113.6": at most one IPv4 address`},
		{func(s *corev1.Service) { s.Annotations[AnnotationIPs] = "lb" }, `metadata.annotations[podroute.io/loadbalancer-ips]: Invalid value: "lb": must be IP addresses`},
		{func(s *corev1.Service) { s.Spec.LoadBalancerIP = "203.0.113.5" }, "Forbidden: set spec.loadBalancerIP or the annotation, not both"},
		{func(s *corev1.Service) { delete(s.Annotations, AnnotationIPs); s.Spec.LoadBalancerIP = "x" }, `spec.loadBalancerIP: Invalid value: "x"`},
		{func(s *corev1.Service) { s.Annotations[AnnotationSharingKey] = "a b" }, `metadata.annotations[podroute.io/sharing-key]: Invalid value: "a b"`},
	} {
		c := s.DeepCopy()
		tc.mutate(c)
		if _, err := RequestFor(c); reason(err) != ReasonInvalidRequest || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want %q", err, tc.want)
		}
	}
	c := s.DeepCopy()
	delete(c.Annotations, AnnotationIPs)
	c.Spec.LoadBalancerIP = "203.0.113.9"
	if r, err := RequestFor(c); err != nil || !slices.Equal(r.Requested, ips("203.0.113.9")) {
		t.Errorf("spec.loadBalancerIP: %+v %v", r, err)
	}
}
