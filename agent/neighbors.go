package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/config"
)

// The two ways a bgp.Neighbor is made: a session to another node, and one to a BGPPeer.
// They are the only places that do, so the flags' timers and graceful restart apply alike.

// nodeConnectRetry is the wait between connection attempts to another node. A joining node's
// agent starts after the others have added it: with bgp's 5 s default their first attempt
// usually finds it not listening yet and the next comes 5 s later, most of the time a join
// took (8 s at 3 to 50 nodes; 2.1 s with 1 s). A dial a second to a node that is down costs
// nothing worth saving.
const nodeConnectRetry = time.Second

// nodeNeighbor is a session to another node (mesh, reflector or reflector client), with the
// flags' timers and bfd, the BGPConfiguration's spec.meshBFD (nil: none).
func nodeNeighbor(cfg *Config, kind string, local, remote netip.Addr, asn uint32, bfd *bgp.BFDConfig) bgp.Neighbor {
	nb := bgp.Neighbor{
		Address:         remote,
		ASN:             asn,
		LocalAddress:    local,
		HoldTime:        cfg.HoldTime,
		KeepaliveTime:   cfg.KeepaliveTime,
		ConnectRetry:    nodeConnectRetry,
		Families:        cfg.families(),
		GracefulRestart: cfg.GracefulRestart,
		Kind:            kind,
		BFD:             cloneBFD(bfd),
	}
	if cfg.GracefulRestart {
		nb.RestartTime = cfg.RestartTime
	}
	return nb
}

// families are the address families of the cluster's pod and Service CIDRs: what any
// session of this node has to carry. A single-stack cluster's sessions carry one family,
// which halves the speaker's tables per peer (a reflector's memory at 1,000 nodes).
func (c *Config) families() bgp.Families {
	var f bgp.Families
	for _, p := range slices.Concat(c.ClusterCIDRs, c.ServiceCIDRs) {
		if p.Addr().Is4() {
			f |= bgp.IPv4
		} else {
			f |= bgp.IPv6
		}
	}
	return f
}

// externalNeighbor is the session to a BGPPeer from this node: its peering address of the
// peer's family (else the kernel picks the source address), the peer's timers or else the
// flags', graceful restart as the flags say.
func externalNeighbor(cfg *Config, p config.Peer, me self) bgp.Neighbor {
	nb := bgp.Neighbor{
		Address:                 p.Address,
		ASN:                     p.ASN,
		Port:                    p.Port,
		Password:                p.Password,
		HoldTime:                p.HoldTime,
		KeepaliveTime:           p.KeepaliveTime,
		EBGPMultihopTTL:         p.EBGPMultihopTTL,
		TTLSecurityHops:         p.TTLSecurityHops,
		Families:                cfg.families(),
		GracefulRestart:         cfg.GracefulRestart,
		RestartTime:             p.GracefulRestartTime,
		RouteReflectorClient:    p.RouteReflectorClient,
		RouteReflectorClusterID: p.RouteReflectorClusterID,
		NoExport:                !p.ExportPodCIDRs,
		Kind:                    bgp.KindExternal,
		BFD:                     cloneBFD(p.BFD),
	}
	local := me.V4
	if p.Address.Is6() {
		local = me.V6
	}
	if local.IsValid() {
		nb.LocalAddress = local.Unmap()
	}
	if p.Port == config.DefaultPort {
		nb.Port = 0
	}
	if nb.HoldTime == 0 {
		nb.HoldTime, nb.KeepaliveTime = cfg.HoldTime, cfg.KeepaliveTime
	}
	switch {
	case !nb.GracefulRestart:
		nb.RestartTime = 0 // a restart time means nothing without graceful restart
	case nb.RestartTime == 0:
		nb.RestartTime = cfg.RestartTime
	}
	if nb.ASN != me.ASN {
		// With one AS per rack (RFC 7938) the ToR hands a node its rack neighbours' routes
		// with the node's own AS in the path.
		nb.AllowOwnAS = 1
	}
	return nb
}

// cloneBFD gives each neighbour its own copy of the timers, so no two share one.
func cloneBFD(b *bgp.BFDConfig) *bgp.BFDConfig {
	if b == nil {
		return nil
	}
	c := *b
	return &c
}

// withoutBadBFD drops the neighbour's BFD when the speaker would refuse the neighbour with it
// but not without it, so a bad BFD setting never costs the session itself. config refuses
// such settings already; this covers what it cannot see (a node session's addresses, a
// speaker stricter than config). The error says what was dropped and why.
func withoutBadBFD(nb bgp.Neighbor) (bgp.Neighbor, error) {
	if nb.BFD == nil {
		return nb, nil
	}
	err := nb.Validate()
	if err == nil {
		return nb, nil
	}
	bare := nb
	bare.BFD = nil
	if bare.Validate() != nil {
		return nb, nil // not BFD's fault: the speaker reports it
	}
	return bare, fmt.Errorf("BFD off for %s: %w", nb.Address, err)
}
