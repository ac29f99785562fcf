package agent

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// BenchmarkNodeEvent: the agent's own cost of a Node joining and leaving a full mesh of N
// nodes, on fakes for the speaker and the kernel (so GoBGP's and the kernel's share is not in
// it; test/agentbench measures the whole). Each iteration is one join pass and one leave pass.
// It reports the time of a pass for an event against a pass with nothing changed, in the same
// run (the ratio is what a Node event costs above the pass's fixed cost), and the speaker
// calls and kernel route changes per event, which must not grow with N.
//
//	go test -run '^$' -bench NodeEvent ./agent/
func BenchmarkNodeEvent(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			nodes := meshNodes(n)
			r := newRig(b, nodes, newFakeTable(), false)
			r.pass(b)
			fr := r.router()
			joined := append(meshNodes(n), meshNode(n+1))
			fr.resetCalls()
			r.table.calls = ops{}

			var event, idle time.Duration
			b.ResetTimer()
			for range b.N {
				r.nodes.set(joined)
				fr.learned = append(fr.learned[:0], learnedFrom(joined[n]))
				t0 := time.Now()
				r.pass(b)
				t1 := time.Now()
				r.pass(b) // nothing changed
				t2 := time.Now()
				r.nodes.set(nodes)
				fr.learned = fr.learned[:0]
				r.pass(b)
				t3 := time.Now()
				event += t1.Sub(t0) + t3.Sub(t2)
				idle += t2.Sub(t1)
			}
			b.StopTimer()
			calls := fr.resetCalls()
			events := float64(2 * b.N)
			b.ReportMetric(float64(event.Microseconds())/events, "µs/event-pass")
			b.ReportMetric(float64(idle.Microseconds())/float64(b.N), "µs/idle-pass")
			b.ReportMetric(float64(event)/events/(float64(idle)/float64(b.N)), "event/idle")
			b.ReportMetric(float64(calls.total())/events, "speaker-calls/event")
			b.ReportMetric(float64(r.table.calls.total())/events, "route-changes/event")
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MiB")
		})
	}
}
