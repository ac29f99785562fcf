// Package bgp is podroute's BGP speaker: a narrow Router interface and its implementation
// on top of an embedded GoBGP server. Nothing outside this package imports GoBGP.
//
// The agent configures a Router with its ASN and router ID, adds neighbors (the iBGP mesh,
// ToR eBGP peers, route reflectors), advertises the node's pod CIDRs (and Service
// addresses, to external peers only: Attributes.ExternalOnly) and reads back the
// learned best paths (with all ECMP next hops) to program the kernel. Learned routes are
// filtered by a default-deny import policy (see ImportFilter) enforced by GoBGP's policy
// engine; refused announcements are remembered and logged once per prefix and peer.
package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"
)

// Router is podroute's BGP speaker. All methods are safe for concurrent use. A Router is
// single-use: Start it once, Stop it once.
type Router interface {
	// Start starts the speaker: the listener (unless Config.ListenPort is -1), the import
	// and export policies and the event watchers. ctx bounds the start-up only.
	// Add the neighbors right after Start: GoBGP refuses a connection from a peer not
	// yet configured, and a graceful-restart peer whose reconnection attempt fails drops
	// the stale routes it kept for us.
	Start(ctx context.Context) error

	// Stop stops the speaker. It is idempotent.
	//
	// Stop(false) is a shutdown: every session is closed with a CEASE NOTIFICATION (an
	// RFC 8538 Hard Reset where negotiated) so peers withdraw our routes at once.
	//
	// Stop(true) is a stop for a restart: every session is cut at the TCP level with no
	// NOTIFICATION, so peers that negotiated graceful restart keep our routes (marked
	// stale) for the restart time, and the restarted agent (Config.Restarting) takes over.
	// Peers without graceful restart drop our routes either way.
	Stop(graceful bool) error

	// AddNeighbor configures a new peer. The neighbor is validated first; errors name the
	// offending field (see FieldError).
	AddNeighbor(ctx context.Context, n Neighbor) error
	// UpdateNeighbor changes a configured peer in place. Changes that GoBGP cannot apply
	// to a running session (ASN, password, families, graceful restart, transport) reset it.
	UpdateNeighbor(ctx context.Context, n Neighbor) error
	// RemoveNeighbor deconfigures a peer (with a CEASE) and drops the routes it sent.
	RemoveNeighbor(ctx context.Context, addr netip.Addr) error

	// Advertise originates prefix with attrs, replacing any earlier advertisement of the
	// same prefix (a change of attributes is one call). The next hop is
	// Config.NextHopIPv4/IPv6, or the session's local address when that is unset. Errors
	// about attrs are *FieldError naming the field, e.g. "Attributes.ASPathPrepend".
	//
	// Turning ExternalOnly on or off for a prefix already advertised reaches the internal
	// neighbours by a soft reset out of each of them (GoBGP neither withdraws a path its
	// export policy newly refuses nor resends an unchanged one it newly allows), which
	// resends them every route: a rare change, not one for each Service. Likewise a new
	// ASPathPrepend for a prefix already advertised with the same communities reaches the
	// external neighbours by a soft reset out of each (the count is not in the path, so
	// the path is unchanged): a change of configuration, not of each Service.
	Advertise(ctx context.Context, prefix netip.Prefix, attrs Attributes) error
	// Withdraw stops originating prefix. Withdrawing a prefix that is not advertised is
	// not an error.
	Withdraw(ctx context.Context, prefix netip.Prefix) error

	// UpdateImportFilter replaces the import filter and re-evaluates every path already
	// received, so newly refused routes disappear and newly allowed ones appear.
	UpdateImportFilter(ctx context.Context, f ImportFilter) error

	// Neighbors reports every configured peer with its session state and counters; the
	// advertised counts only if advertised is set (else zero): GoBGP counts a peer's
	// advertised paths by running its export policy over every best path, per peer and
	// listing, which on a route reflector is every node's route for every node (about 10 s
	// with 1,000 clients, the speaker taking no other request meanwhile).
	Neighbors(ctx context.Context, advertised bool) ([]PeerState, error)
	// Sessions is Neighbors without the accepted and advertised counts (both zero), for
	// callers that want the sessions' states only.
	Sessions(ctx context.Context) ([]PeerState, error)
	// Routes reports the learned best routes: one Route per prefix, carrying every path
	// of the ECMP multipath set. Prefixes whose best path is our own advertisement are
	// left out, as are paths refused by the import policy.
	//
	// GoBGP converts paths outside its event loop while it may be marking a restarting
	// peer's paths stale or updating a reconnecting peer's identity in place; those
	// reads are of plain fields and are harmless, but the race detector reports them.
	Routes(ctx context.Context) ([]Route, error)
	// Synced reports whether every configured neighbor is established and has sent
	// End-of-RIB for each family on which it negotiated graceful restart (peers without
	// graceful restart count once established). The agent sweeps its stale kernel routes
	// after a restart once this is true (or after its own timeout).
	Synced(ctx context.Context) (bool, error)

	// Subscribe returns a channel that receives a value whenever best paths, session
	// states or End-of-RIB status may have changed. Signals are coalesced: the channel
	// holds at most one pending value, so a slow reader never builds a queue; read the
	// current state with Routes, Neighbors or Synced after each signal. The channel is
	// closed when ctx ends or the router stops.
	Subscribe(ctx context.Context) <-chan struct{}

	// Refusals lists the announcements refused by the import filter, one entry per
	// (prefix, peer), ordered by peer then prefix.
	Refusals() []Refusal
}

