package lbipam

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Annotations a Service may carry.
const (
	// AnnotationIPs requests specific addresses: "203.0.113.10" or
	// "203.0.113.10,2001:db8::10", at most one per family.
	AnnotationIPs = "podroute.io/loadbalancer-ips"
	// AnnotationSharingKey lets Services with the same key share an address when their
	// ports do not clash.
	AnnotationSharingKey = "podroute.io/sharing-key"
)

// RequestFor turns a Service into a Request. An unusable annotation or
// spec.loadBalancerIP is an error of reason ReasonInvalidRequest naming the field.
func RequestFor(s *corev1.Service) (Request, error) {
	r := Request{
		Key:    s.Namespace + "/" + s.Name,
		Labels: s.Labels,
		Local:  s.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal,
	}
	if s.Spec.LoadBalancerClass != nil {
		r.Class = *s.Spec.LoadBalancerClass
	}
	if len(s.Spec.Selector) > 0 {
		r.Selector = labels.SelectorFromSet(s.Spec.Selector).String()
	}
	for _, f := range s.Spec.IPFamilies {
		r.Families = append(r.Families, f == corev1.IPv6Protocol)
	}
	if p := s.Spec.IPFamilyPolicy; p != nil {
		switch *p {
		case corev1.IPFamilyPolicyPreferDualStack:
			r.Policy = PreferDualStack
		case corev1.IPFamilyPolicyRequireDualStack:
			r.Policy = RequireDualStack
		}
	}
	for _, p := range s.Spec.Ports {
		proto := string(p.Protocol)
		if proto == "" {
			proto = string(corev1.ProtocolTCP)
		}
		r.Ports = append(r.Ports, Port{Protocol: proto, Port: p.Port})
	}
	if k, ok := s.Annotations[AnnotationSharingKey]; ok {
		k = strings.TrimSpace(k)
		if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			return r, errorf(ReasonInvalidRequest, "metadata.annotations[%s]: Invalid value: %q: %s", AnnotationSharingKey, k, strings.Join(msgs, "; "))
		}
		r.SharingKey = k
	}

	v, annotated := s.Annotations[AnnotationIPs]
	if annotated && s.Spec.LoadBalancerIP != "" {
		return r, errorf(ReasonInvalidRequest, "metadata.annotations[%s]: Forbidden: set spec.loadBalancerIP or the annotation, not both", AnnotationIPs)
	}
	var asked []string
	field := ""
	if annotated {
		field = fmt.Sprintf("metadata.annotations[%s]", AnnotationIPs)
		asked = strings.Split(v, ",")
	} else if s.Spec.LoadBalancerIP != "" {
		field = "spec.loadBalancerIP"
		asked = []string{s.Spec.LoadBalancerIP}
	}
	seen := map[bool]bool{}
	for _, v := range asked {
		a, err := netip.ParseAddr(strings.TrimSpace(v))
		if err != nil || a.Zone() != "" || a.Is4In6() {
			return r, errorf(ReasonInvalidRequest, "%s: Invalid value: %q: must be IP addresses, at most one per family, separated by commas", field, v)
		}
		if seen[a.Is6()] {
			return r, errorf(ReasonInvalidRequest, "%s: Invalid value: %q: at most one %s address", field, v, family(a.Is6()))
		}
		seen[a.Is6()] = true
		r.Requested = append(r.Requested, a)
	}
	return r, nil
}
