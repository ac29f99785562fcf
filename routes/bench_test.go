package routes

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"
)

// routes10k is a realistic agent set: 10,000 /24s (about 10,000 nodes' pod CIDRs), every
// fourth one ECMP over two peers, plus a few hundred IPv6 /64s.
func routes10k() []Route {
	out := make([]Route, 0, 10000)
	for i := range 9500 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		r := Route{Prefix: p, NextHops: []NextHop{{Gateway: gwA}}}
		if i%4 == 0 {
			r.NextHops = append(r.NextHops, NextHop{Gateway: gwB})
		}
		out = append(out, r)
	}
	for i := range 500 {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x02, 0x44, byte(i >> 8), byte(i)})
		out = append(out, Route{Prefix: netip.PrefixFrom(a, 64), NextHops: []NextHop{{Gateway: gw6A}}})
	}
	return out
}

func benchReconciler(b *testing.B) *Reconciler {
	l := newLab(b)
	return l.reconciler(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

// BenchmarkReconcile10k installs 10,000 routes into an empty table in one Reconcile.
func BenchmarkReconcile10k(b *testing.B) {
	r := benchReconciler(b)
	desired := routes10k()
	for b.Loop() {
		b.StopTimer()
		reconcile(b, r) // flush the previous round
		b.StartTimer()
		res := reconcile(b, r, desired...)
		if res.Added != len(desired) || len(res.Errors) != 0 {
			b.Fatalf("added %d of %d: %v", res.Added, len(desired), res.Err())
		}
	}
}

// BenchmarkReconcile10kUnchanged is the steady state: 10,000 routes already in place.
func BenchmarkReconcile10kUnchanged(b *testing.B) {
	r := benchReconciler(b)
	desired := routes10k()
	reconcile(b, r, desired...)
	for b.Loop() {
		if res := reconcile(b, r, desired...); res.Unchanged != len(desired) {
			b.Fatalf("unchanged %d of %d", res.Unchanged, len(desired))
		}
	}
}

// BenchmarkReconcile10kRemove withdraws 10,000 routes in one Reconcile.
func BenchmarkReconcile10kRemove(b *testing.B) {
	r := benchReconciler(b)
	desired := routes10k()
	for b.Loop() {
		b.StopTimer()
		reconcile(b, r, desired...)
		b.StartTimer()
		if res := reconcile(b, r); res.Removed != len(desired) {
			b.Fatalf("removed %d of %d", res.Removed, len(desired))
		}
	}
}
