package agent

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/routes"
)

// self is this node as routing needs it.
type self struct {
	Name     string
	PodCIDRs []netip.Prefix
	V4, V6   netip.Addr
	RouterID netip.Addr
	ASN      uint32
	// Node is this node's object as routing sees it (labels select peers and reflectors).
	Node cluster.Node
}

// findSelf picks this node out of the cluster and fills in what flags override.
func findSelf(cfg *Config, nodes []cluster.Node) (self, error) {
	var n *cluster.Node
	for i := range nodes {
		if nodes[i].Name == cfg.NodeName {
			n = &nodes[i]
		}
	}
	if n == nil {
		return self{}, fmt.Errorf("node %s: no such Node object (is --node-name right?)", cfg.NodeName)
	}
	s := self{Name: n.Name, PodCIDRs: n.PodCIDRs, Node: *n}
	s.V4, _ = n.Address(false)
	s.V6, _ = n.Address(true)
	for _, ip := range cfg.NodeIPs {
		if ip.Is4() {
			s.V4 = ip
		} else {
			s.V6 = ip
		}
	}
	asn, err := config.NodeASN(*n, cfg.ASN)
	s.ASN = asn
	if err != nil {
		return s, err
	}
	o, errs := config.OverridesForNode(*n)
	if agg := errs.ToAggregate(); agg != nil {
		return s, fmt.Errorf("node %s: %w", n.Name, agg)
	}
	switch {
	case cfg.RouterID.IsValid():
		s.RouterID = cfg.RouterID
	case o.RouterID.IsValid():
		s.RouterID = o.RouterID
	case s.V4.IsValid():
		s.RouterID = s.V4
	case s.V6.IsValid():
		s.RouterID = routerIDFrom(n.Name)
	}
	if len(s.PodCIDRs) == 0 {
		return s, fmt.Errorf("node %s: %s", n.Name, n.Problem)
	}
	if !s.V4.IsValid() && !s.V6.IsValid() {
		return s, fmt.Errorf("node %s: no address (set --node-ip or the Node's InternalIP)", n.Name)
	}
	return s, nil
}

// overlaps reports other Nodes whose pod CIDRs overlap this node's: two nodes would hand out
// the same pod addresses. The agent keeps serving (the import filter refuses the other node's
// announcement of an overlapping prefix) and says so, since only an operator can fix it.
func overlaps(me self, nodes []cluster.Node) error {
	var clashes []string
	for i := range nodes {
		if nodes[i].Name == me.Name {
			continue
		}
		for _, theirs := range nodes[i].PodCIDRs {
			for _, mine := range me.PodCIDRs {
				if mine.Overlaps(theirs) {
					clashes = append(clashes, fmt.Sprintf("%s overlaps node %s's %s", mine, nodes[i].Name, theirs))
				}
			}
		}
	}
	if len(clashes) == 0 {
		return nil
	}
	return fmt.Errorf("node %s: pod CIDR %s", me.Name, strings.Join(clashes, "; "))
}

