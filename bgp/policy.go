// The import filter and export rules as GoBGP routing policy, and its application.

package bgp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// applyPoliciesLocked installs the routing policy for the current filter, neighbours,
// external-only and prepended prefixes. Needs opMu.
func (r *router) applyPoliciesLocked(ctx context.Context, initial bool) error {
	r.mu.Lock()
	f := r.filter
	rules := exportRules{asn: r.cfg.ASN, reflecting: r.reflectingLocked()}
	for a, n := range r.neighbors {
		if rules.reflecting && noReflect(n) {
			rules.noReflect = append(rules.noReflect, a)
		}
		if n.NoExport {
			rules.noExport = append(rules.noExport, a)
		}
		if n.nodeToNode() {
			rules.internal = append(rules.internal, a)
		}
	}
	for i, m := range r.externalOnly {
		rules.externalOnly[i] = slices.SortedFunc(maps.Keys(m), netip.Prefix.Compare)
	}
	for fam, m := range r.prepend {
		for p, n := range m {
			rules.prepend[n][fam] = append(rules.prepend[n][fam], p)
		}
	}
	r.mu.Unlock()
	for n := range rules.prepend {
		for _, l := range rules.prepend[n] {
			slices.SortFunc(l, netip.Prefix.Compare)
		}
	}
	for _, l := range [][]netip.Addr{rules.noReflect, rules.noExport, rules.internal} {
		slices.SortFunc(l, netip.Addr.Compare)
	}
	if err := r.srv.SetPolicies(ctx, f.policies(rules)); err != nil {
		return fmt.Errorf("bgp: set routing policy: %w", err)
	}
	if !initial {
		return nil
	}
	// SetPolicies keeps existing assignments, so they are made once. Export accepts what
	// its statements do not reject (see policies).
	for _, a := range []struct {
		names []string
		dir   api.PolicyDirection
		def   api.RouteAction
	}{
		{[]string{importOriginsPolicyName, importPolicyName}, api.PolicyDirection_POLICY_DIRECTION_IMPORT, api.RouteAction_ROUTE_ACTION_REJECT},
		{[]string{exportPolicyName}, api.PolicyDirection_POLICY_DIRECTION_EXPORT, api.RouteAction_ROUTE_ACTION_ACCEPT},
	} {
		var policies []*api.Policy
		for _, name := range a.names {
			policies = append(policies, &api.Policy{Name: name})
		}
		err := r.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
			Name:          "global",
			Direction:     a.dir,
			Policies:      policies,
			DefaultAction: a.def,
		}})
		if err != nil {
			return fmt.Errorf("bgp: assign policies %v: %w", a.names, err)
		}
	}
	return nil
}

// family indexes router.externalOnly and exportRules.externalOnly: 0 IPv4, 1 IPv6.
func family(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 0
	}
	return 1
}

// externalOnlyListedLocked tells whether the export policy keeps prefix from internal
// neighbours. Needs mu.
func (r *router) externalOnlyListedLocked(prefix netip.Prefix) bool {
	_, ok := r.externalOnly[family(prefix)][prefix]
	return ok
}

// setExternalOnlyLocked adds prefix to (on) or removes it from the export policy's
// external-only prefixes. Needs opMu.
//
// A family's prefix set and its statement exist only while the set has prefixes (GoBGP
// refuses an empty set), so the first prefix in and the last one out rebuild the whole
// policy. Every other change edits the set in place: GoBGP's statements point at the
// defined set it holds, and AddDefinedSet and DeleteDefinedSet edit that set under the
// lock its policy evaluation takes, so a Service coming or going costs one entry instead
// of rebuilding every node's origin sets.
func (r *router) setExternalOnlyLocked(ctx context.Context, prefix netip.Prefix, on bool) error {
	fam := family(prefix)
	change := func(on bool) int {
		r.mu.Lock()
		defer r.mu.Unlock()
		if on {
			r.externalOnly[fam][prefix] = struct{}{}
		} else {
			delete(r.externalOnly[fam], prefix)
		}
		return len(r.externalOnly[fam])
	}
	n := change(on)
	var err error
	if n == 0 || on && n == 1 {
		err = r.applyPoliciesLocked(ctx, false)
	} else {
		set := onePrefixSet(setExternalOnly[fam], prefix)
		if on {
			err = r.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: set})
		} else {
			err = r.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: set})
		}
	}
	if err != nil {
		change(!on)
		return fmt.Errorf("update external-only prefixes: %w", err)
	}
	return nil
}

