package bgp

import (
	"fmt"
	"net/netip"
	"slices"
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

// sameShared tells whether f and g, both normalized, have the same rules for every
// neighbour: everything but PeerPrefixes.
func (f ImportFilter) sameShared(g ImportFilter) bool {
	return slices.Equal(f.ClusterCIDRs, g.ClusterCIDRs) && f.MaxLenIPv4 == g.MaxLenIPv4 &&
		f.MaxLenIPv6 == g.MaxLenIPv6 && slices.Equal(f.Deny, g.Deny)
}

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
