// Our advertisements and the learned routes: Advertise, Withdraw, Routes with the
// multipath set, Synced.

package bgp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// families are the address families of the global table; a session carries its
// Neighbor.Families.
var families = bothFamilies.table()

func (r *router) Advertise(ctx context.Context, prefix netip.Prefix, attrs Attributes) (err error) {
	defer guard("advertise", &err)
	if !prefix.IsValid() {
		return errors.New("bgp: advertise: invalid prefix")
	}
	prefix = unmapPrefix(prefix)
	if prefix != prefix.Masked() {
		return fmt.Errorf("bgp: advertise %s: host bits set", prefix)
	}
	attrs, err = attrs.normalize()
	if err != nil {
		return fmt.Errorf("bgp: advertise %s: %w", prefix, err)
	}
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.running(); err != nil {
		return err
	}
	r.mu.Lock()
	old, had := r.advertised[prefix]
	listed := r.externalOnlyListedLocked(prefix)
	prepended := r.prependedLocked(prefix)
	r.mu.Unlock()
	if had && old.attrs.equal(attrs) {
		return nil
	}
	path, err := r.buildPath(prefix, attrs)
	if err != nil {
		return fmt.Errorf("bgp: advertise %s: %w", prefix, err)
	}
	// The export policy learns of the change before the path: an external-only path must
	// never reach an internal neighbour, a path that stops being one is meant for
	// everyone, and a new path goes out prepended as asked from the start.
	if attrs.ExternalOnly != listed {
		if err := r.setExternalOnlyLocked(ctx, prefix, attrs.ExternalOnly); err != nil {
			return fmt.Errorf("bgp: advertise %s: %w", prefix, err)
		}
	}
	// undo puts the policy of the old path back (that path, if any, is still out there);
	// prepend tells whether its prepending changed too.
	undo := func(err error, prepend bool) error {
		if attrs.ExternalOnly != listed {
			if rerr := r.setExternalOnlyLocked(ctx, prefix, listed); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		if prepend {
			if rerr := r.setPrependLocked(ctx, prefix, prepended); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		return fmt.Errorf("bgp: advertise %s: %w", prefix, err)
	}
	if attrs.ASPathPrepend != prepended {
		if err := r.setPrependLocked(ctx, prefix, attrs.ASPathPrepend); err != nil {
			return undo(err, false) // setPrependLocked changed nothing
		}
	}
	// Same prefix from the same (local) source: GoBGP replaces the old path.
	if _, err := r.srv.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{path}}); err != nil {
		return undo(err, attrs.ASPathPrepend != prepended)
	}
	r.mu.Lock()
	r.advertised[prefix] = advertisement{attrs: attrs, path: path}
	r.mu.Unlock()
	// The prepend count is not in the path: with the same communities the new path
	// equals the old one, which GoBGP does not send again, so the external neighbours
	// get it with its new prepending by a soft reset out of each. (A path that changed
	// goes out with the current policy by itself.)
	if had && slices.Equal(old.attrs.Communities, attrs.Communities) &&
		(old.attrs.ASPathPrepend != attrs.ASPathPrepend || prepended != attrs.ASPathPrepend) {
		if err := r.resetExternalOutLocked(ctx); err != nil {
			return fmt.Errorf("bgp: advertise %s: update external neighbours: %w", prefix, err)
		}
	}
	if had && attrs.ExternalOnly != old.attrs.ExternalOnly {
		// The internal neighbours hear of neither change from the new path: GoBGP judges
		// the old path by the current policy too, so sends no withdrawal for it, and does
		// not resend a path equal to the one it replaces. A soft reset out of each brings
		// them in line.
		if err := r.resetInternalOutLocked(ctx); err != nil {
			return fmt.Errorf("bgp: advertise %s: update internal neighbours: %w", prefix, err)
		}
	}
	return nil
}

// buildPath makes the local path for prefix, with no AS_PATH: the export policy prepends
// (Attributes.ASPathPrepend), GoBGP adds our AS towards eBGP peers and an empty AS_PATH
// towards iBGP ones. The next hop is set explicitly when
// configured: GoBGP keeps a local path's explicit next hop towards iBGP and eBGP peers
// alike, and only fills in the session's local address for an unspecified one, which
// for an IPv6 prefix over an IPv4 session would be an IPv4 address in MP_REACH_NLRI.
func (r *router) buildPath(prefix netip.Prefix, a Attributes) (*apiutil.Path, error) {
	nlri, err := bgp.NewIPAddrPrefix(prefix)
	if err != nil {
		return nil, err
	}
	family, nh := bgp.RF_IPv4_UC, netip.IPv4Unspecified()
	if r.cfg.NextHopIPv4.IsValid() {
		nh = r.cfg.NextHopIPv4
	}
	if prefix.Addr().Is6() {
		family, nh = bgp.RF_IPv6_UC, netip.IPv6Unspecified()
		if r.cfg.NextHopIPv6.IsValid() {
			nh = r.cfg.NextHopIPv6
		}
	}
	// GoBGP turns the next hop into NEXT_HOP or MP_REACH_NLRI by family.
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	if family == bgp.RF_IPv4_UC {
		a, err := bgp.NewPathAttributeNextHop(nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, a)
	} else {
		a, err := bgp.NewPathAttributeMpReachNLRI(family, []bgp.PathNLRI{{NLRI: nlri}}, nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, a)
	}
	if len(a.Communities) > 0 {
		vals := make([]uint32, len(a.Communities))
		for i, c := range a.Communities {
			vals[i] = uint32(c)
		}
		attrs = append(attrs, bgp.NewPathAttributeCommunities(vals))
	}
	return &apiutil.Path{Family: family, Nlri: nlri, Attrs: attrs, Age: time.Now().Unix()}, nil
}

