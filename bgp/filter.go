package bgp

import (
	"fmt"
	"maps"
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
//     between the cluster CIDR length and the node CIDR size, both inclusive;
//   - if the neighbor it came from has a PeerPrefixes entry, it is exactly one of the
//     prefixes listed there.
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
	// PeerPrefixes validates the origin of routes per neighbor address. A neighbor with
	// an entry (an iBGP mesh peer: another node) may only announce exactly the prefixes
	// listed, its own pod CIDRs; anything else it sends is refused, so one node cannot
	// attract another node's pod traffic. An empty list accepts nothing from it. Listed
	// prefixes the rules above refuse stay refused. Neighbors without an entry (ToR
	// peers, route reflectors, which carry other nodes' CIDRs) get the rules above only.
	PeerPrefixes map[netip.Addr][]netip.Prefix

	// owner maps each prefix listed in PeerPrefixes to the lowest neighbor listing it,
	// to name the rightful origin in refusal reasons. Set by normalize.
	owner map[netip.Prefix]netip.Addr
}

// Refusal reasons.
const (
	ReasonDefaultRoute   = "default route"
	ReasonDenied         = "overlaps denied prefix"
	ReasonOutsideCluster = "outside cluster CIDRs"
	ReasonTooLong        = "longer than node CIDR size"
	ReasonNotPeersCIDR   = "not the peer's pod CIDR"
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
	if f.PeerPrefixes == nil {
		return out, nil
	}
	out.PeerPrefixes = make(map[netip.Addr][]netip.Prefix, len(f.PeerPrefixes))
	out.owner = map[netip.Prefix]netip.Addr{}
	for a, ps := range f.PeerPrefixes {
		if !a.IsValid() || a.Zone() != "" {
			return out, fieldErr("ImportFilter.PeerPrefixes", "invalid neighbor address %q", a)
		}
		a = a.Unmap()
		own := out.PeerPrefixes[a]
		for i, p := range ps {
			if !p.IsValid() {
				return out, fieldErr(fmt.Sprintf("ImportFilter.PeerPrefixes[%s][%d]", a, i), "invalid prefix")
			}
			p = unmapPrefix(p).Masked()
			if o, ok := out.owner[p]; !ok || a.Less(o) {
				out.owner[p] = a
			}
			// Only prefixes the cluster rules allow go into the peer's accept set, so
			// a Node object claiming an outside or over-long CIDR gains nothing.
			if out.clusterReason(p) == "" {
				own = append(own, p)
			}
		}
		slices.SortFunc(own, comparePrefix)
		// Non-nil even when empty: the entry itself restricts the neighbor.
		out.PeerPrefixes[a] = append([]netip.Prefix{}, slices.Compact(own)...)
	}
	return out, nil
}

// classify applies the filter rules to a prefix learned from peer; "" means accepted.
// It mirrors the policy built by policies, and exists to give refusals a reason (GoBGP's
// policy engine does not say why it rejected a path). For a neighbor with a PeerPrefixes
// entry the cluster reasons take precedence over ReasonNotPeersCIDR: both refuse.
func (f *ImportFilter) classify(peer netip.Addr, p netip.Prefix) string {
	if p.Bits() == 0 {
		return ReasonDefaultRoute
	}
	for _, d := range f.Deny {
		if d.Overlaps(p) {
			return ReasonDenied + " " + d.String()
		}
	}
	own, validated := f.PeerPrefixes[peer.Unmap()]
	if validated && slices.Contains(own, p) {
		return ""
	}
	if reason := f.clusterReason(p); reason != "" || !validated {
		return reason
	}
	if o, ok := f.owner[p]; ok && o != peer.Unmap() {
		return fmt.Sprintf("%s (pod CIDR of peer %s)", ReasonNotPeersCIDR, o)
	}
	return ReasonNotPeersCIDR
}

// clusterReason applies the cluster rules (inside ClusterCIDRs, not longer than the node
// CIDR size) to a prefix that is no default route; "" means they allow it.
func (f *ImportFilter) clusterReason(p netip.Prefix) string {
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
	setDefault4      = "podroute-default-v4"
	setDefault6      = "podroute-default-v6"
	setAllow4        = "podroute-allow-v4"
	setAllow6        = "podroute-allow-v6"
	setDeny4         = "podroute-deny-v4"
	setDeny6         = "podroute-deny-v6"
	setValidated     = "podroute-validated-peers"
	setPeerPrefix    = "podroute-peer-" // + neighbor address, and "-v4"/"-v6" for its prefixes
	setRRClients     = "podroute-rr-clients"
	setNoExport      = "podroute-no-export"
)