// onePrefixSet is the prefix set name with the one exact-length entry for prefix: what
// AddDefinedSet and DeleteDefinedSet take to edit a set in place by one prefix.
func onePrefixSet(name string, prefix netip.Prefix) *api.DefinedSet {
	return &api.DefinedSet{
		DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX,
		Name:        name,
		Prefixes:    []*api.Prefix{apiPrefix(prefix, prefix.Bits(), prefix.Bits())},
	}
}

// prependedLocked is the count the export policy prepends prefix with towards external
// neighbours, 0 for none. Needs mu.
func (r *router) prependedLocked(prefix netip.Prefix) uint8 {
	return r.prepend[family(prefix)][prefix]
}

// setPrependLocked makes the export policy prepend prefix n times towards external
// neighbours (n 0: not at all). Needs opMu.
//
// Each (count, family) pair has its own prefix set and statement, which exist only while
// the set has prefixes: a change that empties a set or fills an empty one rebuilds the
// whole policy, once. Any other change edits the sets in place, as setExternalOnlyLocked
// does: the prefix is added to its new set before it leaves its old one, and the
// statements accept on their first match, so meanwhile the path is prepended by one count
// or the other, never by their sum nor by none.
func (r *router) setPrependLocked(ctx context.Context, prefix netip.Prefix, n uint8) error {
	fam := family(prefix)
	change := func(from, to uint8) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if from > 0 {
			r.prependSizes[fam][from]--
		}
		if to > 0 {
			r.prependSizes[fam][to]++
			r.prepend[fam][prefix] = to
		} else {
			delete(r.prepend[fam], prefix)
		}
	}
	r.mu.Lock()
	old := r.prependedLocked(prefix)
	rebuild := n > 0 && r.prependSizes[fam][n] == 0 || old > 0 && r.prependSizes[fam][old] == 1
	r.mu.Unlock()
	if old == n {
		return nil
	}
	change(old, n)
	if rebuild {
		if err := r.applyPoliciesLocked(ctx, false); err != nil {
			change(n, old)
			return fmt.Errorf("update prepended prefixes: %w", err)
		}
		return nil
	}
	set := func(count uint8) *api.DefinedSet { return onePrefixSet(setPrepend(fam, count), prefix) }
	if n > 0 {
		if err := r.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: set(n)}); err != nil {
			change(n, old)
			return fmt.Errorf("update prepended prefixes: %w", err)
		}
	}
	if old > 0 {
		if err := r.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: set(old)}); err != nil {
			if n > 0 {
				if rerr := r.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: set(n)}); rerr != nil {
					err = errors.Join(err, rerr)
				}
			}
			change(n, old)
			return fmt.Errorf("update prepended prefixes: %w", err)
		}
	}
	return nil
}

// resetInternalOutLocked re-runs the export policy towards every internal neighbour,
// sending withdrawals for what it now refuses. Needs opMu.
func (r *router) resetInternalOutLocked(ctx context.Context) error {
	return r.resetOutLocked(ctx, Neighbor.nodeToNode)
}

// resetExternalOutLocked re-runs the export policy towards every external neighbour
// (NoExport ones get nothing anyway). Needs opMu.
func (r *router) resetExternalOutLocked(ctx context.Context) error {
	return r.resetOutLocked(ctx, func(n Neighbor) bool { return !n.nodeToNode() && !n.NoExport })
}