// routerIDFrom derives a stable IPv4-shaped identifier for IPv6-only nodes.
func routerIDFrom(name string) netip.Addr {
	h := fnv.New32a()
	h.Write([]byte(name))
	v := h.Sum32()
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// sessionAddress is the address a session to a peer runs over: IPv4 when both ends have one
// (one session carries both families), else IPv6.
func sessionAddress(me self, peer *cluster.Node) (local, remote netip.Addr, ok bool) {
	if me.V4.IsValid() {
		if r, found := peer.Address(false); found {
			return me.V4, r, true
		}
	}
	if me.V6.IsValid() {
		if r, found := peer.Address(true); found {
			return me.V6, r, true
		}
	}
	return netip.Addr{}, netip.Addr{}, false
}

// peerSpec is a desired neighbour and the node or BGPPeer behind it.
type peerSpec struct {
	Node     string
	Peer     string // BGPPeer name, for external peers
	Neighbor bgp.Neighbor
}

// importFilter accepts other nodes' pod CIDRs and nothing else: inside the cluster CIDRs, no
// more specific than a node CIDR, never this node's own CIDRs, node addresses or services.
// Its shared part (everything but PeerPrefixes) does not change when Nodes come and go.
// origin restricts node peers to their own Node's pod CIDRs (both families over the one
// session), so a node cannot draw another node's pod traffic; a node without pod CIDRs yet
// gets an empty entry, accepting nothing from it.
func importFilter(cfg *Config, me self, nodes []cluster.Node, origin map[netip.Addr][]netip.Prefix) bgp.ImportFilter {
	f := bgp.ImportFilter{ClusterCIDRs: cfg.ClusterCIDRs, PeerPrefixes: map[netip.Addr][]netip.Prefix{}}
	for remote, prefixes := range origin {
		f.PeerPrefixes[remote] = append([]netip.Prefix{}, prefixes...)
	}
	for _, p := range me.PodCIDRs {
		if p.Addr().Is4() {
			f.MaxLenIPv4 = p.Bits()
		} else {
			f.MaxLenIPv6 = p.Bits()
		}
	}
	// Without an own CIDR of a family, fall back to the longest accepted by the cluster CIDR
	// itself, i.e. the cluster prefix length, so nothing more specific is taken.
	for _, c := range cfg.ClusterCIDRs {
		if c.Addr().Is4() && f.MaxLenIPv4 == 0 {
			f.MaxLenIPv4 = c.Bits()
		}
		if c.Addr().Is6() && f.MaxLenIPv6 == 0 {
			f.MaxLenIPv6 = c.Bits()
		}
	}
	for _, c := range cfg.ClusterCIDRs {
		if c.Addr().Is4() && f.MaxLenIPv4 < c.Bits() {
			f.MaxLenIPv4 = c.Bits()
		}
		if c.Addr().Is6() && f.MaxLenIPv6 < c.Bits() {
			f.MaxLenIPv6 = c.Bits()
		}
	}
	f.Deny = append(f.Deny, me.PodCIDRs...)
	f.Deny = append(f.Deny, cfg.ServiceCIDRs...)
	// Node addresses outside the cluster CIDRs are refused by the cluster rule already;
	// listing them too would change the filter's shared part on every Node event and make
	// the speaker re-judge every peer's routes, not just the joining node's.
	inCluster := func(a netip.Addr) bool {
		return slices.ContainsFunc(cfg.ClusterCIDRs, func(c netip.Prefix) bool { return c.Contains(a) })
	}
	for i := range nodes {
		for _, a := range nodes[i].Addresses {
			if inCluster(a) {
				f.Deny = append(f.Deny, netip.PrefixFrom(a, a.BitLen()))
			}
		}
	}
	for _, a := range []netip.Addr{me.V4, me.V6} {
		if a.IsValid() && inCluster(a) {
			f.Deny = append(f.Deny, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	slices.SortFunc(f.Deny, netip.Prefix.Compare)
	f.Deny = slices.Compact(f.Deny)
	return f
}

// routesFor turns learned best paths into kernel routes, plus a blackhole for each own pod
// CIDR so traffic to a free pod address is dropped instead of leaving by the default route.
func routesFor(me self, learned []bgp.Route) []routes.Route {
	out := make([]routes.Route, 0, len(learned)+len(me.PodCIDRs))
	for _, p := range me.PodCIDRs {
		out = append(out, routes.Route{Prefix: p, Blackhole: true})
	}
	for _, r := range learned {
		if slices.Contains(me.PodCIDRs, r.Prefix) {
			continue
		}
		var hops []routes.NextHop
		for _, nh := range r.NextHops {
			if !nh.IsValid() || nh == me.V4 || nh == me.V6 || nh.Is4() != r.Prefix.Addr().Is4() {
				continue
			}
			hops = append(hops, routes.NextHop{Gateway: nh})
		}
		if len(hops) == 0 {
			continue
		}
		out = append(out, routes.Route{Prefix: r.Prefix, NextHops: hops})
	}
	return out
}

// keepStale adds the kernel routes a previous run left that BGP has not re-learned yet, so a
// restart removes nothing while the peers resend their routes.
func keepStale(desired, owned []routes.Route) []routes.Route {
	have := make(map[netip.Prefix]bool, len(desired))
	for _, r := range desired {
		have[r.Prefix] = true
	}
	for _, r := range owned {
		if !have[r.Prefix] {
			desired = append(desired, r)
		}
	}
	return desired
}
