// Our advertisements and the learned routes: Advertise, Withdraw, Routes with the
// multipath set, Synced.

package bgp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

func (r *router) Advertise(ctx context.Context, prefix netip.Prefix, communities ...Community) (err error) {
	defer guard("advertise", &err)
	if !prefix.IsValid() {
		return errors.New("bgp: advertise: invalid prefix")
	}
	prefix = unmapPrefix(prefix)
	if prefix != prefix.Masked() {
		return fmt.Errorf("bgp: advertise %s: host bits set", prefix)
	}
	comms := slices.Clone(communities)
	slices.Sort(comms)
	comms = slices.Compact(comms)
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.running(); err != nil {
		return err
	}
	r.mu.Lock()
	old, had := r.advertised[prefix]
	r.mu.Unlock()
	if had && slices.Equal(old.communities, comms) {
		return nil
	}
	path, err := r.buildPath(prefix, comms)
	if err != nil {
		return fmt.Errorf("bgp: advertise %s: %w", prefix, err)
	}
	// Same prefix from the same (local) source: GoBGP replaces the old path.
	if _, err := r.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path}); err != nil {
		return fmt.Errorf("bgp: advertise %s: %w", prefix, err)
	}
	r.mu.Lock()
	r.advertised[prefix] = advertisement{communities: comms, path: path}
	r.mu.Unlock()
	return nil
}

// buildPath makes the local path for prefix. The next hop is set explicitly when
// configured: GoBGP keeps a local path's explicit next hop towards iBGP and eBGP peers
// alike, and only fills in the session's local address for an unspecified one, which
// for an IPv6 prefix over an IPv4 session would be an IPv4 address in MP_REACH_NLRI.
func (r *router) buildPath(prefix netip.Prefix, comms []Community) (*api.Path, error) {
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	var nlri bgp.AddrPrefixInterface
	if prefix.Addr().Is4() {
		nlri = bgp.NewIPAddrPrefix(uint8(prefix.Bits()), prefix.Addr().String())
		nh := "0.0.0.0"
		if r.cfg.NextHopIPv4.IsValid() {
			nh = r.cfg.NextHopIPv4.String()
		}
		attrs = append(attrs, bgp.NewPathAttributeNextHop(nh))
	} else {
		nlri = bgp.NewIPv6AddrPrefix(uint8(prefix.Bits()), prefix.Addr().String())
		nh := "::"
		if r.cfg.NextHopIPv6.IsValid() {
			nh = r.cfg.NextHopIPv6.String()
		}
		attrs = append(attrs, bgp.NewPathAttributeMpReachNLRI(nh, []bgp.AddrPrefixInterface{nlri}))
	}
	if len(comms) > 0 {
		vals := make([]uint32, len(comms))
		for i, c := range comms {
			vals[i] = uint32(c)
		}
		attrs = append(attrs, bgp.NewPathAttributeCommunities(vals))
	}
	return apiutil.NewPath(nlri, false, attrs, time.Now())
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
	r.mu.Unlock()
	if !had {
		return nil
	}
	if err := r.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: adv.path.Family, Path: adv.path}); err != nil {
		return fmt.Errorf("bgp: withdraw %s: %w", prefix, err)
	}
	r.mu.Lock()
	delete(r.advertised, prefix)
	r.mu.Unlock()
	return nil
}

