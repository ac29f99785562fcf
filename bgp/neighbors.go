// Neighbor operations (Add, Update, Remove) and their conversion to and from GoBGP's
// peer configuration and state.

package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

func (r *router) localRestarting(n Neighbor) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return n.GracefulRestart && time.Now().Before(r.restartingUntil)
}

func normalizeNeighbor(n Neighbor) Neighbor {
	n.Address = n.Address.Unmap()
	if n.LocalAddress.IsValid() {
		n.LocalAddress = n.LocalAddress.Unmap()
	}
	n.BFD = n.BFD.clone()
	return n
}

// beginNeighborOp normalises and validates n and takes the lock that serialises neighbour
// operations; the caller must call unlock.
func (r *router) beginNeighborOp(n Neighbor) (_ Neighbor, unlock func(), err error) {
	n = normalizeNeighbor(n)
	if err := n.validateFor(&r.cfg); err != nil {
		return n, nil, fmt.Errorf("bgp: neighbor %v: %w", n.Address, err)
	}
	r.opMu.Lock()
	if err := r.running(); err != nil {
		r.opMu.Unlock()
		return n, nil, err
	}
	return n, r.opMu.Unlock, nil
}

func (r *router) AddNeighbor(ctx context.Context, n Neighbor) (err error) {
	defer guard("add neighbor", &err)
	n, unlock, err := r.beginNeighborOp(n)
	if err != nil {
		return err
	}
	defer unlock()
	r.mu.Lock()
	_, exists := r.neighbors[n.Address]
	r.mu.Unlock()
	if exists {
		return fmt.Errorf("bgp: neighbor %s already configured", n.Address)
	}
	shapes := r.shapesPolicy(n)
	if shapes {
		// The export policy must allow reflection (or forbid export, or keep external-only
		// routes and prepending from a node) before the session can come up.
		r.mu.Lock()
		r.neighbors[n.Address] = n
		r.mu.Unlock()
		if err := r.neighborSetsChangedLocked(ctx, nil, &n); err != nil {
			r.mu.Lock()
			delete(r.neighbors, n.Address)
			r.mu.Unlock()
			return err
		}
	}
	if n.Password != "" {
		if err := md5Supported(); err != nil {
			return fmt.Errorf("bgp: neighbor %s: %w", n.Address, &FieldError{Field: "Neighbor.Password", Reason: err.Error()})
		}
	}
	if err := r.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: n.toAPI(&r.cfg, r.localRestarting(n))}); err != nil {
		r.mu.Lock()
		delete(r.neighbors, n.Address)
		r.mu.Unlock()
		if shapes {
			_ = r.neighborSetsChangedLocked(ctx, &n, nil)
		}
		return fmt.Errorf("bgp: add neighbor %s (AS %d): %w", n.Address, n.ASN, err)
	}
	r.mu.Lock()
	r.neighbors[n.Address] = n
	r.mu.Unlock()
	r.setBFD(ctx, n)
	r.log.Info("bgp: neighbor added", "peer", n.Address, "asn", n.ASN, "kind", n.Kind, "gracefulRestart", n.GracefulRestart)
	return nil
}