// policies builds the whole routing policy: the import policy (assigned globally with
// default REJECT) and the export policy (default REJECT).
//
// Import, first match wins:
//
//  1. accept our own paths (GoBGP runs the global import policy on them too);
//  2. reject default routes;
//  3. reject anything overlapping Deny;
//  4. for each neighbor with a PeerPrefixes entry, accept from that neighbor exactly its
//     own prefixes (one statement per family with prefixes);
//  5. reject anything else from those neighbors;
//  6. accept cluster prefixes within the length range, from anyone left.
//
// GoBGP applies the global import policy to every peer's paths and matches a neighbor
// set against the address of the peer the path came from, so steps 4 and 5 single out
// the validated neighbors.
//
// Export: nothing to NoExport neighbors; accept our own paths; accept everything towards
// route-reflector clients (GoBGP decides what to reflect). Without the default reject a node
// would re-advertise other nodes' routes to its eBGP peers as if it were transit for them.
func (f *ImportFilter) policies(rrClients, noExport []netip.Addr) *api.SetPoliciesRequest {
	req := &api.SetPoliciesRequest{}
	accept := &api.Actions{RouteAction: api.RouteAction_ACCEPT}
	reject := &api.Actions{RouteAction: api.RouteAction_REJECT}
	local := &api.Statement{
		Name:       "allow-local",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    accept,
	}
	imp := &api.Policy{Name: importPolicyName, Statements: []*api.Statement{local}}
	// addPrefixSet defines a prefix set; GoBGP refuses an empty one, which would match
	// nothing anyway, so the caller skips its statement then.
	addPrefixSet := func(name string, prefixes []*api.Prefix) bool {
		if len(prefixes) == 0 {
			return false
		}
		req.DefinedSets = append(req.DefinedSets, &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: name, Prefixes: prefixes})
		return true
	}
	// addNeighborSet defines a neighbor set. An empty one would match every neighbor,
	// so it is never defined.
	addNeighborSet := func(name string, addrs []netip.Addr) bool {
		if len(addrs) == 0 {
			return false
		}
		list := make([]string, 0, len(addrs))
		for _, a := range addrs {
			list = append(list, netip.PrefixFrom(a, a.BitLen()).String())
		}
		req.DefinedSets = append(req.DefinedSets, &api.DefinedSet{DefinedType: api.DefinedType_NEIGHBOR, Name: name, List: list})
		return true
	}
	addStatement := func(name string, c *api.Conditions, actions *api.Actions) {
		imp.Statements = append(imp.Statements, &api.Statement{Name: name, Conditions: c, Actions: actions})
	}
	matchPrefixes := func(name string, prefixes []*api.Prefix, actions *api.Actions) {
		if addPrefixSet(name, prefixes) {
			addStatement("match-"+name, &api.Conditions{PrefixSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: name}}, actions)
		}
	}

	// Each default-route set holds only /0 with length 0..0, so nothing else matches.
	matchPrefixes(setDefault4, []*api.Prefix{apiPrefix(netip.MustParsePrefix("0.0.0.0/0"), 0, 0)}, reject)
	matchPrefixes(setDefault6, []*api.Prefix{apiPrefix(netip.MustParsePrefix("::/0"), 0, 0)}, reject)
	deny4, deny6 := denyEntries(f.Deny)
	matchPrefixes(setDeny4, deny4, reject)
	matchPrefixes(setDeny6, deny6, reject)

	peers := slices.SortedFunc(maps.Keys(f.PeerPrefixes), netip.Addr.Compare)
	for _, a := range peers {
		// Exact-length entries are safe with GoBGP's longest-match lookup: a listed
		// candidate finds itself (no longer stored prefix can contain it), and any
		// other candidate finds a shorter entry whose single length it misses.
		var own4, own6 []*api.Prefix
		for _, p := range f.PeerPrefixes[a] {
			if p.Addr().Is4() {
				own4 = append(own4, apiPrefix(p, p.Bits(), p.Bits()))
			} else {
				own6 = append(own6, apiPrefix(p, p.Bits(), p.Bits()))
			}
		}
		if len(own4)+len(own6) == 0 {
			continue // rejected by the validated-peers statement
		}
		nset := setPeerPrefix + a.String()
		addNeighborSet(nset, []netip.Addr{a})
		for _, fam := range []struct {
			suffix   string
			prefixes []*api.Prefix
		}{{"-v4", own4}, {"-v6", own6}} {
			pset := nset + fam.suffix
			if addPrefixSet(pset, fam.prefixes) {
				addStatement("origin-"+pset, &api.Conditions{
					NeighborSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: nset},
					PrefixSet:   &api.MatchSet{Type: api.MatchSet_ANY, Name: pset},
				}, accept)
			}
		}
	}
	if addNeighborSet(setValidated, peers) {
		addStatement("match-"+setValidated, &api.Conditions{NeighborSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: setValidated}}, reject)
	}

	var allow4, allow6 []*api.Prefix
	for _, c := range f.ClusterCIDRs {
		if c.Addr().Is4() {
			allow4 = append(allow4, apiPrefix(c, c.Bits(), f.MaxLenIPv4))
		} else {
			allow6 = append(allow6, apiPrefix(c, c.Bits(), f.MaxLenIPv6))
		}
	}
	matchPrefixes(setAllow4, allow4, accept)
	matchPrefixes(setAllow6, allow6, accept)

	exp := &api.Policy{Name: exportPolicyName}
	if addNeighborSet(setNoExport, noExport) {
		exp.Statements = append(exp.Statements, &api.Statement{
			Name:       "no-export",
			Conditions: &api.Conditions{NeighborSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: setNoExport}},
			Actions:    reject,
		})
	}
	exp.Statements = append(exp.Statements, &api.Statement{
		Name:       "export-local",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    accept,
	})
	// The statement only exists when there are clients (see addNeighborSet).
	if addNeighborSet(setRRClients, rrClients) {
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