// Config is the speaker's static configuration.
type Config struct {
	// ASN is the local autonomous system number. Required.
	ASN uint32
	// RouterID is the BGP identifier, an IPv4 address. Required.
	RouterID netip.Addr
	// ListenAddresses are the addresses the listener binds; empty means 0.0.0.0 and ::.
	ListenAddresses []netip.Addr
	// ListenPort is the TCP port to listen on: 0 means 179, -1 means no listener (the
	// speaker only connects out).
	ListenPort int32

	// NextHopIPv4 and NextHopIPv6 are the next hops put on our advertisements of each
	// family. When unset GoBGP uses the session's local address, which is only right for
	// prefixes of the session's own family: IPv6 prefixes carried over an IPv4 session
	// need NextHopIPv6 (the node's IPv6 address).
	NextHopIPv4 netip.Addr
	NextHopIPv6 netip.Addr

	// ImportFilter decides which learned prefixes are accepted. The zero value refuses
	// every learned route.
	ImportFilter ImportFilter

	// Restarting tells graceful-restart peers that this speaker restarted (the Restart
	// State bit) so they keep forwarding on our stale routes while we resynchronise.
	// GoBGP then holds our advertisements until End-of-RIB arrived from every
	// established graceful-restart peer, or DeferralTime passed, whichever comes first.
	// Set it only when the agent restarts with routes still in place, not on first boot.
	// It applies to graceful-restart neighbors added within DeferralTime of Start.
	Restarting bool
	// DeferralTime bounds how long a restarting speaker waits for its peers' End-of-RIB
	// before advertising anyway. 0 means 10s; GoBGP's own default (360s) would leave a
	// restarted node dark for minutes if one peer never sends End-of-RIB.
	DeferralTime time.Duration

	// Logger receives GoBGP's log and podroute's BGP messages. nil means slog.Default().
	Logger *slog.Logger
}

// MaxASPathPrepend bounds Attributes.ASPathPrepend: more only lengthens paths.
const MaxASPathPrepend = 10

// Attributes are what an originated route carries besides its prefix and next hop.
type Attributes struct {
	// Communities are standard communities (RFC 1997) attached to the route.
	Communities []Community
	// ASPathPrepend repeats our AS that many extra times (0..10) in the route's AS path
	// towards external neighbours (Kind KindExternal or unset), so routers outside the
	// cluster can prefer or avoid it: the export policy prepends it per neighbour. An
	// external eBGP peer sees our AS ASPathPrepend+1 times (GoBGP adds it once more), an
	// external iBGP peer (a router of our AS outside the cluster) ASPathPrepend times, and
	// it drops a path carrying its own AS unless it allows that (Neighbor.AllowOwnAS on a
	// podroute peer). The cluster's own nodes (KindMesh, KindReflector,
	// KindReflectorClient) get the route unprepended, with an empty AS path, as their loop
	// detection would drop it otherwise.
	ASPathPrepend uint8
	// ExternalOnly keeps the route from the cluster's own nodes: it is exported to external
	// neighbours only (Kind KindExternal or unset), never to KindMesh, KindReflector or
	// KindReflectorClient ones. Service addresses are such routes: each node's kube-proxy
	// serves them itself.
	ExternalOnly bool
}