func (r *router) UpdateNeighbor(ctx context.Context, n Neighbor) (err error) {
	defer guard("update neighbor", &err)
	n, unlock, err := r.beginNeighborOp(n)
	if err != nil {
		return err
	}
	defer unlock()
	r.mu.Lock()
	old, exists := r.neighbors[n.Address]
	if exists {
		r.neighbors[n.Address] = n
	}
	r.mu.Unlock()
	if !exists {
		return fmt.Errorf("bgp: neighbor %s not configured", n.Address)
	}
	rollback := func() {
		r.mu.Lock()
		r.neighbors[n.Address] = old
		r.mu.Unlock()
	}
	// A change of the neighbour's export rules: its policy changes first, and a soft reset
	// out then sends what it now gets and withdraws what it no longer does.
	rrChanged := old.RouteReflectorClient != n.RouteReflectorClient || old.NoExport != n.NoExport ||
		old.nodeToNode() != n.nodeToNode() && r.listsInternal()
	// Hold and keepalive times are agreed in OPEN: a change takes effect only on a new session.
	timersChanged := old.HoldTime != n.HoldTime || old.KeepaliveTime != n.KeepaliveTime
	if rrChanged {
		if err := r.neighborSetsChangedLocked(ctx, &old, &n); err != nil {
			rollback()
			return err
		}
	}
	resp, err := r.srv.UpdatePeer(ctx, &api.UpdatePeerRequest{Peer: n.toAPI(&r.cfg, r.localRestarting(n))})
	if err != nil {
		rollback()
		if rrChanged {
			_ = r.neighborSetsChangedLocked(ctx, &n, &old)
		}
		return fmt.Errorf("bgp: update neighbor %s: %w", n.Address, err)
	}
	r.setBFD(ctx, n)
	if resp.GetNeedsSoftResetIn() {
		if err := r.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: n.Address.String(), Soft: true, Direction: api.ResetPeerRequest_DIRECTION_IN}); err != nil {
			return fmt.Errorf("bgp: update neighbor %s: soft reset: %w", n.Address, err)
		}
	}
	if rrChanged {
		if err := r.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: n.Address.String(), Soft: true, Direction: api.ResetPeerRequest_DIRECTION_OUT}); err != nil {
			return fmt.Errorf("bgp: update neighbor %s: soft reset: %w", n.Address, err)
		}
	}
	if timersChanged {
		// Cut the session without a NOTIFICATION: both ends see the connection fail and
		// keep each other's routes (graceful restart) while the session comes back with
		// the new timers. GoBGP's ResetPeer sends a CEASE (Administrative Reset): an
		// RFC 8538 peer would keep our routes, but GoBGP itself drops the peer's routes
		// after sending one, and a peer without the N bit drops ours.
		if _, err := abortSessions([]sessionKey{r.sessionKey(n)}); err != nil {
			return fmt.Errorf("bgp: update neighbor %s: restart session for new timers: %w", n.Address, err)
		}
	}
	r.log.Info("bgp: neighbor updated", "peer", n.Address, "asn", n.ASN, "kind", n.Kind, "sessionRestarted", timersChanged)
	return nil
}

func (r *router) RemoveNeighbor(ctx context.Context, addr netip.Addr) (err error) {
	defer guard("remove neighbor", &err)
	addr = addr.Unmap()
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.running(); err != nil {
		return err
	}
	r.mu.Lock()
	n, exists := r.neighbors[addr]
	r.mu.Unlock()
	if !exists {
		return fmt.Errorf("bgp: neighbor %v not configured", addr)
	}
	if err := r.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
		return fmt.Errorf("bgp: remove neighbor %s: %w", addr, err)
	}
	r.bfd.Remove(addr)
	r.mu.Lock()
	delete(r.neighbors, addr)
	delete(r.problems, addr)
	r.mu.Unlock()
	r.refusals.retain(func(_ netip.Prefix, peer netip.Addr) bool { return peer != addr })
	if r.shapesPolicy(n) {
		if err := r.neighborSetsChangedLocked(ctx, &n, nil); err != nil {
			return err
		}
	}
	r.log.Info("bgp: neighbor removed", "peer", addr)
	return nil
}

func (r *router) Neighbors(ctx context.Context, advertised bool) (out []PeerState, err error) {
	defer guard("neighbors", &err)
	return r.neighborStates(ctx, true, advertised)
}

func (r *router) Sessions(ctx context.Context) (out []PeerState, err error) {
	defer guard("sessions", &err)
	return r.neighborStates(ctx, false, false)
}

