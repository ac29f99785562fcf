package bgp

import (
	"context"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
)

// BenchmarkReflectorNeighbors counts the policy work a route reflector does per node joining:
// one speaker (no listener) gets BGP_BENCH_NEIGHBORS (default 1000) route-reflector clients,
// each as the agent adds a node: AddNeighbor, then the import filter with the node's entry
// (its pod CIDR). The clients are passive and never connect, so the figures are the
// speaker's own work, not the sessions'. Reported per neighbour added, on average and for the
// last one (the work at the full size):
//
//   - policy-resets: GoBGP's "call set policy", logged once per configured peer each time
//     the whole routing policy is replaced (SetPolicies);
//   - soft-resets-in: neighbours whose received paths the import filter re-judged.
//
// The counts need no timing; ns/op is the whole run.
func BenchmarkReflectorNeighbors(b *testing.B) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("BGP_BENCH_NEIGHBORS")); err == nil && v > 0 && v < 65536 {
		n = v
	}
	ctx := context.Background()
	filter := ImportFilter{
		ClusterCIDRs: []netip.Prefix{pfx("10.0.0.0/8")},
		MaxLenIPv4:   24,
		PeerPrefixes: map[netip.Addr][]netip.Prefix{},
	}
	for b.Loop() {
		var resets atomic.Uint64
		r, err := New(Config{
			ASN:          testASN,
			RouterID:     addr("127.0.60.1"),
			ListenPort:   -1,
			ImportFilter: filter,
			Logger:       slog.New(&countHandler{msg: "call set policy", n: &resets}),
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Start(ctx); err != nil {
			b.Fatal(err)
		}
		f := filter
		f.PeerPrefixes = maps.Clone(filter.PeerPrefixes)
		softResets := func() uint64 { return r.(*router).filterResets.Load() }
		var lastPolicy, lastSoft uint64
		for i := range n {
			a := netip.AddrFrom4([4]byte{127, 61, byte(i >> 8), byte(i)})
			p0, s0 := resets.Load(), softResets()
			err := r.AddNeighbor(ctx, Neighbor{
				Address:              a,
				ASN:                  testASN,
				Passive:              true,
				RouteReflectorClient: true,
				Kind:                 KindReflectorClient,
			})
			if err != nil {
				b.Fatal(err)
			}
			f.PeerPrefixes[a] = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)}
			if err := r.UpdateImportFilter(ctx, f); err != nil {
				b.Fatal(err)
			}
			lastPolicy, lastSoft = resets.Load()-p0, softResets()-s0
		}
		b.ReportMetric(float64(resets.Load())/float64(n), "policy-resets/neighbor")
		b.ReportMetric(float64(lastPolicy), "policy-resets/last-neighbor")
		b.ReportMetric(float64(softResets())/float64(n), "soft-resets-in/neighbor")
		b.ReportMetric(float64(lastSoft), "soft-resets-in/last-neighbor")
		if err := r.Stop(false); err != nil {
			b.Fatal(err)
		}
	}
}

// countHandler counts the log records with message msg and drops every record.
type countHandler struct {
	msg string
	n   *atomic.Uint64
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }
