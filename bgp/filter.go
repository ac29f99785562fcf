package bgp

import (
	"fmt"
	"net/netip"
	"slices"

	api "github.com/osrg/gobgp/v3/api"
)

// ImportFilter decides which learned prefixes the speaker accepts. Everything not allowed
// is refused (default deny). A learned prefix is accepted only if all of these hold:
//
//   - it is not a default route (0.0.0.0/0, ::/0);
//   - it does not overlap any Deny prefix (neither inside one nor containing one);
//   - it lies inside one of ClusterCIDRs;
//   - its length is at most MaxLenIPv4 / MaxLenIPv6 (the node pod CIDR size), so it is
//     between the cluster CIDR length and the node CIDR size, both inclusive.
//
// Our own advertisements are always accepted.
type ImportFilter struct {
	// ClusterCIDRs are the cluster pod CIDRs, both families. /0 is not allowed.
	ClusterCIDRs []netip.Prefix
	// MaxLenIPv4 and MaxLenIPv6 are the longest accepted prefix lengths (the node pod CIDR
	// mask size, e.g. 24 and 64). Required for a family that has cluster CIDRs; not
	// shorter than any cluster CIDR of that family.
	MaxLenIPv4 int
	MaxLenIPv6 int
	// Deny prefixes are always refused, even inside ClusterCIDRs: the node's own pod
	// CIDRs, node addresses, service CIDRs.
	Deny []netip.Prefix
}

// Refusal reasons.
const (
	ReasonDefaultRoute   = "default route"
	ReasonDenied         = "overlaps denied prefix"
	ReasonOutsideCluster = "outside cluster CIDRs"
	ReasonTooLong        = "longer than node CIDR size"
)

// normalize validates f and returns a canonical copy: prefixes masked, nested
// duplicates removed (GoBGP's prefix sets match only the longest stored prefix, see
// prefixSets, so nested entries would shadow each other).
func (f ImportFilter) normalize() (ImportFilter, error) {
	out := ImportFilter{MaxLenIPv4: f.MaxLenIPv4, MaxLenIPv6: f.MaxLenIPv6}
	var has4, has6 bool
	for i, p := range f.ClusterCIDRs {
		field := fmt.Sprintf("ImportFilter.ClusterCIDRs[%d]", i)
		if !p.IsValid() {
			return out, fieldErr(field, "invalid prefix")
		}
		p = unmapPrefix(p).Masked()
		if p.Bits() == 0 {
			return out, fieldErr(field, "%s would accept every route", p)
		}
		maxLen := f.MaxLenIPv6
		maxField := "ImportFilter.MaxLenIPv6"
		if p.Addr().Is4() {
			has4 = true
			maxLen, maxField = f.MaxLenIPv4, "ImportFilter.MaxLenIPv4"
		} else {
			has6 = true
		}
		if maxLen == 0 {
			return out, fieldErr(maxField, "required with cluster CIDR %s", p)
		}
		if maxLen < p.Bits() || maxLen > p.Addr().BitLen() {
			return out, fieldErr(maxField, "%d is outside %d..%d for cluster CIDR %s", maxLen, p.Bits(), p.Addr().BitLen(), p)
		}
		out.ClusterCIDRs = append(out.ClusterCIDRs, p)
	}
	if !has4 && f.MaxLenIPv4 != 0 && (f.MaxLenIPv4 < 0 || f.MaxLenIPv4 > 32) {
		return out, fieldErr("ImportFilter.MaxLenIPv4", "%d is outside 0..32", f.MaxLenIPv4)
	}
	if !has6 && f.MaxLenIPv6 != 0 && (f.MaxLenIPv6 < 0 || f.MaxLenIPv6 > 128) {
		return out, fieldErr("ImportFilter.MaxLenIPv6", "%d is outside 0..128", f.MaxLenIPv6)
	}
	for i, p := range f.Deny {
		if !p.IsValid() {
			return out, fieldErr(fmt.Sprintf("ImportFilter.Deny[%d]", i), "invalid prefix")
		}
		out.Deny = append(out.Deny, unmapPrefix(p).Masked())
	}
	out.ClusterCIDRs = outermost(out.ClusterCIDRs)
	out.Deny = outermost(out.Deny)
	return out, nil
}

// classify applies the filter rules to a learned prefix; "" means accepted. It mirrors
// the policy built by policies, and exists to give refusals a reason (GoBGP's policy
// engine does not say why it rejected a path).
func (f *ImportFilter) classify(p netip.Prefix) string {
	if p.Bits() == 0 {
		return ReasonDefaultRoute
	}
	for _, d := range f.Deny {
		if d.Overlaps(p) {
			return ReasonDenied + " " + d.String()
		}
	}
	inside := false
	for _, c := range f.ClusterCIDRs {
		if c.Bits() <= p.Bits() && c.Contains(p.Addr()) {
			inside = true
			break
		}
	}
	if !inside {
		return ReasonOutsideCluster
	}
	maxLen := f.MaxLenIPv6
	if p.Addr().Is4() {
		maxLen = f.MaxLenIPv4
	}
	if p.Bits() > maxLen {
		return fmt.Sprintf("%s /%d", ReasonTooLong, maxLen)
	}
	return ""
}

// Names of the GoBGP policy objects podroute owns.
const (
	importPolicyName = "podroute-import"
	exportPolicyName = "podroute-export"
	setAllow4        = "podroute-allow-v4"
	setAllow6        = "podroute-allow-v6"
	setDeny4         = "podroute-deny-v4"
	setDeny6         = "podroute-deny-v6"
	setRRClients     = "podroute-rr-clients"
)

// policies builds the whole routing policy: the import policy (assigned globally with
// default REJECT) and the export policy (default REJECT).
//
// Import: accept our own paths (GoBGP runs the global import policy on them too), reject
// anything overlapping Deny, accept cluster prefixes within the length range. Default
// routes need no statement: no allowed prefix set can contain them.
//
// Export: accept our own paths; accept everything towards route-reflector clients
// (GoBGP decides what to reflect). Without this a node would re-advertise other nodes'
// routes to its eBGP peers as if it were transit for them.
func (f *ImportFilter) policies(rrClients []netip.Addr) *api.SetPoliciesRequest {
	req := &api.SetPoliciesRequest{}
	accept := &api.Actions{RouteAction: api.RouteAction_ACCEPT}
	reject := &api.Actions{RouteAction: api.RouteAction_REJECT}
	local := &api.Statement{
		Name:       "allow-local",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    accept,
	}
	imp := &api.Policy{Name: importPolicyName, Statements: []*api.Statement{local}}
	addSet := func(name string, prefixes []*api.Prefix, actions *api.Actions) {
		// An empty set would not be accepted; nothing to match anyway.
		if len(prefixes) == 0 {
			return
		}
		req.DefinedSets = append(req.DefinedSets, &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: name, Prefixes: prefixes})
		imp.Statements = append(imp.Statements, &api.Statement{
			Name:       "match-" + name,
			Conditions: &api.Conditions{PrefixSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: name}},
			Actions:    actions,
		})
	}
	deny4, deny6 := denyEntries(f.Deny)
	addSet(setDeny4, deny4, reject)
	addSet(setDeny6, deny6, reject)
	var allow4, allow6 []*api.Prefix
	for _, c := range f.ClusterCIDRs {
		if c.Addr().Is4() {
			allow4 = append(allow4, apiPrefix(c, c.Bits(), f.MaxLenIPv4))
		} else {
			allow6 = append(allow6, apiPrefix(c, c.Bits(), f.MaxLenIPv6))
		}
	}
	addSet(setAllow4, allow4, accept)
	addSet(setAllow6, allow6, accept)

	exp := &api.Policy{Name: exportPolicyName, Statements: []*api.Statement{{
		Name:       "export-local",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    accept,
	}}}
	// An empty neighbor set matches every neighbor, so the statement only exists when
	// there are clients.
	if len(rrClients) > 0 {
		list := make([]string, 0, len(rrClients))
		for _, a := range rrClients {
			list = append(list, netip.PrefixFrom(a, a.BitLen()).String())
		}
		req.DefinedSets = append(req.DefinedSets, &api.DefinedSet{DefinedType: api.DefinedType_NEIGHBOR, Name: setRRClients, List: list})
		exp.Statements = append(exp.Statements, &api.Statement{
			Name:       "reflect-to-clients",
			Conditions: &api.Conditions{NeighborSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: setRRClients}},
			Actions:    accept,
		})
	}
	req.Policies = []*api.Policy{imp, exp}
	return req
}

// denyEntries turns non-nested deny prefixes into prefix-set entries matching every
// overlapping prefix. GoBGP looks up only the longest stored prefix containing the
// candidate, so each entry must be self-sufficient: D with lengths len(D)..max matches
// everything inside D, and each shorter truncation T of D, with exactly len(T), matches
// the supersets of D. Because the deny prefixes are not nested, a truncation never lies
// inside another deny prefix and cannot shadow it.
func denyEntries(deny []netip.Prefix) (v4, v6 []*api.Prefix) {
	seen := map[netip.Prefix]bool{}
	for _, d := range deny {
		entries := []*api.Prefix{apiPrefix(d, d.Bits(), d.Addr().BitLen())}
		for l := d.Bits() - 1; l >= 0; l-- {
			t := netip.PrefixFrom(d.Addr(), l).Masked()
			if seen[t] {
				continue
			}
			seen[t] = true
			entries = append(entries, apiPrefix(t, l, l))
		}
		if d.Addr().Is4() {
			v4 = append(v4, entries...)
		} else {
			v6 = append(v6, entries...)
		}
	}
	return v4, v6
}

func apiPrefix(p netip.Prefix, lo, hi int) *api.Prefix {
	return &api.Prefix{IpPrefix: p.String(), MaskLengthMin: uint32(lo), MaskLengthMax: uint32(hi)}
}

// outermost drops duplicates and prefixes contained in another one of the list.
func outermost(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for i, p := range ps {
		covered := false
		for j, q := range ps {
			if i == j {
				continue
			}
			if q.Bits() < p.Bits() && q.Contains(p.Addr()) || q == p && j < i {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, comparePrefix)
	return out
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}
