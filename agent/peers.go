package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"

	"github.com/podroute/podroute/bgp"
)

// peers configures the speaker's neighbours: the node-to-node sessions (mesh or route
// reflection) and the BGPPeers that select this node. Only sessions whose configuration
// changed are touched: a Node joining adds one neighbour and leaves the others alone.
type peers struct {
	speaker *speaker
	log     *slog.Logger

	generation int
	applied    map[netip.Addr]peerSpec
}

func (p *peers) name() string { return "peers" }

func (p *peers) reconcile(ctx context.Context, d *desired) error {
	r, gen := p.speaker.current()
	if r == nil {
		return nil
	}
	if gen != p.generation || p.applied == nil {
		p.generation, p.applied = gen, map[netip.Addr]peerSpec{}
	}
	want := d.peers
	if !p.speaker.filterCurrent {
		// A new mesh peer must not come up before the filter restricting it to its own pod
		// CIDRs is in force: add it on a later pass.
		want = maps.Clone(want)
		maps.DeleteFunc(want, func(addr netip.Addr, _ peerSpec) bool { _, have := p.applied[addr]; return !have })
	}
	var errs []error
	for addr, ps := range want {
		old, exists := p.applied[addr]
		switch {
		case !exists:
			if err := r.AddNeighbor(ctx, ps.Neighbor); err != nil {
				errs = append(errs, fmt.Errorf("add neighbor %s (%s): %w", addr, ps.owner(), err))
				continue
			}
			p.log.Info("BGP neighbor added", "peer", addr, "node", ps.Node, "bgpPeer", ps.Peer, "asn", ps.Neighbor.ASN, "kind", ps.Neighbor.Kind)
		case !reflect.DeepEqual(old.Neighbor, ps.Neighbor):
			if err := r.UpdateNeighbor(ctx, ps.Neighbor); err != nil {
				errs = append(errs, fmt.Errorf("update neighbor %s (%s): %w", addr, ps.owner(), err))
				continue
			}
			p.log.Info("BGP neighbor updated", "peer", addr, "node", ps.Node, "bgpPeer", ps.Peer, "changed", changedFields(old.Neighbor, ps.Neighbor))
		}
		p.applied[addr] = ps
	}
	for addr, ps := range p.applied {
		if _, ok := d.peers[addr]; ok {
			continue
		}
		if err := r.RemoveNeighbor(ctx, addr); err != nil {
			errs = append(errs, fmt.Errorf("remove neighbor %s (%s): %w", addr, ps.owner(), err))
			continue
		}
		p.log.Info("BGP neighbor removed", "peer", addr, "node", ps.Node, "bgpPeer", ps.Peer)
		delete(p.applied, addr)
	}
	return errors.Join(errs...)
}

func (p *peers) report(s *snapshot) {
	s.Peers = maps.Clone(p.applied)
}

// owner names what a session is for: its Node or its BGPPeer.
func (ps peerSpec) owner() string {
	if ps.Peer != "" {
		return "BGPPeer " + ps.Peer
	}
	return "node " + ps.Node
}

// changedFields names the fields that differ between two neighbours (never their values: one
// may be a password).
func changedFields(a, b bgp.Neighbor) []string {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	var out []string
	for i := range va.NumField() {
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, va.Type().Field(i).Name)
		}
	}
	return out
}
