package bgp

import (
	"errors"
	"net/netip"
	"time"

	"github.com/podroute/podroute/bfd"
)

// Neighbor kinds. The node-to-node kinds (mesh, reflector, rr-client) are the cluster's own
// nodes: they never get external-only routes (Attributes.ExternalOnly) nor AS-path
// prepending (Attributes.ASPathPrepend), and one end of each such session dials
// (Neighbor.Passive). KindExternal, like no kind, is a router outside the cluster.
const (
	KindMesh      = "mesh"
	KindExternal  = "external"
	KindReflector = "reflector"
	// KindReflectorClient is a node this speaker reflects routes to.
	KindReflectorClient = "rr-client"
)

// Defaults applied to zero Neighbor fields.
const (
	DefaultHoldTime     = 90 * time.Second
	DefaultRestartTime  = 120 * time.Second
	DefaultConnectRetry = 5 * time.Second // GoBGP's 120s would delay a rebooted node's mesh for minutes
	defaultDeferralTime = 10 * time.Second
	maxRestartTime      = 4095 * time.Second // 12-bit field in the capability
	maxMD5KeyLen        = 80                 // TCP_MD5SIG_MAXKEYLEN
	minBFDInterval      = 10 * time.Millisecond
	maxBFDInterval      = bfd.MaxInterval
)

// Families is a set of address families a session carries (unicast).
type Families uint8

// The families. Zero Families means both.
const (
	IPv4 Families = 1 << iota
	IPv6
	bothFamilies = IPv4 | IPv6
)

// of is the set as given, both when zero.
func (f Families) of() Families {
	if f == 0 {
		return bothFamilies
	}
	return f
}

// Neighbor is a BGP peer.
type Neighbor struct {
	// Address is the peer's address. Required; link-local addresses are not supported.
	Address netip.Addr
	// ASN is the peer's AS; equal to Config.ASN for iBGP. Required.
	ASN uint32
	// LocalAddress is the source address for the session; zero lets the kernel choose.
	LocalAddress netip.Addr
	// Port is the peer's TCP port; 0 means 179.
	Port uint16
	// Password enables TCP MD5 signatures (RFC 2385) with this key.
	Password string
	// Families are the unicast families the session carries: IPv4, IPv6 or both (zero).
	// Each family costs a table per peer in the speaker (about 200 KB even when empty), so
	// a single-stack cluster's sessions carry its one family. A change resets the session.
	Families Families
	// Passive makes us wait for the peer to connect instead of dialing it. Node-to-node
	// peers (Kind mesh, reflector, rr-client) with LocalAddress set are made passive
	// automatically when LocalAddress is the greater address, so exactly one end of each
	// such session dials: GoBGP keeps a dropped session idle for 5s, refusing connections, and drops
	// a restarting peer's stale routes when one of its own reconnection attempts fails;
	// two ends dialing each other after a restart keep landing in each other's idle time.
	Passive bool

	// HoldTime is the proposed hold time: 0 (90s) or at least 3s, whole seconds.
	HoldTime time.Duration
	// KeepaliveTime is the keepalive interval: 0 (a third of the hold time) or at least 1s
	// and below HoldTime, whole seconds.
	KeepaliveTime time.Duration
	// ConnectRetry is the delay between connection attempts: 0 means 5s, whole seconds.
	ConnectRetry time.Duration

	// EBGPMultihopTTL allows an eBGP peer that many hops away (0: directly connected).
	EBGPMultihopTTL uint8
	// TTLSecurityHops enables GTSM (RFC 5082): accept only packets from at most that many
	// hops away. Exclusive with EBGPMultihopTTL.
	TTLSecurityHops uint8

	// GracefulRestart negotiates graceful restart (RFC 4724, with RFC 8538 notification
	// support) on both families, so the peer keeps our routes while our agent restarts
	// and we keep its routes while it restarts.
	GracefulRestart bool
	// RestartTime is how long the peer should keep our routes after we go away: 0 means
	// 120s, at most 4095s, whole seconds. Keep it above HoldTime: GoBGP only accepts the
	// restarted session once the old one is gone, which can take a hold time.
	RestartTime time.Duration

	// AllowOwnAS accepts paths carrying our own AS up to that many times: with one AS per
	// rack (RFC 7938), a node learns its rack neighbours' routes back through the ToR.
	AllowOwnAS uint8

	// NoExport advertises nothing to this peer (an external peer of a rack that must not
	// learn pod CIDRs); we still accept what it sends.
	NoExport bool

	// RouteReflectorClient makes this (iBGP) peer our route-reflector client: we reflect
	// learned routes to it.
	RouteReflectorClient bool
	// RouteReflectorClusterID is the cluster ID (IPv4) used towards this client; zero
	// means our router ID.
	RouteReflectorClusterID netip.Addr

	// Kind is KindMesh, KindReflector, KindReflectorClient (the cluster's own nodes),
	// KindExternal or empty (an external router). It decides who gets external-only routes
	// and AS-path prepending (Attributes.ExternalOnly, ASPathPrepend: external neighbours
	// only) and which end of a node-to-node session dials (see Passive); it is also shown
	// in logs and PeerState.
	Kind string

	// BFD, when set, runs a BFD session (RFC 5880, podroute's own: package bfd) with the
	// peer beside BGP. When BFD declares the peer down while the BGP session is
	// established, the session is reset at once instead of at hold-time expiry; when the
	// BGP session had already failed (the peer's kernel closed it: its agent restarts),
	// graceful restart keeps the routes. Single hop only (RFC 5881), so not for multihop
	// peers. Packets leave from LocalAddress (else the address the kernel picks towards
	// the peer), and the peer matches them by source address, so that address must be
	// the session's. A stop for a restart (Stop(true)) cuts the BGP sessions first and
	// then sends AdminDown, which peers do not take for a failure.
	BFD *BFDConfig
}

