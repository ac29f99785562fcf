package agent

import (
	"net/netip"
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
// flags' timers.
func nodeNeighbor(cfg *Config, kind string, local, remote netip.Addr, asn uint32) bgp.Neighbor {
	nb := bgp.Neighbor{
		Address:         remote,
		ASN:             asn,
		LocalAddress:    local,
		HoldTime:        cfg.HoldTime,
		KeepaliveTime:   cfg.KeepaliveTime,
		ConnectRetry:    nodeConnectRetry,
		GracefulRestart: cfg.GracefulRestart,
		Kind:            kind,
	}
	if cfg.GracefulRestart {
		nb.RestartTime = cfg.RestartTime
	}
	return nb
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
		GracefulRestart:         cfg.GracefulRestart,
		RestartTime:             p.GracefulRestartTime,
		RouteReflectorClient:    p.RouteReflectorClient,
		RouteReflectorClusterID: p.RouteReflectorClusterID,
		NoExport:                !p.ExportPodCIDRs,
		Kind:                    bgp.KindExternal,
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
