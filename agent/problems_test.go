package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
)

// TestProblemLog: a problem is logged once however many passes report it, forgotten when a
// pass no longer reports it, and logged again when it comes back; kinds are independent.
func TestProblemLog(t *testing.T) {
	logs := &syncBuffer{}
	l := newProblemLog(slog.New(slog.NewJSONHandler(logs, nil)))
	peers := func(ps ...string) { l.set("peer", ps, "peer left out", "reason") }
	self := func(err error) {
		l.setErr("self", err, "this node cannot be fully served yet", "reason", "node", "node-1")
	}
	said := func(msg, attr string) []string {
		var out []string
		for _, rec := range logs.lines(t, msg) {
			out = append(out, fmt.Sprint(rec[attr]))
		}
		return out
	}

	peers("a", "b")
	peers("b", "a", "a")
	peers("a") // b cleared
	peers("a", "b")
	peers()
	peers()
	peers("a")
	if got, want := said("peer left out", "reason"), []string{"a", "b", "b", "a"}; !slices.Equal(got, want) {
		t.Errorf("peer problems logged %q, want %q", got, want)
	}

	noPodCIDR := errors.New("node node-1: no podCIDR assigned")
	self(noPodCIDR)
	peers() // another kind clearing does not clear this one
	self(noPodCIDR)
	self(nil)
	self(nil)
	self(noPodCIDR)
	recs := logs.lines(t, "this node cannot be fully served yet")
	if len(recs) != 2 {
		t.Fatalf("logged %d times, want twice (once, then again after it cleared): %v", len(recs), recs)
	}
	for _, rec := range recs {
		if rec["level"] != "WARN" || rec["node"] != "node-1" || rec["reason"] != noPodCIDR.Error() {
			t.Errorf("record %v, want a warning with node node-1 and the reason", rec)
		}
	}
	peers("a") // cleared by the empty report above
	if got, want := said("peer left out", "reason"), []string{"a", "b", "b", "a", "a"}; !slices.Equal(got, want) {
		t.Errorf("peer problems logged %q, want %q", got, want)
	}
}