func (r *router) Withdraw(ctx context.Context, prefix netip.Prefix) (err error) {
	defer guard("withdraw", &err)
	if !prefix.IsValid() {
		return errors.New("bgp: withdraw: invalid prefix")
	}
	prefix = unmapPrefix(prefix)
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.running(); err != nil {
		return err
	}
	r.mu.Lock()
	adv, had := r.advertised[prefix]
	listed := r.externalOnlyListedLocked(prefix)
	prepended := r.prependedLocked(prefix)
	r.mu.Unlock()
	if had {
		if err := r.srv.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{adv.path}}); err != nil {
			return fmt.Errorf("bgp: withdraw %s: %w", prefix, err)
		}
		r.mu.Lock()
		delete(r.advertised, prefix)
		r.mu.Unlock()
	}
	// Only once the path is gone may the policy forget it was external-only or
	// prepended. A prefix left listed by an earlier failure is unlisted now.
	if listed {
		if err := r.setExternalOnlyLocked(ctx, prefix, false); err != nil {
			return fmt.Errorf("bgp: withdraw %s: %w", prefix, err)
		}
	}
	if prepended > 0 {
		if err := r.setPrependLocked(ctx, prefix, 0); err != nil {
			return fmt.Errorf("bgp: withdraw %s: %w", prefix, err)
		}
	}
	return nil
}

func (r *router) Routes(ctx context.Context) (routes []Route, err error) {
	defer guard("routes", &err)
	if err := r.running(); err != nil {
		return nil, err
	}
	for _, fam := range families {
		var derr error
		err := r.srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: fam},
			func(_ bgp.NLRI, paths []*apiutil.Path) {
				rt, ok, err := r.route(paths)
				if err != nil {
					derr = errors.Join(derr, err)
				} else if ok {
					routes = append(routes, rt)
				}
			})
		if err != nil {
			return nil, fmt.Errorf("bgp: list routes: %w", err)
		}
		if derr != nil {
			return nil, fmt.Errorf("bgp: list routes: %w", derr)
		}
	}
	slices.SortFunc(routes, func(a, b Route) int { return comparePrefix(a.Prefix, b.Prefix) })
	return routes, nil
}

// route builds the Route for one destination from its paths, which GoBGP lists best
// first with Best set on the best path and on every path equal to it on the multipath
// criteria (table.Path.Compare: local vs learned, iBGP vs eBGP, LOCAL_PREF, AS_PATH
// length, ORIGIN, MED).
func (r *router) route(paths []*apiutil.Path) (Route, bool, error) {
	var rt Route
	for i, p := range paths {
		if p.Withdrawal || p.IsNexthopInvalid || !p.Best {
			continue
		}
		pfx, ok := pathPrefix(p)
		if !ok {
			return Route{}, false, fmt.Errorf("undecodable prefix %v", p.Nlri)
		}
		if !p.PeerAddress.IsValid() {
			if i == 0 {
				// Our own prefix wins: nothing to install.
				return Route{}, false, nil
			}
			continue
		}
		path := decodePath(p)
		path.Best = len(rt.Paths) == 0
		rt.Prefix = pfx
		rt.Paths = append(rt.Paths, path)
		if path.NextHop.IsValid() && !slices.Contains(rt.NextHops, path.NextHop) {
			rt.NextHops = append(rt.NextHops, path.NextHop)
		}
	}
	if len(rt.Paths) == 0 {
		return Route{}, false, nil
	}
	slices.SortFunc(rt.NextHops, netip.Addr.Compare)
	return rt, true, nil
}

// decodePath converts a learned path.
func decodePath(p *apiutil.Path) Path {
	out := Path{LocalPref: 100, Stale: p.Stale, SourcePeer: p.PeerAddress.Unmap()}
	if p.PeerID.IsValid() {
		out.SourceRouterID = p.PeerID.Unmap()
	}
	for _, a := range p.Attrs {
		switch a := a.(type) {
		case *bgp.PathAttributeNextHop:
			out.NextHop = usableAddr(a.Value)
		case *bgp.PathAttributeMpReachNLRI:
			out.NextHop = usableAddr(a.Nexthop)
		case *bgp.PathAttributeAsPath:
			for _, seg := range a.Value {
				out.ASPath = append(out.ASPath, seg.GetAS()...)
			}
		case *bgp.PathAttributeLocalPref:
			out.LocalPref = a.Value
		case *bgp.PathAttributeMultiExitDisc:
			out.MED = a.Value
		case *bgp.PathAttributeCommunities:
			for _, c := range a.Value {
				out.Communities = append(out.Communities, Community(c))
			}
		}
	}
	return out
}

func usableAddr(a netip.Addr) netip.Addr {
	if !a.IsValid() || a.IsUnspecified() {
		return netip.Addr{}
	}
	return a.Unmap()
}

// pathPrefix extracts an IPv4/IPv6 unicast prefix from a path.
func pathPrefix(p *apiutil.Path) (netip.Prefix, bool) {
	if p.Family != bgp.RF_IPv4_UC && p.Family != bgp.RF_IPv6_UC {
		return netip.Prefix{}, false
	}
	n, ok := p.Nlri.(*bgp.IPAddrPrefix)
	if !ok {
		return netip.Prefix{}, false
	}
	pfx := n.Prefix
	if p.Family == bgp.RF_IPv4_UC {
		pfx = unmapPrefix(pfx)
	}
	return pfx, pfx.IsValid()
}

func (r *router) Synced(ctx context.Context) (bool, error) {
	peers, err := r.neighborStates(ctx, false, false)
	if err != nil {
		return false, err
	}
	for _, p := range peers {
		if !p.EndOfRIB {
			return false, nil
		}
	}
	return true, nil
}