// normalize validates a and returns it with its communities sorted and deduplicated.
func (a Attributes) normalize() (Attributes, error) {
	if a.ASPathPrepend > MaxASPathPrepend {
		return a, fieldErr("Attributes.ASPathPrepend", "%d is outside 0..%d", a.ASPathPrepend, MaxASPathPrepend)
	}
	a.Communities = slices.Clone(a.Communities)
	slices.Sort(a.Communities)
	a.Communities = slices.Compact(a.Communities)
	if len(a.Communities) == 0 {
		a.Communities = nil
	}
	return a, nil
}

func (a Attributes) equal(b Attributes) bool {
	return slices.Equal(a.Communities, b.Communities) && a.ASPathPrepend == b.ASPathPrepend && a.ExternalOnly == b.ExternalOnly
}

// Community is a standard BGP community (RFC 1997), high 16 bits ASN, low 16 bits value.
type Community uint32

// NewCommunity builds the community asn:value.
func NewCommunity(asn, value uint16) Community { return Community(uint32(asn)<<16 | uint32(value)) }

// String formats the community as asn:value.
func (c Community) String() string { return fmt.Sprintf("%d:%d", uint32(c)>>16, uint32(c)&0xffff) }

// Route is a learned prefix with the paths GoBGP would use for it.
type Route struct {
	Prefix netip.Prefix
	// NextHops are the distinct next hops of the multipath set, sorted. More than one
	// means ECMP.
	NextHops []netip.Addr
	// Paths is the multipath set, best path first.
	Paths []Path
}

// Path is one learned path for a prefix.
type Path struct {
	NextHop     netip.Addr
	ASPath      []uint32
	Communities []Community
	LocalPref   uint32
	MED         uint32
	// SourcePeer is the neighbor the path was learned from.
	SourcePeer netip.Addr
	// SourceRouterID is that neighbor's BGP identifier.
	SourceRouterID netip.Addr
	// Best marks the single path BGP selected; the others are equal-cost alternatives.
	Best bool
	// Stale marks a path kept from a graceful-restarting peer, pending its End-of-RIB.
	Stale bool
}

// Session states reported in PeerState.State.
const (
	StateIdle        = "idle"
	StateConnect     = "connect"
	StateActive      = "active"
	StateOpenSent    = "opensent"
	StateOpenConfirm = "openconfirm"
	StateEstablished = "established"
)

// BFD session states reported in PeerState.BFDState.
const (
	BFDStateAdminDown = "admin-down"
	BFDStateDown      = "down"
	BFDStateInit      = "init"
	BFDStateUp        = "up"
)

// PeerState is a configured neighbor and its session.
type PeerState struct {
	// Neighbor is the configuration as given, with Password blanked.
	Neighbor
	// State is one of the State* constants.
	State string
	// Since is when the session last came up (if established) or went down; zero if it
	// never did.
	Since time.Time
	// Received, Accepted and Advertised count prefixes over both families: received from
	// the peer (before import policy), accepted by the import filter, sent to the peer.
	Received, Accepted, Advertised uint64
	// EndOfRIB is true once the peer is established and sent End-of-RIB for every family
	// it negotiated graceful restart for (or established without graceful restart).
	EndOfRIB bool
	// PeerRestarting is true while we keep the peer's routes as stale during its restart.
	PeerRestarting bool
	// BFDState is the BFD session's state, one of the BFDState* constants, when
	// Neighbor.BFD is set; empty otherwise.
	BFDState string
	// BFDFlaps counts the times the BFD session went from up to down.
	BFDFlaps uint64
	// LastError is the most recent warning or error GoBGP reported for this peer, with
	// LastErrorTime; it is kept after the session recovers.
	LastError     string
	LastErrorTime time.Time
}

// Refusal records announcements of one prefix by one peer that the import filter refused.
type Refusal struct {
	Prefix    netip.Prefix
	Peer      netip.Addr
	Reason    string
	Count     uint64
	FirstSeen time.Time
	LastSeen  time.Time
}

// FieldError reports an invalid configuration field.
type FieldError struct {
	// Field is the Go name of the field, e.g. "Neighbor.HoldTime".
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return "invalid " + e.Field + ": " + e.Reason }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}