// resetOutLocked soft-resets out the neighbours for which pick is true. Needs opMu.
func (r *router) resetOutLocked(ctx context.Context, pick func(Neighbor) bool) error {
	r.mu.Lock()
	var addrs []netip.Addr
	for a, n := range r.neighbors {
		if pick(n) {
			addrs = append(addrs, a)
		}
	}
	r.mu.Unlock()
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		if err := r.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: a.String(), Soft: true, Direction: api.ResetPeerRequest_DIRECTION_OUT}); err != nil {
			return fmt.Errorf("soft reset out %s: %w", a, err)
		}
	}
	return nil
}

// noReflect tells whether neighbour n must get none of the paths we learned: it is not our
// route-reflector client (NoExport ones get nothing anyway, by their own statement).
func noReflect(n Neighbor) bool { return !n.RouteReflectorClient && !n.NoExport }

// reflectingLocked tells whether any neighbour is our route-reflector client: only then
// does the export policy name the neighbours that are not (see policies). Needs mu.
func (r *router) reflectingLocked() bool {
	for _, n := range r.neighbors {
		if n.RouteReflectorClient {
			return true
		}
	}
	return false
}

// shapesPolicy tells whether adding, changing or removing neighbour n changes the policy:
// it is in one of the export policy's neighbour sets, or is a client, the first or last
// of which changes the policy (neighborSetsChangedLocked). Needs opMu.
func (r *router) shapesPolicy(n Neighbor) bool {
	if n.RouteReflectorClient || n.NoExport {
		return true
	}
	r.mu.Lock()
	reflecting := r.reflectingLocked()
	r.mu.Unlock()
	return noReflect(n) && reflecting || n.nodeToNode() && r.listsInternal()
}

// listsInternal tells whether any prefix is external-only or prepended: only then does
// the export policy refer to the internal neighbours.
func (r *router) listsInternal() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.externalOnly[0])+len(r.externalOnly[1])+len(r.prepend[0])+len(r.prepend[1]) > 0
}

// neighborSetsChangedLocked brings the export policy's neighbour sets from neighbour old to
// n (nil: not configured), r.neighbors already holding n. Adding a neighbour to a set, or
// taking it out, edits the set in place, as setExternalOnlyLocked does, so the neighbours
// already there keep their policy untouched. A set's first member in or last one out
// rebuilds the policy: only a non-empty set exists, with the statement using it. Needs opMu.
func (r *router) neighborSetsChangedLocked(ctx context.Context, old, n *Neighbor) error {
	listed := r.listsInternal()
	r.mu.Lock()
	reflecting := r.reflectingLocked()
	r.mu.Unlock()
	sets := []struct {
		name string
		in   func(Neighbor) bool
	}{
		// The clients have no defined set: only their first in or last out changes the
		// policy, and with it whether the other neighbours are named (see policies).
		{"", func(n Neighbor) bool { return n.RouteReflectorClient }},
		{setNoReflect, func(n Neighbor) bool { return reflecting && noReflect(n) }},
		{setNoExport, func(n Neighbor) bool { return n.NoExport }},
		// The internal neighbours' set exists only while listsInternal (see policies).
		{setInternal, func(n Neighbor) bool { return listed && n.nodeToNode() }},
	}
	in := func(n *Neighbor, i int) bool { return n != nil && sets[i].in(*n) }
	var a netip.Addr
	if old != nil {
		a = old.Address
	} else if n != nil {
		a = n.Address
	}
	var adds, dels []string
	rebuild := false
	r.mu.Lock()
	for i, set := range sets {
		if in(old, i) == in(n, i) {
			continue
		}
		others := false
		for b, m := range r.neighbors {
			if b != a && set.in(m) {
				others = true
				break
			}
		}
		switch {
		case !others:
			rebuild = true
		case set.name == "":
			// A client among others: no set to edit.
		case in(n, i):
			adds = append(adds, set.name)
		default:
			dels = append(dels, set.name)
		}
	}
	r.mu.Unlock()
	if rebuild {
		return r.applyPoliciesLocked(ctx, false)
	}
	for _, name := range adds {
		if err := r.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: neighborSet(name, a)}); err != nil {
			return r.rebuildAfter(ctx, fmt.Errorf("add %s to %s: %w", a, name, err))
		}
	}
	for _, name := range dels {
		if err := r.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: neighborSet(name, a)}); err != nil {
			return r.rebuildAfter(ctx, fmt.Errorf("remove %s from %s: %w", a, name, err))
		}
	}
	return nil
}

