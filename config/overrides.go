package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/podroute/podroute/cluster"
)

// Per-node overrides, as annotations (or labels, where the value fits a label) on the Node,
// all under cluster.AnnotationPrefix. An annotation wins over a label of the same key.
const (
	// AnnotationASN overrides the cluster's AS number for one node (see cluster.Node.ASN).
	AnnotationASN = cluster.AnnotationASN
	// AnnotationRouterID overrides the router ID (default: the node's first IPv4 address).
	AnnotationRouterID = cluster.AnnotationPrefix + "router-id"
	// AnnotationPeeringAddress sets the node's source address towards peers, at most one
	// per family, comma-separated: "192.0.2.10,2001:db8::10" (IPv6 only as an annotation:
	// label values cannot hold ':').
	AnnotationPeeringAddress = cluster.AnnotationPrefix + "peering-address"
)

// NodeOverrides are a node's per-node settings; zero fields mean "not overridden".
type NodeOverrides struct {
	ASN              uint32
	RouterID         netip.Addr
	PeeringAddresses []netip.Addr // at most one per family, IPv4 first
}

// PeeringAddress returns the overridden peering address of the family (IPv6 when v6).
func (o NodeOverrides) PeeringAddress(v6 bool) (netip.Addr, bool) {
	for _, a := range o.PeeringAddresses {
		if a.Is6() == v6 {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// OverridesForNode reads node's overrides. Errors name the annotation or label; a bad value
// is left out (the cluster default applies) so a typo never takes a node off the network.
func OverridesForNode(n cluster.Node) (NodeOverrides, field.ErrorList) {
	return ParseOverrides(n.Annotations, n.Labels)
}

// ParseOverrides reads overrides from annotations, then labels.
func ParseOverrides(annotations, nodeLabels map[string]string) (NodeOverrides, field.ErrorList) {
	var o NodeOverrides
	var errs field.ErrorList
	lookup := func(key string) (string, *field.Path, bool) {
		if v, ok := annotations[key]; ok {
			return strings.TrimSpace(v), field.NewPath("metadata", "annotations").Key(key), true
		}
		if v, ok := nodeLabels[key]; ok {
			return strings.TrimSpace(v), field.NewPath("metadata", "labels").Key(key), true
		}
		return "", nil, false
	}

	if v, path, ok := lookup(AnnotationASN); ok {
		// Same rules as cluster.Node.ASN.
		asn, err := strconv.ParseUint(v, 10, 32)
		if err != nil || asn == 0 || asn == asTrans {
			errs = append(errs, field.Invalid(path, v, "must be an AS number 1..4294967295 other than 23456"))
		} else {
			o.ASN = uint32(asn)
		}
	}
	if v, path, ok := lookup(AnnotationRouterID); ok {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() || a.IsUnspecified() || a.IsMulticast() {
			errs = append(errs, field.Invalid(path, v, "must be an IPv4 address (a BGP identifier), not 0.0.0.0 or multicast"))
		} else {
			o.RouterID = a
		}
	}
	if v, path, ok := lookup(AnnotationPeeringAddress); ok {
		var addrs []netip.Addr
		bad := false
		seen := map[bool]bool{}
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			a, err := netip.ParseAddr(s)
			switch {
			case err != nil:
				errs = append(errs, field.Invalid(path, v, fmt.Sprintf("%q is not an IP address", s)))
				bad = true
			case unicastProblem(a) != "":
				errs = append(errs, field.Invalid(path, v, fmt.Sprintf("%s: %s", s, unicastProblem(a))))
				bad = true
			case seen[a.Is6()]:
				errs = append(errs, field.Invalid(path, v, "at most one address per family"))
				bad = true
			default:
				seen[a.Is6()] = true
				addrs = append(addrs, a)
			}
		}
		if !bad {
			if len(addrs) == 2 && addrs[0].Is6() {
				addrs[0], addrs[1] = addrs[1], addrs[0]
			}
			o.PeeringAddresses = addrs
		}
	}
	return o, errs
}

// NodeASN is the node's AS number: the podroute.io/asn annotation (cluster.Node.ASN), else
// a label of that key, else def. On error def is returned with it.
func NodeASN(n cluster.Node, def uint32) (uint32, error) {
	if _, ok := n.Annotations[AnnotationASN]; ok {
		return n.ASN(def)
	}
	o, errs := ParseOverrides(nil, n.Labels)
	if err := errs.ToAggregate(); err != nil {
		return def, fmt.Errorf("node %s: %w", n.Name, err)
	}
	if o.ASN != 0 {
		return o.ASN, nil
	}
	return def, nil
}

// NodePeeringAddress is the node's source address towards a peer of the family: the
// override, else its first address of that family.
func NodePeeringAddress(n cluster.Node, v6 bool) (addr netip.Addr, ok bool, err error) {
	o, errs := OverridesForNode(n)
	if agg := errs.ToAggregate(); agg != nil {
		err = fmt.Errorf("node %s: %w", n.Name, agg)
	}
	if a, found := o.PeeringAddress(v6); found {
		return a, true, err
	}
	a, found := n.Address(v6)
	return a, found, err
}