// neighborStates lists the neighbours, with their accepted counts if counts is set and
// their advertised counts if advertised is.
func (r *router) neighborStates(ctx context.Context, counts, advertised bool) (out []PeerState, err error) {
	if err := r.running(); err != nil {
		return nil, err
	}
	var peers []*api.Peer
	if err := r.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: advertised}, func(p *api.Peer) { peers = append(peers, p) }); err != nil {
		return nil, fmt.Errorf("bgp: list neighbors: %w", err)
	}
	byAddr := make(map[netip.Addr]*api.Peer, len(peers))
	for _, p := range peers {
		if p.GetConf() == nil {
			continue
		}
		if a, err := netip.ParseAddr(p.Conf.NeighborAddress); err == nil {
			byAddr[a.Unmap()] = p
		}
	}
	var accepted map[netip.Addr]uint64
	if counts {
		if accepted, err = r.acceptedCounts(ctx); err != nil {
			return nil, err
		}
	}
	r.mu.Lock()
	for addr, n := range r.neighbors {
		ps := PeerState{Neighbor: n, State: StateIdle}
		ps.Password = ""
		// The caller gets its own copy of the BFD timers, not ours.
		if ps.BFD = n.BFD.clone(); ps.BFD != nil {
			ps.BFDState, ps.BFDFlaps = r.bfdState(addr)
		}
		if pr, ok := r.problems[addr]; ok {
			ps.LastError, ps.LastErrorTime = pr.msg, pr.at
		}
		if p, ok := byAddr[addr]; ok {
			fillPeerState(&ps, p)
			if ps.State == StateEstablished { // not the stale paths of a restarting peer
				ps.Accepted = accepted[addr]
			}
		}
		out = append(out, ps)
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Address.Less(out[j].Address) })
	return out, nil
}

// acceptedCounts counts, per peer, the received paths the import filter accepts: the
// peer's paths in the global table, which holds what the import policy accepted and
// nothing it refused. GoBGP's own "accepted" counter ignores the (global) import policy,
// and listing each peer's adj-RIB-in costs a table per peer (GoBGP builds one, 2,048
// shards, for each listing); one listing of the global table per family serves all peers.
func (r *router) acceptedCounts(ctx context.Context) (map[netip.Addr]uint64, error) {
	out := map[netip.Addr]uint64{}
	for _, fam := range families {
		err := r.srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: fam},
			func(_ bgp.NLRI, paths []*apiutil.Path) {
				for _, p := range paths {
					if !p.Withdrawal && p.PeerAddress.IsValid() {
						out[p.PeerAddress.Unmap()]++
					}
				}
			})
		if err != nil {
			return nil, fmt.Errorf("bgp: count accepted paths: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("bgp: count accepted paths: %w", err)
		}
	}
	return out, nil
}

var sessionStates = map[api.PeerState_SessionState]string{
	api.PeerState_SESSION_STATE_IDLE:        StateIdle,
	api.PeerState_SESSION_STATE_CONNECT:     StateConnect,
	api.PeerState_SESSION_STATE_ACTIVE:      StateActive,
	api.PeerState_SESSION_STATE_OPENSENT:    StateOpenSent,
	api.PeerState_SESSION_STATE_OPENCONFIRM: StateOpenConfirm,
	api.PeerState_SESSION_STATE_ESTABLISHED: StateEstablished,
}

func fillPeerState(ps *PeerState, p *api.Peer) {
	if s, ok := sessionStates[p.GetState().GetSessionState()]; ok {
		ps.State = s
	}
	ts := p.GetTimers().GetState()
	if ps.State == StateEstablished {
		if t := ts.GetUptime(); t != nil {
			ps.Since = t.AsTime()
		}
	} else if t := ts.GetDowntime(); t != nil {
		ps.Since = t.AsTime()
	}
	ps.PeerRestarting = p.GetGracefulRestart().GetPeerRestarting()
	eor := ps.State == StateEstablished
	for _, af := range p.AfiSafis {
		if st := af.GetState(); st != nil {
			ps.Received += st.Received
			// GoBGP v4 counts the paths it would send, without the End-of-RIB marker (v3
			// counted that one too).
			ps.Advertised += st.Advertised
		}
		// A peer that announced graceful restart for a family promises End-of-RIB.
		if mp := af.GetMpGracefulRestart().GetState(); mp != nil && mp.Received && !mp.EndOfRibReceived {
			eor = false
		}
	}
	ps.EndOfRIB = eor
}