// rebuildAfter rebuilds the policy after an in-place edit failed half-way, which leaves
// GoBGP's policy part old, part new; the edit's error is only logged if the rebuild works.
// Needs opMu.
func (r *router) rebuildAfter(ctx context.Context, err error) error {
	r.log.Warn("bgp: routing policy edit failed, rebuilding it", "err", err)
	if rerr := r.applyPoliciesLocked(ctx, false); rerr != nil {
		return errors.Join(fmt.Errorf("bgp: edit routing policy: %w", err), rerr)
	}
	return nil
}

// updateImportLocked brings GoBGP's import policy from filter old to nf, both normalized.
// A change of the shared rules, or the first PeerPrefixes entry in or the last one out,
// rebuilds the whole policy. A change of some neighbours' entries, a Node coming or going,
// edits the policy in place, per neighbour (updateOriginLocked): the cost is that of the
// change, not of the cluster, and no other neighbour's policy is touched. Needs opMu.
func (r *router) updateImportLocked(ctx context.Context, old, nf ImportFilter) error {
	if !old.sameShared(nf) || (len(old.PeerPrefixes) == 0) != (len(nf.PeerPrefixes) == 0) {
		return r.applyPoliciesLocked(ctx, false)
	}
	var changed []netip.Addr
	for a, own := range nf.PeerPrefixes {
		if was, ok := old.PeerPrefixes[a]; !ok || !slices.Equal(was, own) {
			changed = append(changed, a)
		}
	}
	for a := range old.PeerPrefixes {
		if _, ok := nf.PeerPrefixes[a]; !ok {
			changed = append(changed, a)
		}
	}
	slices.SortFunc(changed, netip.Addr.Compare)
	for _, a := range changed {
		if err := r.updateOriginLocked(ctx, a, old, nf); err != nil {
			return r.rebuildAfter(ctx, fmt.Errorf("update origin of %s: %w", a, err))
		}
	}
	return nil
}

// updateOriginLocked edits the import policy in place from neighbour a's PeerPrefixes entry
// in old to its entry in nf: its membership of the validated set, its neighbor and prefix
// sets, and its origin statements. A new statement goes to the end of the origins policy,
// which GoBGP evaluates before the import policy (see policies); a statement leaving is
// taken out of whichever policy holds it. Needs opMu.
func (r *router) updateOriginLocked(ctx context.Context, a netip.Addr, old, nf ImportFilter) error {
	was, had := old.PeerPrefixes[a]
	own, has := nf.PeerPrefixes[a]
	from, to := originOf(a, was), originOf(a, own)
	validated := neighborSet(setValidated, a)
	if had && !has {
		// From here on a's paths are judged by the shared rules alone.
		if err := r.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: validated}); err != nil {
			return fmt.Errorf("leave %s: %w", setValidated, err)
		}
	}
	if from.neighbors == nil && to.neighbors != nil {
		if err := r.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: to.neighbors}); err != nil {
			return fmt.Errorf("define %s: %w", to.neighbors.Name, err)
		}
	}
	for fam := range to.prefixes {
		if err := r.updateOriginFamilyLocked(ctx, from, to, fam); err != nil {
			return err
		}
	}
	if from.neighbors != nil && to.neighbors == nil {
		if err := r.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: from.neighbors, All: true}); err != nil {
			return fmt.Errorf("delete %s: %w", from.neighbors.Name, err)
		}
	}
	if !had && has {
		// Only now, with its own prefixes accepted, is the rest a sends refused.
		if err := r.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: validated}); err != nil {
			return fmt.Errorf("join %s: %w", setValidated, err)
		}
	}
	return nil
}

