// BFD beside the BGP sessions: podroute's own sessions (package bfd), and what their
// changes mean for BGP.

package bgp

import (
	"context"
	"fmt"
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

// restartSilence is how long a peer whose agent is restarting (its kernel closed the BGP
// session, then its BFD went quiet) may go without a sign of its host before it is taken
// for dead after all and its routes are withdrawn. A live host is heard about once a
// second: its kernel refuses our BFD packets (one a second while the session is down)
// with ICMP port unreachable while nothing listens, then its new agent answers.
const restartSilence = 5 * time.Second

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
	// Under opMu, so a neighbour being removed or changed is not given a session after.
	r.opMu.Lock()
	defer r.opMu.Unlock()
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
		r.watchRestart(ev.Peer)
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

// watchRestart follows a peer kept under graceful restart after its BFD went down, until
// its BGP or BFD session is back: if its host goes silent for restartSilence (it died while
// its agent was restarting), its routes are withdrawn then, not after the restart time.
func (r *router) watchRestart(addr netip.Addr) {
	r.mu.Lock()
	n, ok := r.neighbors[addr]
	if !ok || r.watching[addr] {
		r.mu.Unlock()
		return
	}
	r.watching[addr] = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.watching, addr)
		r.mu.Unlock()
	}()
	until := time.Now().Add(n.restartTime())
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for time.Now().Before(until) {
		select {
		case <-r.done:
			return
		case <-tick.C:
		}
		st, ok := r.bfd.Status(addr)
		if !ok || st.State == bfd.StateUp {
			return
		}
		if time.Since(st.LastHeard) < restartSilence {
			continue
		}
		if err := r.flushRestarting(addr); err != nil {
			r.log.Warn("bgp: peer's host silent during its restart: withdrawing its routes failed", "peer", addr, "err", err)
		}
		return
	}
}

// flushRestarting withdraws the routes of a peer under graceful restart, unless its
// session came back meanwhile: GoBGP drops a peer's routes when the peer is deconfigured,
// and the peer is configured again at once, to be dialled and accepted as before.
func (r *router) flushRestarting(addr netip.Addr) error {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.running(); err != nil {
		return nil
	}
	r.mu.Lock()
	n, ok := r.neighbors[addr]
	r.mu.Unlock()
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	established := false
	err := r.srv.ListPeer(ctx, &api.ListPeerRequest{Address: addr.String()}, func(p *api.Peer) {
		established = p.GetState().GetSessionState() == api.PeerState_SESSION_STATE_ESTABLISHED
	})
	if err != nil || established {
		return err
	}
	if err := r.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
		return fmt.Errorf("deconfigure: %w", err)
	}
	if err := r.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: n.toAPI(&r.cfg, r.localRestarting(n))}); err != nil {
		return fmt.Errorf("configure again: %w", err)
	}
	r.notePeerProblem(addr.String(), fmt.Sprintf("host silent for %s while its agent restarted: routes withdrawn", restartSilence), nil)
	r.log.Warn("bgp: peer's host silent while its agent restarted: taken for dead, its routes withdrawn", "peer", addr, "silentFor", restartSilence)
	return nil
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