func (r *router) Routes(ctx context.Context) (routes []Route, err error) {
	defer guard("routes", &err)
	if err := r.running(); err != nil {
		return nil, err
	}
	for _, fam := range []*api.Family{familyIPv4, familyIPv6} {
		var derr error
		err := r.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: fam, EnableOnlyBinary: true},
			func(d *api.Destination) {
				rt, ok, err := r.route(d)
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

// pathInfo is what best-path comparison and Route need from a path.
type pathInfo struct {
	path      Path
	local     bool
	ibgp      bool
	asPathLen int
	origin    uint8
}

// route builds the Route for one destination. GoBGP lists a destination's paths best
// first but marks only the first as best (its multipath marking in ListPath compares
// whole paths including the source), so the multipath set is recomputed here with the
// criteria GoBGP uses for it (table.Path.Compare): local vs learned, iBGP vs eBGP,
// LOCAL_PREF, AS_PATH length, ORIGIN, MED.
func (r *router) route(d *api.Destination) (Route, bool, error) {
	var infos []pathInfo
	var prefix netip.Prefix
	for _, p := range d.Paths {
		if p.IsWithdraw || p.IsNexthopInvalid {
			continue
		}
		pfx, ok := pathPrefix(p)
		if !ok {
			return Route{}, false, fmt.Errorf("undecodable prefix in %q", d.Prefix)
		}
		prefix = pfx
		info, err := r.decodePath(p)
		if err != nil {
			return Route{}, false, fmt.Errorf("%s: %w", pfx, err)
		}
		infos = append(infos, info)
	}
	if len(infos) == 0 || infos[0].local {
		// Nothing usable, or our own prefix wins: nothing to install.
		return Route{}, false, nil
	}
	best := infos[0]
	rt := Route{Prefix: prefix}
	for i, in := range infos {
		if i > 0 && (in.local || !sameCost(best, in)) {
			continue
		}
		in.path.Best = i == 0
		rt.Paths = append(rt.Paths, in.path)
		if in.path.NextHop.IsValid() && !slices.Contains(rt.NextHops, in.path.NextHop) {
			rt.NextHops = append(rt.NextHops, in.path.NextHop)
		}
	}
	slices.SortFunc(rt.NextHops, netip.Addr.Compare)
	return rt, true, nil
}

func sameCost(a, b pathInfo) bool {
	return a.local == b.local && a.ibgp == b.ibgp && a.path.LocalPref == b.path.LocalPref &&
		a.asPathLen == b.asPathLen && a.origin == b.origin && a.path.MED == b.path.MED
}

func (r *router) decodePath(p *api.Path) (pathInfo, error) {
	attrs, err := apiutil.GetNativePathAttributes(p)
	if err != nil {
		return pathInfo{}, fmt.Errorf("decode path attributes: %w", err)
	}
	in := pathInfo{path: Path{LocalPref: 100, Stale: p.Stale}}
	if a, err := netip.ParseAddr(p.NeighborIp); err == nil {
		in.path.SourcePeer = a.Unmap()
	} else {
		in.local = true // GoBGP reports a local path's missing source as "<nil>"
	}
	if a, err := netip.ParseAddr(p.SourceId); err == nil {
		in.path.SourceRouterID = a.Unmap()
	}
	in.ibgp = p.SourceAsn != 0 && p.SourceAsn == r.cfg.ASN
	for _, a := range attrs {
		switch a := a.(type) {
		case *bgp.PathAttributeNextHop:
			in.path.NextHop = ipToAddr(a.Value)
		case *bgp.PathAttributeMpReachNLRI:
			in.path.NextHop = ipToAddr(a.Nexthop)
		case *bgp.PathAttributeAsPath:
			for _, seg := range a.Value {
				in.asPathLen += seg.ASLen()
				in.path.ASPath = append(in.path.ASPath, seg.GetAS()...)
			}
		case *bgp.PathAttributeLocalPref:
			in.path.LocalPref = a.Value
		case *bgp.PathAttributeMultiExitDisc:
			in.path.MED = a.Value
		case *bgp.PathAttributeOrigin:
			in.origin = a.Value
		case *bgp.PathAttributeCommunities:
			for _, c := range a.Value {
				in.path.Communities = append(in.path.Communities, Community(c))
			}
		}
	}
	return in, nil
}

func ipToAddr(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || a.IsUnspecified() {
		return netip.Addr{}
	}
	return a.Unmap()
}

// pathPrefix extracts an IPv4/IPv6 unicast prefix from an API path.
func pathPrefix(p *api.Path) (netip.Prefix, bool) {
	if p.Family == nil {
		return netip.Prefix{}, false
	}
	nlri, err := apiutil.GetNativeNlri(p)
	if err != nil {
		return netip.Prefix{}, false
	}
	var ip net.IP
	var bits uint8
	switch n := nlri.(type) {
	case *bgp.IPAddrPrefix:
		ip, bits = n.Prefix, n.Length
	case *bgp.IPv6AddrPrefix:
		ip, bits = n.Prefix, n.Length
	default:
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Prefix{}, false
	}
	if p.Family.Afi == api.Family_AFI_IP {
		a = a.Unmap()
	}
	pfx := netip.PrefixFrom(a, int(bits))
	return pfx, pfx.IsValid()
}

func (r *router) Synced(ctx context.Context) (bool, error) {
	peers, err := r.Neighbors(ctx)
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