// updateOriginFamilyLocked edits one family of a neighbour's origin from from to to: a
// statement with its prefix set comes or goes, or the set's entries change. Needs opMu.
func (r *router) updateOriginFamilyLocked(ctx context.Context, from, to origin, fam int) error {
	was, is := from.prefixes[fam], to.prefixes[fam]
	switch {
	case was == nil && is == nil:
		return nil
	case was == nil:
		if err := r.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: is}); err != nil {
			return fmt.Errorf("define %s: %w", is.Name, err)
		}
		policy := &api.Policy{Name: importOriginsPolicyName, Statements: []*api.Statement{to.statements[fam]}}
		if err := r.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: policy}); err != nil {
			return fmt.Errorf("add statement %s: %w", to.statements[fam].Name, err)
		}
		return nil
	case is == nil:
		st := from.statements[fam]
		for _, name := range []string{importOriginsPolicyName, importPolicyName} {
			// GoBGP takes a statement out of a policy by name, and ignores a policy
			// without it; the statement itself stays defined until deleted.
			policy := &api.Policy{Name: name, Statements: []*api.Statement{st}}
			if err := r.srv.DeletePolicy(ctx, &api.DeletePolicyRequest{Policy: policy, PreserveStatements: true}); err != nil {
				return fmt.Errorf("take statement %s out of %s: %w", st.Name, name, err)
			}
		}
		if err := r.srv.DeleteStatement(ctx, &api.DeleteStatementRequest{Statement: st, All: true}); err != nil {
			return fmt.Errorf("delete statement %s: %w", st.Name, err)
		}
		if err := r.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: was, All: true}); err != nil {
			return fmt.Errorf("delete %s: %w", was.Name, err)
		}
		return nil
	}
	// Both have prefixes: new entries in before old ones out, so a prefix listed in both
	// is never missing.
	key := func(p *api.Prefix) string { return p.IpPrefix }
	diff := func(a, b []*api.Prefix) []*api.Prefix {
		var out []*api.Prefix
		for _, p := range a {
			if !slices.ContainsFunc(b, func(q *api.Prefix) bool { return key(q) == key(p) }) {
				out = append(out, p)
			}
		}
		return out
	}
	if add := diff(is.Prefixes, was.Prefixes); len(add) > 0 {
		set := &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: is.Name, Prefixes: add}
		if err := r.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: set}); err != nil {
			return fmt.Errorf("add to %s: %w", is.Name, err)
		}
	}
	if del := diff(was.Prefixes, is.Prefixes); len(del) > 0 {
		set := &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: is.Name, Prefixes: del}
		if err := r.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: set}); err != nil {
			return fmt.Errorf("remove from %s: %w", is.Name, err)
		}
	}
	return nil
}

func (r *router) UpdateImportFilter(ctx context.Context, f ImportFilter) (err error) {
	defer guard("update import filter", &err)
	nf, err := f.normalize()
	if err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.running(); err != nil {
		return err
	}
	r.mu.Lock()
	old := r.filter
	r.filter = nf
	// Only the neighbours whose verdicts can change are re-judged: all of them when the
	// shared rules changed, else those whose own origin entry did. A Node joining the mesh
	// adds an entry for a neighbour with nothing received yet, and costs no one a reset.
	var addrs []netip.Addr
	shared := !old.sameShared(nf)
	for a := range r.neighbors {
		if shared || !slices.Equal(old.PeerPrefixes[a], nf.PeerPrefixes[a]) || hasEntry(old, a) != hasEntry(nf, a) {
			addrs = append(addrs, a)
		}
	}
	r.mu.Unlock()
	if err := r.updateImportLocked(ctx, old, nf); err != nil {
		return err
	}
	// Forget refusals the new filter allows, and account paths already held that it
	// now refuses (they will not be announced again).
	r.refusals.retain(func(p netip.Prefix, peer netip.Addr) bool { return nf.classify(peer, p) != "" })
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		r.mu.Lock()
		fams := r.neighbors[a].Families.table()
		r.mu.Unlock()
		for _, fam := range fams {
			err := r.srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_ADJ_IN, Name: a.String(), Family: fam},
				func(_ bgp.NLRI, paths []*apiutil.Path) {
					for _, p := range paths {
						if prefix, ok := pathPrefix(p); ok {
							if reason := nf.classify(a, prefix); reason != "" {
								r.refusals.note(prefix, a, reason)
							}
						}
					}
				})
			if err != nil {
				r.log.Debug("bgp: list adj-rib-in", "peer", a, "err", err)
			}
		}
		// Re-run the import policy over what this neighbour sent so far.
		if err := r.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: a.String(), Soft: true, Direction: api.ResetPeerRequest_DIRECTION_IN}); err != nil {
			return fmt.Errorf("bgp: re-apply import policy to %s: %w", a, err)
		}
	}
	r.filterResets.Add(uint64(len(addrs)))
	return nil
}

