// Package cluster is the agent's view of the Kubernetes cluster: the Nodes, read through a
// client-go informer and reduced to what routing needs (pod CIDRs, addresses).
package cluster

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Node is one Kubernetes Node as routing sees it.
type Node struct {
	Name string
	// PodCIDRs are spec.podCIDRs (or spec.podCIDR), at most one per family.
	PodCIDRs []netip.Prefix
	// Addresses are the InternalIPs (ExternalIPs when there is none), IPv4 first.
	Addresses []netip.Addr
	Labels    map[string]string
	// Annotations carry per-node overrides under AnnotationPrefix.
	Annotations map[string]string
	// Problem says why the node cannot take part in routing yet; empty when it can.
	Problem string
}

// AnnotationPrefix starts every podroute annotation on a Node.
const AnnotationPrefix = "podroute.io/"

// AnnotationASN overrides the cluster's AS number for one node.
const AnnotationASN = AnnotationPrefix + "asn"

// ASN returns the node's AS number: its podroute.io/asn annotation, else def. A malformed
// annotation is reported, and def is used, so a typo never takes the node off the mesh.
func (n *Node) ASN(def uint32) (uint32, error) {
	v, ok := n.Annotations[AnnotationASN]
	if !ok {
		return def, nil
	}
	asn, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
	if err != nil || asn == 0 || asn == 23456 /* AS_TRANS */ {
		return def, fmt.Errorf("node %s: annotation %s=%q is not a valid AS number", n.Name, AnnotationASN, v)
	}
	return uint32(asn), nil
}

// Address returns the node's first address of the family of want (IPv4 when want is invalid).
func (n *Node) Address(v6 bool) (netip.Addr, bool) {
	for _, a := range n.Addresses {
		if a.Is6() == v6 {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// FromObject reduces a Node object. It never fails: what is wrong lands in Problem, so one bad
// Node never stops the agent from serving the others.
func FromObject(o *corev1.Node) Node {
	n := Node{Name: o.Name, Labels: o.Labels, Annotations: o.Annotations}
	var problems []string

	cidrs := o.Spec.PodCIDRs
	if len(cidrs) == 0 && o.Spec.PodCIDR != "" {
		cidrs = []string{o.Spec.PodCIDR}
	}
	seen := map[bool]bool{}
	for i, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("spec.podCIDRs[%d] %q is not a CIDR", i, s))
			continue
		case p != p.Masked():
			problems = append(problems, fmt.Sprintf("spec.podCIDRs[%d] %q has host bits set", i, s))
			continue
		case seen[p.Addr().Is6()]:
			problems = append(problems, fmt.Sprintf("spec.podCIDRs[%d] %q: a second CIDR of the same family", i, s))
			continue
		}
		seen[p.Addr().Is6()] = true
		n.PodCIDRs = append(n.PodCIDRs, p.Masked())
	}
	if len(cidrs) == 0 {
		problems = append(problems, "spec.podCIDRs is empty (is the controller manager allocating node CIDRs?)")
	}

	for _, kind := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range o.Status.Addresses {
			if a.Type != kind {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				problems = append(problems, fmt.Sprintf("status.addresses %s %q is not an IP", a.Type, a.Address))
				continue
			}
			n.Addresses = append(n.Addresses, ip.Unmap())
		}
		if len(n.Addresses) > 0 {
			break
		}
	}
	sort.SliceStable(n.Addresses, func(i, j int) bool { return n.Addresses[i].Is4() && n.Addresses[j].Is6() })
	if len(n.Addresses) == 0 {
		problems = append(problems, "status.addresses has no InternalIP")
	}
	n.Problem = strings.Join(problems, "; ")
	return n
}