var (
	familyIPv4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	familyIPv6 = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
)

// familyNames are each family in GoBGP's API and table terms.
var familyNames = []struct {
	f     Families
	api   *api.Family
	table bgp.Family
}{{IPv4, familyIPv4, bgp.RF_IPv4_UC}, {IPv6, familyIPv6, bgp.RF_IPv6_UC}}

// api is the set in GoBGP's API terms.
func (f Families) api() []*api.Family {
	var out []*api.Family
	for _, n := range familyNames {
		if f.of()&n.f != 0 {
			out = append(out, n.api)
		}
	}
	return out
}

// table is the set in GoBGP's table terms.
func (f Families) table() []bgp.Family {
	var out []bgp.Family
	for _, n := range familyNames {
		if f.of()&n.f != 0 {
			out = append(out, n.table)
		}
	}
	return out
}

// toAPI converts a validated neighbor into GoBGP's peer configuration.
func (n Neighbor) toAPI(cfg *Config, localRestarting bool) *api.Peer {
	secs := func(d time.Duration) uint64 { return uint64(d / time.Second) }
	keepalive := n.KeepaliveTime
	if keepalive == 0 {
		keepalive = n.holdTime() / 3
	}
	retry := n.ConnectRetry
	if retry == 0 {
		retry = DefaultConnectRetry
	}
	p := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: n.Address.String(),
			PeerAsn:         n.ASN,
			LocalAsn:        cfg.ASN,
			AuthPassword:    n.Password,
			Description:     n.Kind,
			AllowOwnAsn:     uint32(n.AllowOwnAS),
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:          secs(n.holdTime()),
			KeepaliveInterval: secs(keepalive),
			ConnectRetry:      secs(retry),
			// After its own reset (a CEASE: BFD declared the peer down) GoBGP waits this
			// long before it dials again, 30 s unless set: a link that came back would
			// stay unused for that long. The connect-retry time still spaces attempts.
			IdleHoldTimeAfterReset: 1,
		}},
		Transport: &api.Transport{RemotePort: uint32(n.port()), PassiveMode: n.passive()},
	}
	if n.LocalAddress.IsValid() {
		p.Transport.LocalAddress = n.LocalAddress.String()
	}
	if n.EBGPMultihopTTL != 0 {
		p.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(n.EBGPMultihopTTL)}
	}
	if n.TTLSecurityHops != 0 {
		// GTSM: a packet from h hops away arrives with TTL 256-h.
		p.TtlSecurity = &api.TtlSecurity{Enabled: true, TtlMin: uint32(256 - int(n.TTLSecurityHops))}
	}
	if n.RouteReflectorClient {
		p.RouteReflector = &api.RouteReflector{RouteReflectorClient: true}
		if n.RouteReflectorClusterID.IsValid() {
			p.RouteReflector.RouteReflectorClusterId = n.RouteReflectorClusterID.String()
		}
	}
	if n.GracefulRestart {
		rt := n.restartTime()
		deferral := cfg.DeferralTime
		if deferral == 0 {
			deferral = defaultDeferralTime
		}
		p.GracefulRestart = &api.GracefulRestart{
			Enabled:      true,
			RestartTime:  uint32(rt / time.Second),
			DeferralTime: uint32(deferral / time.Second),
			// With RFC 8538 a NOTIFICATION other than a Hard Reset (e.g. hold timer
			// expiry) keeps routes too, while our deconfiguration still flushes them.
			NotificationEnabled: true,
			LocalRestarting:     localRestarting,
		}
	}
	for _, f := range n.Families.api() {
		p.AfiSafis = append(p.AfiSafis, &api.AfiSafi{
			Config:            &api.AfiSafiConfig{Family: f, Enabled: true},
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: n.GracefulRestart}},
		})
	}
	return p
}
