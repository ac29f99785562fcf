package routes

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NextHop is one gateway of an agent route.
type NextHop struct {
	// Gateway is the peer's address, normally on a directly connected segment. It is required:
	// a route without a gateway has the shape of the CNI plugin's pod routes, which the agent
	// must never own.
	Gateway netip.Addr
	// LinkIndex pins the next hop to a link; 0 lets the kernel resolve it from the gateway.
	// Required for IPv6 link-local gateways and with Options.OnLink.
	LinkIndex int
}

func (h NextHop) String() string {
	if h.LinkIndex != 0 {
		return fmt.Sprintf("%s dev#%d", h.Gateway, h.LinkIndex)
	}
	return h.Gateway.String()
}

// Route is one route the agent wants in the kernel.
type Route struct {
	Prefix netip.Prefix
	// NextHops: one gives a plain route, several give one ECMP (multipath) route.
	// Order does not matter; the reconciler sorts them.
	NextHops []NextHop
	// Blackhole makes the route a blackhole (no next hops allowed). The agent uses these for
	// the node's own pod CIDRs so traffic to free pod addresses is dropped instead of leaking
	// out of the default route; the plugin's /32 and /128 pod routes are more specific and win.
	Blackhole bool
}

func (r Route) String() string {
	if r.Blackhole {
		return "blackhole " + r.Prefix.String()
	}
	hs := make([]string, len(r.NextHops))
	for i, h := range r.NextHops {
		hs[i] = h.String()
	}
	return r.Prefix.String() + " via " + strings.Join(hs, ",")
}

// Sentinel errors, matched with errors.Is on a RouteError.
var (
	// ErrInvalidRoute: the desired route is malformed; nothing was sent to the kernel for it.
	ErrInvalidRoute = errors.New("invalid route")
	// ErrConflict: a route that is not the agent's holds the prefix in the table; it is left alone.
	ErrConflict = errors.New("prefix held by a route podroute does not own")
)

// RouteError is a failure confined to one route; the reconciler carried on with the others.
type RouteError struct {
	Route Route
	Op    string // "validate", "add", "replace" or "delete"
	Err   error
}

func (e *RouteError) Error() string {
	return fmt.Sprintf("routes: %s %s: %v", e.Op, e.Route, e.Err)
}

func (e *RouteError) Unwrap() error { return e.Err }

// canonical validates r and returns it with next hops deduplicated and sorted, so that two
// routes with the same hops in a different order compare equal and are sent identically.
func canonical(r Route, onlink bool) (Route, error) {
	if !r.Prefix.IsValid() {
		return r, fmt.Errorf("%w: prefix is not set or not valid", ErrInvalidRoute)
	}
	if r.Prefix.Masked() != r.Prefix {
		return r, fmt.Errorf("%w: prefix %s has host bits set (want %s)", ErrInvalidRoute, r.Prefix, r.Prefix.Masked())
	}
	if r.Prefix.Addr().Zone() != "" {
		return r, fmt.Errorf("%w: prefix has a zone", ErrInvalidRoute)
	}
	if r.Blackhole {
		if len(r.NextHops) != 0 {
			return r, fmt.Errorf("%w: a blackhole route has no next hops", ErrInvalidRoute)
		}
		return Route{Prefix: r.Prefix, Blackhole: true}, nil
	}
	if len(r.NextHops) == 0 {
		return r, fmt.Errorf("%w: no next hops and not a blackhole", ErrInvalidRoute)
	}
	v6 := r.Prefix.Addr().Is6()
	hops := make([]NextHop, 0, len(r.NextHops))
	for _, h := range r.NextHops {
		gw := h.Gateway
		switch {
		case !gw.IsValid():
			return r, fmt.Errorf("%w: next hop without gateway", ErrInvalidRoute)
		case gw.IsUnspecified():
			return r, fmt.Errorf("%w: unspecified gateway %s", ErrInvalidRoute, gw)
		case gw.Zone() != "":
			return r, fmt.Errorf("%w: gateway %s has a zone; set LinkIndex instead", ErrInvalidRoute, gw)
		case gw.Is4In6():
			return r, fmt.Errorf("%w: gateway %s is IPv4-mapped; use the plain address family", ErrInvalidRoute, gw)
		case v6 && gw.Is4():
			// The kernel could do this with RTA_VIA, but podroute keeps next hops in the
			// prefix's family so peers are plain neighbours.
			return r, fmt.Errorf("%w: IPv6 route with IPv4 gateway %s", ErrInvalidRoute, gw)
		case !v6 && gw.Is6():
			return r, fmt.Errorf("%w: IPv4 route with IPv6 gateway %s", ErrInvalidRoute, gw)
		case gw.IsLinkLocalUnicast() && v6 && h.LinkIndex <= 0:
			return r, fmt.Errorf("%w: link-local gateway %s needs a LinkIndex", ErrInvalidRoute, gw)
		case h.LinkIndex < 0:
			return r, fmt.Errorf("%w: negative LinkIndex %d", ErrInvalidRoute, h.LinkIndex)
		case onlink && h.LinkIndex == 0:
			return r, fmt.Errorf("%w: onlink next hop %s needs a LinkIndex", ErrInvalidRoute, gw)
		}
		hops = append(hops, h)
	}
	sortHops(hops)
	hops = slices.Compact(hops)
	return Route{Prefix: r.Prefix, NextHops: hops}, nil
}