// hasEntry tells whether f restricts neighbour a to an origin list (possibly empty).
func hasEntry(f ImportFilter, a netip.Addr) bool {
	_, ok := f.PeerPrefixes[a]
	return ok
}

func (r *router) Refusals() []Refusal { return r.refusals.list() }

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
	setNoReflect     = "podroute-no-reflect"
	setNoExport      = "podroute-no-export"
	setInternal      = "podroute-internal"
)

// importOriginsPolicyName is evaluated before the import policy; it holds the origin
// statements added since the last rebuild (see updateImportLocked), after copies of the
// import policy's first statements named with originsPrefix.
const (
	importOriginsPolicyName = "podroute-import-origins"
	originsPrefix           = "origins-"
)

// setExternalOnly names the external-only prefix sets, by family.
var setExternalOnly = [2]string{"podroute-external-only-v4", "podroute-external-only-v6"}

// setPrepend names the prefix set of the given family whose paths are prepended n times.
func setPrepend(fam int, n uint8) string {
	return fmt.Sprintf("podroute-prepend-%d-v%d", n, [2]int{4, 6}[fam])
}

// exportRules are the inputs of the export policy besides the filter.
type exportRules struct {
	// noReflect, noExport and internal are neighbours: those that get no learned path
	// (noReflect, listed only when reflecting), NoExport ones, and the cluster's own nodes
	// (Kind mesh, reflector, rr-client).
	noReflect, noExport, internal []netip.Addr
	// reflecting is whether any neighbour is our route-reflector client.
	reflecting bool
	// externalOnly are the prefixes kept from internal neighbours, IPv4 then IPv6.
	externalOnly [2][]netip.Prefix
	// prepend are the prefixes prepended towards external neighbours, by count (index 0
	// unused) then family; asn is what they are prepended with, our AS.
	prepend [MaxASPathPrepend + 1][2][]netip.Prefix
	asn     uint32
}

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
// The import policy comes second in the global assignment: first is the origins policy,
// with copies of steps 1 to 3 and then the origin statements (step 4) added in place since
// this build (updateImportLocked; GoBGP only appends statements to a policy). A path no
// statement of it decides goes on to the import policy, so both together decide as the
// steps above. Built anew, it holds the copies only.
//
// Export, default accept: nothing to NoExport neighbors; no external-only prefix to
// internal neighbours; accept our own paths, prepended with our AS the prefix's count of
// times towards neighbours other than internal ones; reject learned paths towards every
// neighbour but route-reflector clients, which get what GoBGP decides to reflect. Without
// that reject a node would re-advertise other nodes' routes to its eBGP peers as if it
// were transit for them. GoBGP matches a neighbour set by scanning it, for every path and
// neighbour, so no statement names the many: without clients (a mesh node, a client) one
// statement without conditions rejects every learned path; a reflector, whose clients are
// the whole cluster (1,000 of them made reflection cost O(n) per path and client, most of
// its CPU), names the few neighbours that are not clients (noReflect).
func (f *ImportFilter) policies(rules exportRules) *api.SetPoliciesRequest {
	req := &api.SetPoliciesRequest{}
	accept := &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT}
	reject := &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_REJECT}
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
		req.DefinedSets = append(req.DefinedSets, &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: name, Prefixes: prefixes})
		return true
	}
	// addNeighborSet defines a neighbor set. An empty one would match every neighbor,
	// so it is never defined.
	addNeighborSet := func(name string, addrs []netip.Addr) bool {
		if len(addrs) == 0 {
			return false
		}
		req.DefinedSets = append(req.DefinedSets, neighborSet(name, addrs...))
		return true
	}
	addStatement := func(name string, c *api.Conditions, actions *api.Actions) {
		imp.Statements = append(imp.Statements, &api.Statement{Name: name, Conditions: c, Actions: actions})
	}
	matchPrefixes := func(name string, prefixes []*api.Prefix, actions *api.Actions) {
		if addPrefixSet(name, prefixes) {
			addStatement("match-"+name, &api.Conditions{PrefixSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: name}}, actions)
		}
	}

	// Each default-route set holds only /0 with length 0..0, so nothing else matches.
	matchPrefixes(setDefault4, []*api.Prefix{apiPrefix(netip.MustParsePrefix("0.0.0.0/0"), 0, 0)}, reject)
	matchPrefixes(setDefault6, []*api.Prefix{apiPrefix(netip.MustParsePrefix("::/0"), 0, 0)}, reject)
	deny4, deny6 := denyEntries(f.Deny)
	matchPrefixes(setDeny4, deny4, reject)
	matchPrefixes(setDeny6, deny6, reject)

	// The origins policy, evaluated first, repeats the statements so far: the origin
	// statements added to it in place (updateImportLocked) come after them.
	origins := &api.Policy{Name: importOriginsPolicyName}
	for _, st := range imp.Statements {
		origins.Statements = append(origins.Statements, &api.Statement{Name: originsPrefix + st.Name, Conditions: st.Conditions, Actions: st.Actions})
	}

	peers := slices.SortedFunc(maps.Keys(f.PeerPrefixes), netip.Addr.Compare)
	for _, a := range peers {
		// A neighbour without prefixes has no origin statement: the validated-peers
		// statement rejects all it sends.
		o := originOf(a, f.PeerPrefixes[a])
		if o.neighbors != nil {
			req.DefinedSets = append(req.DefinedSets, o.neighbors)
		}
		for fam := range o.prefixes {
			if o.prefixes[fam] != nil {
				req.DefinedSets = append(req.DefinedSets, o.prefixes[fam])
				imp.Statements = append(imp.Statements, o.statements[fam])
			}
		}
	}
	if addNeighborSet(setValidated, peers) {
		addStatement("match-"+setValidated, &api.Conditions{NeighborSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: setValidated}}, reject)
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
	if addNeighborSet(setNoExport, rules.noExport) {
		exp.Statements = append(exp.Statements, &api.Statement{
			Name:       "no-export",
			Conditions: &api.Conditions{NeighborSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: setNoExport}},
			Actions:    reject,
		})
	}
	// The external-only sets are defined whenever they have prefixes, so that
	// setExternalOnlyLocked can edit them in place, and referenced once there are internal
	// neighbours. Exact-length entries, as for the origin sets above: a prefix matches
	// only itself, never a longer pod CIDR inside it. The internal neighbours' set exists
	// only while a statement refers to it, so that a node joining a mesh without such
	// prefixes costs the policy nothing (shapesPolicy).
	listed := false
	for _, l := range rules.externalOnly {
		listed = listed || len(l) > 0
	}
	for _, byFam := range rules.prepend {
		listed = listed || len(byFam[0])+len(byFam[1]) > 0
	}
	internal := listed && addNeighborSet(setInternal, rules.internal)
	for i, prefixes := range rules.externalOnly {
		entries := make([]*api.Prefix, 0, len(prefixes))
		for _, p := range prefixes {
			entries = append(entries, apiPrefix(p, p.Bits(), p.Bits()))
		}
		if addPrefixSet(setExternalOnly[i], entries) && internal {
			exp.Statements = append(exp.Statements, &api.Statement{
				Name: "external-only-" + setExternalOnly[i],
				Conditions: &api.Conditions{
					NeighborSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: setInternal},
					PrefixSet:   &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: setExternalOnly[i]},
				},
				Actions: reject,
			})
		}
	}
	// Prepending happens on export, after GoBGP's AS loop check and its own prepend
	// towards eBGP peers, and never towards the cluster's nodes, which would drop a path
	// carrying their own AS. Each statement accepts, so a prefix briefly in two sets
	// (setPrependLocked) is prepended by the first only. Exact-length entries again.
	for n := uint8(1); n <= MaxASPathPrepend; n++ {
		for fam, prefixes := range rules.prepend[n] {
			entries := make([]*api.Prefix, 0, len(prefixes))
			for _, p := range prefixes {
				entries = append(entries, apiPrefix(p, p.Bits(), p.Bits()))
			}
			name := setPrepend(fam, n)
			if !addPrefixSet(name, entries) {
				continue
			}
			c := &api.Conditions{
				PrefixSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: name},
				RouteType: api.Conditions_ROUTE_TYPE_LOCAL,
			}
			if internal {
				c.NeighborSet = &api.MatchSet{Type: api.MatchSet_TYPE_INVERT, Name: setInternal}
			}
			exp.Statements = append(exp.Statements, &api.Statement{
				Name:       "prepend-" + name,
				Conditions: c,
				Actions: &api.Actions{
					RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT,
					AsPrepend:   &api.AsPrependAction{Asn: rules.asn, Repeat: uint32(n)},
				},
			})
		}
	}
	exp.Statements = append(exp.Statements, &api.Statement{
		Name:       "export-local",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    accept,
	})
	if !rules.reflecting {
		exp.Statements = append(exp.Statements, &api.Statement{Name: "no-learned", Actions: reject})
	} else if addNeighborSet(setNoReflect, rules.noReflect) {
		// The statement only exists when there are such neighbours (see addNeighborSet).
		exp.Statements = append(exp.Statements, &api.Statement{
			Name:       "learned-to-clients-only",
			Conditions: &api.Conditions{NeighborSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: setNoReflect}},
			Actions:    reject,
		})
	}
	req.Policies = []*api.Policy{imp, exp, origins}
	return req
}

