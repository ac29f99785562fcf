// BFD beside the BGP sessions: podroute's own sessions (package bfd), and what their
// changes mean for BGP.

package bgp

import (
	"context"
	"net/netip"
	"time"

	api "github.com/osrg/gobgp/v4/api"

	"github.com/podroute/podroute/bfd"
)

// adminDownDelay separates cutting the BGP sessions from sending BFD AdminDown on a stop
// for a restart, so a peer has seen its BGP session fail (and begun graceful restart)
// before its BFD session goes down. FRR's bgpd hears of the two separately (the TCP
// connection itself, the BFD state from bfdd), and keeps the routes only when BFD goes
// down during the restart.
const adminDownDelay = 100 * time.Millisecond

func (r *router) newBFD() *bfd.Server {
	return bfd.New(bfd.Config{
		Listen:   r.cfg.ListenAddresses,
		Logger:   r.log,
		OnChange: func(ev bfd.Event) { go r.onBFD(ev) },
	})
}

// setBFD retunes or ends the neighbour's BFD session as n asks, and starts it if the BGP
// session is established (else startBFD does once it is).
func (r *router) setBFD(ctx context.Context, n Neighbor) {
	if n.BFD == nil {
		r.bfd.Remove(n.Address)
		return
	}
	if _, running := r.bfd.Status(n.Address); !running {
		established := false
		_ = r.srv.ListPeer(ctx, &api.ListPeerRequest{Address: n.Address.String()}, func(p *api.Peer) {
			established = p.GetState().GetSessionState() == api.PeerState_SESSION_STATE_ESTABLISHED
		})
		if !established {
			return
		}
	}
	r.runBFD(n)
}

// startBFD starts the BFD session of a neighbour whose BGP session was just established,
// if it asks for one. BFD starts with BGP, not before: FRR creates its session anew once
// BGP is up (with the session's source address), and one that was already up would go
// down, which FRR takes for a failure and resets the BGP session.
func (r *router) startBFD(addr netip.Addr) {
	r.mu.Lock()
	n, ok := r.neighbors[addr]
	r.mu.Unlock()
	if !ok || n.BFD == nil || r.running() != nil {
		return
	}
	if _, running := r.bfd.Status(addr); running {
		return
	}
	r.runBFD(n)
}

// runBFD runs or retunes the session. One that cannot start (no socket) leaves the
// neighbour without BFD, as a problem on the peer.
func (r *router) runBFD(n Neighbor) {
	t := bfd.Timers{MinTx: n.BFD.MinTx, MinRx: n.BFD.MinRx, Multiplier: uint8(n.BFD.Multiplier)}
	if err := r.bfd.Set(n.Address, n.LocalAddress, t); err != nil {
		r.notePeerProblem(n.Address.String(), "BFD not running: "+err.Error(), nil)
		r.log.Warn("bgp: BFD not running", "peer", n.Address, "err", err)
	}
}

// onBFD decides what a BFD change means for the BGP session, the point of running BFD
// ourselves:
//
//   - Up to Down while the BGP session is established: the path or the peer is dead (its
//     kernel would otherwise have closed the TCP connection). The session is reset at
//     once, with a NOTIFICATION, so its routes go now instead of at hold-time expiry or
//     after a graceful restart's restart time.
//   - Up to Down while the BGP session is not established: the peer's kernel closed the
//     connection first, so the node is alive and its agent is restarting or crashed.
//     Graceful restart keeps its routes; the peer's BFD, run by that agent, went with it.
//   - The peer's AdminDown: it stopped on purpose (RFC 5880 section 6.8.6, RFC 5882
//     section 3.2), and its BGP session tells the rest. Likewise a Down from the peer
//     without a failure diagnostic: its session started over.
func (r *router) onBFD(ev bfd.Event) {
	defer r.notify()
	if ev.Previous != bfd.StateUp || ev.State != bfd.StateDown {
		return
	}
	log := r.log.With("peer", ev.Peer, "diag", ev.Diag.String(), "peerDiag", ev.RemoteDiag.String())
	switch {
	case ev.RemoteState == bfd.StateAdminDown:
		log.Info("bgp: the peer took BFD down on purpose (AdminDown): not a failure")
		return
	case ev.Diag == bfd.DiagNeighborDown && !ev.RemoteDiag.Failure():
		// The peer's session said Down without a failure: it was created anew (FRR
		// re-creates it with the source address once BGP is up). It comes back up within
		// a round trip; resetting BGP for it would flap every new session.
		log.Info("bgp: the peer's BFD session started over: not a failure")
		return
	}
	if r.running() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	state := StateIdle
	err := r.srv.ListPeer(ctx, &api.ListPeerRequest{Address: ev.Peer.String()}, func(p *api.Peer) {
		if s, ok := sessionStates[p.GetState().GetSessionState()]; ok {
			state = s
		}
	})
	if err != nil {
		log.Warn("bgp: BFD down, BGP session state unknown", "err", err)
		return
	}
	if state != StateEstablished {
		log.Info("bgp: BFD down while the BGP session is not established: the peer's agent is restarting, graceful restart keeps its routes", "session", state)
		return
	}
	// The session is established, so GoBGP sends the NOTIFICATION now and drops the
	// peer's routes for having sent one. (GoBGP queues a NOTIFICATION for a session that
	// is not established and sends it on the next one: one failing between these two
	// calls would be reset once it is back. The window is the two calls, against the
	// detection time between a live kernel's closing of the connection and BFD's expiry.)
	err = r.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: ev.Peer.String(), Communication: "BFD down: " + ev.Diag.String()})
	if err != nil {
		log.Warn("bgp: BFD down, BGP session reset failed", "err", err)
		return
	}
	r.notePeerProblem(ev.Peer.String(), "BFD down ("+ev.Diag.String()+"): session reset", nil)
	log.Warn("bgp: BFD down: BGP session reset, the peer's routes withdrawn")
}

// bfdState is the neighbour's BFD session state for PeerState.
func (r *router) bfdState(addr netip.Addr) (string, uint64) {
	st, ok := r.bfd.Status(addr)
	if !ok {
		return BFDStateDown, 0
	}
	switch st.State {
	case bfd.StateUp:
		return BFDStateUp, st.Flaps
	case bfd.StateInit:
		return BFDStateInit, st.Flaps
	case bfd.StateAdminDown:
		return BFDStateAdminDown, st.Flaps
	}
	return BFDStateDown, st.Flaps
}
