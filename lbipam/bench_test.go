package lbipam

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BenchmarkAllocator measures, for 5,000 dual-stack Services over a /16 and an IPv6 /112:
// the first allocation of every Service, a steady-state pass (what the controller does on
// every change: Assign for each Service, nothing moves) and a restore (what a new leader
// does). The baseline, timed in the same run, is the least bookkeeping conceivable: one
// map insert per address handed out in order.
func BenchmarkAllocator(b *testing.B) {
	const n = 5000
	pool, errs := (&LoadBalancerIPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: PoolSpec{Addresses: []string{"10.200.0.0/16", "2001:db8:1b::/112"}}}).Parse()
	if len(errs) != 0 {
		b.Fatal(errs)
	}
	reqs := make([]Request, n)
	for i := range reqs {
		reqs[i] = Request{Key: fmt.Sprintf("ns/svc-%04d", i), Families: []bool{false, true}, Policy: RequireDualStack, Ports: []Port{{"TCP", 80}}}
	}
	var first, steady, restore, base time.Duration
	for b.Loop() {
		t0 := time.Now()
		a := NewAllocator()
		a.SetPools([]Pool{pool})
		for _, r := range reqs {
			if _, err := a.Assign(r); err != nil {
				b.Fatal(err)
			}
		}
		t1 := time.Now()
		for _, r := range reqs {
			if _, err := a.Assign(r); err != nil {
				b.Fatal(err)
			}
		}
		t2 := time.Now()
		r2 := NewAllocator()
		r2.SetPools([]Pool{pool})
		for _, r := range reqs {
			if err := r2.Restore(r, a.Assigned(r.Key)); err != nil {
				b.Fatal(err)
			}
		}
		t3 := time.Now()
		m := map[netip.Addr]string{}
		ip4, ip6 := pool.Ranges[0].First, pool.Ranges[1].First
		for _, r := range reqs {
			m[ip4], m[ip6] = r.Key, r.Key
			ip4, ip6 = ip4.Next(), ip6.Next()
		}
		t4 := time.Now()
		first += t1.Sub(t0)
		steady += t2.Sub(t1)
		restore += t3.Sub(t2)
		base += t4.Sub(t3)
	}
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) / 1000 }
	b.ReportMetric(per(first), "first-ms/op")
	b.ReportMetric(per(steady), "steady-ms/op")
	b.ReportMetric(per(restore), "restore-ms/op")
	b.ReportMetric(per(base), "baseline-ms/op")
	b.ReportMetric(float64(first)/float64(base), "first/baseline")
	b.ReportMetric(float64(steady)/float64(base), "steady/baseline")
}