// BFDConfig is a BFD session's timers (RFC 5880 section 6.8.1).
type BFDConfig struct {
	// MinTx is our desired minimum interval between BFD packets: at least 10ms, whole
	// microseconds.
	MinTx time.Duration
	// MinRx is the shortest interval between received BFD packets we can handle: at least
	// 10ms, whole microseconds.
	MinRx time.Duration
	// Multiplier is how many intervals may pass without a packet before the peer is
	// declared down (the detection time is Multiplier times the greater of our MinRx and
	// the peer's MinTx): 1..255.
	Multiplier uint32
}

// Validate checks the neighbor on its own; errors are *FieldError naming the field.
func (n Neighbor) Validate() error {
	var errs []error
	add := func(e error) { errs = append(errs, e) }
	switch {
	case !n.Address.IsValid():
		add(fieldErr("Neighbor.Address", "required"))
	case n.Address.IsUnspecified() || n.Address.IsMulticast():
		add(fieldErr("Neighbor.Address", "%s is not a unicast address", n.Address))
	case n.Address.Zone() != "" || n.Address.Is6() && n.Address.IsLinkLocalUnicast():
		add(fieldErr("Neighbor.Address", "link-local peers are not supported"))
	}
	if n.ASN == 0 {
		add(fieldErr("Neighbor.ASN", "required"))
	}
	if n.LocalAddress.IsValid() && n.Address.IsValid() && n.LocalAddress.Unmap().Is4() != n.Address.Unmap().Is4() {
		add(fieldErr("Neighbor.LocalAddress", "%s is not of the same family as %s", n.LocalAddress, n.Address))
	}
	if len(n.Password) > maxMD5KeyLen {
		add(fieldErr("Neighbor.Password", "longer than %d bytes", maxMD5KeyLen))
	}
	if err := wholeSeconds("Neighbor.HoldTime", n.HoldTime, 3*time.Second, 65535*time.Second); err != nil {
		add(err)
	}
	if err := wholeSeconds("Neighbor.KeepaliveTime", n.KeepaliveTime, time.Second, 65535*time.Second); err != nil {
		add(err)
	} else if n.KeepaliveTime != 0 && n.KeepaliveTime >= n.holdTime() {
		add(fieldErr("Neighbor.KeepaliveTime", "%s must be below the hold time %s", n.KeepaliveTime, n.holdTime()))
	}
	if err := wholeSeconds("Neighbor.ConnectRetry", n.ConnectRetry, time.Second, 65535*time.Second); err != nil {
		add(err)
	}
	if n.EBGPMultihopTTL != 0 && n.TTLSecurityHops != 0 {
		add(fieldErr("Neighbor.TTLSecurityHops", "exclusive with EBGPMultihopTTL"))
	}
	if err := wholeSeconds("Neighbor.RestartTime", n.RestartTime, time.Second, maxRestartTime); err != nil {
		add(err)
	} else if n.RestartTime != 0 && !n.GracefulRestart {
		add(fieldErr("Neighbor.RestartTime", "set without GracefulRestart"))
	}
	if n.RouteReflectorClusterID.IsValid() {
		if !n.RouteReflectorClusterID.Is4() {
			add(fieldErr("Neighbor.RouteReflectorClusterID", "must be an IPv4 address"))
		}
		if !n.RouteReflectorClient {
			add(fieldErr("Neighbor.RouteReflectorClusterID", "set without RouteReflectorClient"))
		}
	}
	if n.Families&^bothFamilies != 0 {
		add(fieldErr("Neighbor.Families", "%#x is not IPv4, IPv6 or both", uint8(n.Families)))
	}
	switch n.Kind {
	case "", KindMesh, KindExternal, KindReflector, KindReflectorClient:
	default:
		add(fieldErr("Neighbor.Kind", "unknown kind %q", n.Kind))
	}
	if n.BFD != nil {
		errs = append(errs, n.BFD.validate(n)...)
	}
	return errors.Join(errs...)
}

