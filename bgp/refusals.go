package bgp

import (
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// maxRefusals bounds the refusal table so a peer announcing endless junk cannot grow
// our memory; further (prefix, peer) pairs are only counted.
const maxRefusals = 4096

type refusalKey struct {
	prefix netip.Prefix
	peer   netip.Addr
}

// refusals remembers refused announcements and logs each (prefix, peer) once while it
// lasts: a refusal the peer withdraws, the filter comes to allow or whose peer is removed
// is forgotten, and logged again if it comes back.
type refusals struct {
	mu       sync.Mutex
	log      *slog.Logger
	entries  map[refusalKey]*Refusal
	dropped  uint64 // pairs not recorded because the table was full
	now      func() time.Time
	limitLog bool
}

func newRefusals(log *slog.Logger) *refusals {
	return &refusals{log: log, entries: map[refusalKey]*Refusal{}, now: time.Now}
}

// record notes one refused announcement.
func (r *refusals) record(prefix netip.Prefix, peer netip.Addr, reason string) {
	now := r.now()
	r.mu.Lock()
	k := refusalKey{prefix, peer}
	if e, ok := r.entries[k]; ok {
		e.Count++
		e.LastSeen = now
		e.Reason = reason
		r.mu.Unlock()
		return
	}
	if len(r.entries) >= maxRefusals {
		r.dropped++
		first := !r.limitLog
		r.limitLog = true
		r.mu.Unlock()
		if first {
			r.log.Warn("bgp: refusal table full, further refused routes are not recorded", "limit", maxRefusals)
		}
		return
	}
	r.entries[k] = &Refusal{Prefix: prefix, Peer: peer, Reason: reason, Count: 1, FirstSeen: now, LastSeen: now}
	r.mu.Unlock()
	r.log.Warn("bgp: refused route", "prefix", prefix, "peer", peer, "reason", reason)
}

// note records a refusal found by re-evaluating held paths: it creates the entry if
// missing (and logs it) but does not count it as another announcement.
func (r *refusals) note(prefix netip.Prefix, peer netip.Addr, reason string) {
	r.mu.Lock()
	if e, ok := r.entries[refusalKey{prefix, peer}]; ok {
		e.Reason = reason
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	r.record(prefix, peer, reason)
}

// forget drops the entry of a (prefix, peer), if any.
func (r *refusals) forget(prefix netip.Prefix, peer netip.Addr) {
	r.mu.Lock()
	delete(r.entries, refusalKey{prefix, peer})
	r.roomLocked()
	r.mu.Unlock()
}

// retain drops the entries that keep reports as no longer refused.
func (r *refusals) retain(keep func(prefix netip.Prefix, peer netip.Addr) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.entries {
		if !keep(k.prefix, k.peer) {
			delete(r.entries, k)
		}
	}
	r.roomLocked()
}

// roomLocked re-arms the warning about a full table once it has room again.
func (r *refusals) roomLocked() {
	if len(r.entries) < maxRefusals {
		r.limitLog = false
	}
}

func (r *refusals) list() []Refusal {
	r.mu.Lock()
	out := make([]Refusal, 0, len(r.entries))
	for _, e := range r.entries {
		out = append(out, *e)
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b Refusal) int {
		if c := a.Peer.Compare(b.Peer); c != 0 {
			return c
		}
		return comparePrefix(a.Prefix, b.Prefix)
	})
	return out
}