// origin is what the import policy holds for one neighbour with a PeerPrefixes entry: for
// each family it lists prefixes of, a prefix set of exactly those and the statement
// accepting them from the neighbour's own neighbor set, which exists while either does.
type origin struct {
	neighbors  *api.DefinedSet
	prefixes   [2]*api.DefinedSet // by family; nil: none
	statements [2]*api.Statement
}

// originOf is neighbour a's origin for its PeerPrefixes entry own.
//
// Exact-length entries are safe with GoBGP's longest-match lookup: a listed candidate
// finds itself (no longer stored prefix can contain it), and any other candidate finds a
// shorter entry whose single length it misses.
func originOf(a netip.Addr, own []netip.Prefix) origin {
	var o origin
	var entries [2][]*api.Prefix
	for _, p := range own {
		entries[family(p)] = append(entries[family(p)], apiPrefix(p, p.Bits(), p.Bits()))
	}
	nset := setPeerPrefix + a.String()
	for fam, e := range entries {
		if len(e) == 0 {
			continue // GoBGP refuses an empty prefix set
		}
		pset := nset + [2]string{"-v4", "-v6"}[fam]
		o.prefixes[fam] = &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: pset, Prefixes: e}
		o.statements[fam] = &api.Statement{
			Name: "origin-" + pset,
			Conditions: &api.Conditions{
				NeighborSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: nset},
				PrefixSet:   &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: pset},
			},
			Actions: &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
		}
	}
	if o.prefixes[0] != nil || o.prefixes[1] != nil {
		o.neighbors = neighborSet(nset, a)
	}
	return o
}

// neighborSet is the neighbor set name with the given addresses: a whole set, or the
// entries AddDefinedSet and DeleteDefinedSet add to or remove from one in place.
func neighborSet(name string, addrs ...netip.Addr) *api.DefinedSet {
	list := make([]string, 0, len(addrs))
	for _, a := range addrs {
		list = append(list, netip.PrefixFrom(a, a.BitLen()).String())
	}
	return &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR, Name: name, List: list}
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
