package agent

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/config"
)

// effective merges the cluster's BGPConfiguration into the flags: the resource wins where it
// says something, the flags are the fallback (and the whole configuration when the CRDs are
// not installed).
func effective(flags *Config, s config.Settings) Config {
	c := *flags
	if s.ConfigurationObject != nil {
		c.ASN = s.Configuration.ASN
	}
	if len(s.Configuration.ClusterCIDRs) > 0 {
		c.ClusterCIDRs = s.Configuration.ClusterCIDRs
	}
	if len(s.Configuration.ServiceCIDRs) > 0 {
		c.ServiceCIDRs = s.Configuration.ServiceCIDRs
	}
	return c
}

// withOverrides applies the per-node podroute.io/ annotations that change how a node peers:
// its peering address replaces its InternalIP of that family, and its AS number. A malformed
// override is reported and ignored for that node only.
func withOverrides(nodes []cluster.Node) ([]cluster.Node, []string) {
	out := make([]cluster.Node, len(nodes))
	var problems []string
	for i, n := range nodes {
		for _, v6 := range []bool{false, true} {
			addr, ok, err := config.NodePeeringAddress(n, v6)
			if err != nil {
				problems = append(problems, fmt.Sprintf("node %s: %v", n.Name, err))
				continue
			}
			if !ok {
				continue
			}
			addrs := []netip.Addr{addr}
			for _, a := range n.Addresses {
				if a.Is6() != v6 {
					addrs = append(addrs, a)
				}
			}
			slices.SortStableFunc(addrs, func(a, b netip.Addr) int {
				switch {
				case a.Is4() && b.Is6():
					return -1
				case a.Is6() && b.Is4():
					return 1
				}
				return 0
			})
			n.Addresses = addrs
		}
		out[i] = n
	}
	return out, problems
}

// topology is every BGP session this node wants and what each peer may originate.
type topology struct {
	peers map[netip.Addr]peerSpec
	// origin restricts a node peer to announcing its own Node's pod CIDRs. Peers without an
	// entry (reflectors, external routers) carry other nodes' routes legitimately.
	origin   map[netip.Addr][]netip.Prefix
	problems []string
}

// nodeTopology is the node-to-node part. With the mesh on, every node peers with every
// other. With the mesh off, nodes selected as route reflectors peer with each other and
// take every other node as a route-reflector client, and those nodes peer only with the
// reflectors: sessions grow linearly with the nodes. With neither, only external peers.
func nodeTopology(cfg *Config, s config.Settings, me self, meNode cluster.Node, nodes []cluster.Node) topology {
	t := topology{peers: map[netip.Addr]peerSpec{}, origin: map[netip.Addr][]netip.Prefix{}}
	mesh := s.Configuration.NodeToNodeMesh
	meRR := !mesh && s.IsRouteReflector(meNode)
	for i := range nodes {
		n := &nodes[i]
		if n.Name == me.Name {
			continue
		}
		var kind string
		nRR := !mesh && s.IsRouteReflector(*n)
		switch {
		case mesh:
			kind = bgp.KindMesh
		case meRR && nRR:
			kind = bgp.KindReflector // reflectors mesh among themselves
		case meRR:
			kind = bgp.KindReflectorClient
		case nRR:
			kind = bgp.KindReflector
		default:
			continue
		}
		local, remote, ok := sessionAddress(me, n)
		if !ok {
			t.problems = append(t.problems, fmt.Sprintf("node %s: no address to peer with", n.Name))
			continue
		}
		asn, err := config.NodeASN(*n, cfg.ASN)
		if err != nil {
			t.problems = append(t.problems, err.Error())
		}
		nb, err := withoutBadBFD(nodeNeighbor(cfg, kind, local, remote, asn, s.Configuration.MeshBFD))
		if err != nil {
			t.problems = append(t.problems, fmt.Sprintf("node %s: %v", n.Name, err))
		}
		if kind == bgp.KindReflectorClient {
			if asn != me.ASN {
				t.problems = append(t.problems, fmt.Sprintf("node %s: AS %d differs from this reflector's AS %d: route reflection needs one AS", n.Name, asn, me.ASN))
				continue
			}
			nb.RouteReflectorClient = true
			nb.RouteReflectorClusterID = s.Configuration.RouteReflectorClusterID
		}
		t.peers[remote] = peerSpec{Node: n.Name, Neighbor: nb}
		// A node may only originate its own pod CIDRs; a reflector relays everyone's.
		if kind != bgp.KindReflector {
			t.origin[remote] = append([]netip.Prefix{}, n.PodCIDRs...)
		}
	}
	slices.Sort(t.problems)
	return t
}

// addExternal adds the BGPPeers that select this node (top-of-rack routers and the like).
// Their session runs from the node's peering address of the peer's family. A peer at the
// same address as a node session is left out and reported: one address, one session.
func (t *topology) addExternal(cfg *Config, s config.Settings, me self, meNode cluster.Node) {
	for _, p := range s.PeersForNode(meNode) {
		nb, err := withoutBadBFD(externalNeighbor(cfg, p, me))
		if err != nil {
			t.problems = append(t.problems, fmt.Sprintf("BGPPeer %s: %v", p.Name, err))
		}
		if prev, clash := t.peers[p.Address]; clash {
			t.problems = append(t.problems, fmt.Sprintf("BGPPeer %s: %s is already a %s session (node %s)", p.Name, p.Address, prev.Neighbor.Kind, prev.Node))
			continue
		}
		t.peers[p.Address] = peerSpec{Node: "", Peer: p.Name, Neighbor: nb}
	}
}