func sortHops(hops []NextHop) {
	slices.SortFunc(hops, func(a, b NextHop) int {
		if c := a.Gateway.Compare(b.Gateway); c != 0 {
			return c
		}
		return cmp.Compare(a.LinkIndex, b.LinkIndex)
	})
}

// isAgentRoute tells the agent's routes apart from the CNI plugin's among protocol-201 routes:
// the agent's are blackholes or unicast with a gateway on every next hop. Anything else (in
// particular a plain device route with no gateway) is left alone.
func isAgentRoute(kr *netlink.Route) bool {
	if kr.Protocol != Protocol {
		return false
	}
	switch kr.Type {
	case unix.RTN_BLACKHOLE:
		return true
	case unix.RTN_UNICAST:
	default:
		return false
	}
	if len(kr.MultiPath) == 0 {
		return kr.Gw != nil
	}
	for _, nh := range kr.MultiPath {
		if nh.Gw == nil {
			return false
		}
	}
	return kr.Gw == nil
}

// kernelHop is a next hop as the kernel reports it.
type kernelHop struct {
	NextHop
	onlink bool
}

func kernelHops(kr *netlink.Route) []kernelHop {
	if len(kr.MultiPath) == 0 {
		return []kernelHop{{NextHop{ipAddr(kr.Gw), kr.LinkIndex}, kr.Flags&unix.RTNH_F_ONLINK != 0}}
	}
	hs := make([]kernelHop, 0, len(kr.MultiPath))
	for _, nh := range kr.MultiPath {
		hs = append(hs, kernelHop{NextHop{ipAddr(nh.Gw), nh.LinkIndex}, nh.Flags&unix.RTNH_F_ONLINK != 0})
	}
	return hs
}

// fromKernel converts an agent route as dumped by the kernel.
func fromKernel(kr *netlink.Route) Route {
	r := Route{Prefix: kernelPrefix(kr)}
	if kr.Type == unix.RTN_BLACKHOLE {
		r.Blackhole = true
		return r
	}
	for _, h := range kernelHops(kr) {
		r.NextHops = append(r.NextHops, h.NextHop)
	}
	sortHops(r.NextHops)
	return r
}

// matches reports whether the kernel route already is the desired (canonical) route. Next-hop
// order is irrelevant, a desired LinkIndex of 0 matches whatever link the kernel resolved, and
// kernel state flags (dead, linkdown) are ignored because they are not ours to set.
func matches(want Route, kr *netlink.Route, onlink bool) bool {
	if want.Blackhole || kr.Type == unix.RTN_BLACKHOLE {
		return want.Blackhole && kr.Type == unix.RTN_BLACKHOLE
	}
	have := kernelHops(kr)
	if len(have) != len(want.NextHops) {
		return false
	}
	used := make([]bool, len(have))
	// Pinned hops first so a wildcard cannot steal the kernel hop a pinned one needs.
	for pass := 0; pass < 2; pass++ {
		for _, w := range want.NextHops {
			if (pass == 0) != (w.LinkIndex != 0) {
				continue
			}
			found := false
			for i, h := range have {
				if used[i] || h.Gateway != w.Gateway || h.onlink != onlink {
					continue
				}
				if w.LinkIndex != 0 && h.LinkIndex != w.LinkIndex {
					continue
				}
				used[i], found = true, true
				break
			}
			if !found {
				return false
			}
		}
	}
	return true
}

// ipAddr converts a kernel address; the kernel sends 4 bytes for IPv4 and 16 for IPv6.
func ipAddr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a
}

func kernelPrefix(kr *netlink.Route) netip.Prefix {
	if kr.Dst == nil {
		// Default routes carry no RTA_DST.
		if kr.Family == unix.AF_INET6 {
			return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	ones, _ := kr.Dst.Mask.Size()
	a, ok := netip.AddrFromSlice(kr.Dst.IP)
	if !ok {
		return netip.Prefix{}
	}
	if kr.Family == unix.AF_INET || len(kr.Dst.IP) == net.IPv4len {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, ones)
}

func toIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// DeleteKey is the RTM_DELROUTE request that removes exactly the dumped kernel route kr and
// nothing else: table, prefix, protocol, type, scope, metric, TOS and next hops all have to
// match, so a route podroute does not own (another protocol, metric or gateway for the same
// prefix) is never hit. A default route, dumped without a destination, gets its family's
// zero prefix: the request takes its family from the destination, and netlink refuses one
// with neither destination nor gateway (a default blackhole).
func DeleteKey(kr *netlink.Route) *netlink.Route {
	d := &netlink.Route{
		Dst: kr.Dst, Table: kr.Table, Protocol: kr.Protocol, Type: kr.Type, Scope: kr.Scope,
		Priority: kr.Priority, Tos: kr.Tos, Family: kr.Family, Gw: kr.Gw, LinkIndex: kr.LinkIndex,
	}
	if d.Dst == nil {
		d.Dst = toIPNet(kernelPrefix(kr))
	}
	for _, nh := range kr.MultiPath {
		d.MultiPath = append(d.MultiPath, &netlink.NexthopInfo{LinkIndex: nh.LinkIndex, Gw: nh.Gw})
	}
	return d
}