func (b *BFDConfig) validate(n Neighbor) []error {
	var errs []error
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"Neighbor.BFD.MinTx", b.MinTx}, {"Neighbor.BFD.MinRx", b.MinRx}} {
		switch {
		case f.d < minBFDInterval || f.d > maxBFDInterval:
			errs = append(errs, fieldErr(f.name, "%s is outside %s..%s", f.d, minBFDInterval, maxBFDInterval))
		case f.d%time.Microsecond != 0:
			errs = append(errs, fieldErr(f.name, "%s is not a whole number of microseconds", f.d))
		}
	}
	if b.Multiplier == 0 || b.Multiplier > 255 {
		errs = append(errs, fieldErr("Neighbor.BFD.Multiplier", "%d is outside 1..255", b.Multiplier))
	}
	// Single hop only (RFC 5881): its packets must arrive with TTL 255, which a peer
	// behind a router never sees; multihop BFD (RFC 5883) is another protocol.
	if n.EBGPMultihopTTL != 0 {
		errs = append(errs, fieldErr("Neighbor.BFD", "single-hop only, not with EBGPMultihopTTL %d", n.EBGPMultihopTTL))
	}
	if n.TTLSecurityHops > 1 {
		errs = append(errs, fieldErr("Neighbor.BFD", "single-hop only, not with TTLSecurityHops %d", n.TTLSecurityHops))
	}
	return errs
}

func (b *BFDConfig) clone() *BFDConfig {
	if b == nil {
		return nil
	}
	c := *b
	return &c
}

// validateFor adds the checks that depend on the local configuration.
func (n Neighbor) validateFor(cfg *Config) error {
	if err := n.Validate(); err != nil {
		return err
	}
	ibgp := n.ASN == cfg.ASN
	if n.RouteReflectorClient && !ibgp {
		return fieldErr("Neighbor.RouteReflectorClient", "only iBGP peers can be clients (peer AS %d, local AS %d)", n.ASN, cfg.ASN)
	}
	if n.EBGPMultihopTTL != 0 && ibgp {
		return fieldErr("Neighbor.EBGPMultihopTTL", "only applies to eBGP peers")
	}
	return nil
}

func wholeSeconds(field string, d, lo, hi time.Duration) error {
	if d == 0 {
		return nil
	}
	if d%time.Second != 0 {
		return fieldErr(field, "%s is not a whole number of seconds", d)
	}
	if d < lo || d > hi {
		return fieldErr(field, "%s is outside %s..%s", d, lo, hi)
	}
	return nil
}

// restartTime is how long peers keep our routes when we restart (the one we announce).
func (n Neighbor) restartTime() time.Duration {
	if n.RestartTime == 0 {
		return DefaultRestartTime
	}
	return n.RestartTime
}

func (n Neighbor) holdTime() time.Duration {
	if n.HoldTime == 0 {
		return DefaultHoldTime
	}
	return n.HoldTime
}

// passive reports whether we leave dialing to the peer; see Neighbor.Passive.
func (n Neighbor) passive() bool {
	if n.Passive {
		return true
	}
	return n.nodeToNode() && n.LocalAddress.IsValid() && n.LocalAddress.Compare(n.Address) > 0
}

// nodeToNode tells a session between two podroute nodes, where exactly one end must dial.
func (n Neighbor) nodeToNode() bool {
	return n.Kind == KindMesh || n.Kind == KindReflector || n.Kind == KindReflectorClient
}

func (n Neighbor) port() uint16 {
	if n.Port == 0 {
		return 179
	}
	return n.Port
}
