package agentbench

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/podroute/podroute/test/lab"
)

// convergenceMode is how a new node comes up.
type convergenceMode struct {
	name string
	// agentFirst: the node's agent runs (and has synced its Node watch) before the Node object
	// is created; otherwise the Node object is created, then the agent is started.
	agentFirst bool
}

var convergenceModes = []convergenceMode{
	{"agent running, then Node object", true},
	{"Node object, then agent start", false},
}

type convergenceRound struct {
	add      time.Duration // Node object created -> last of its routes on the last other node
	addFirst time.Duration // ... -> first of its routes on any other node
	learn    time.Duration // Node object created -> the new node routes every other node
	del      time.Duration // Node object deleted -> last of its routes gone from the last node
}

// BenchmarkNodeConvergence: with three running nodes, a fourth node joins N times (each
// round a new node, once per mode) and leaves again by deletion of its Node object. Times are
// taken from the kernel's own route change notifications in every node's namespace, against
// the moment the Node object was created or deleted through the API.
func BenchmarkNodeConvergence(b *testing.B) {
	rounds := envInt("AGENTBENCH_NODES", 10)
	load := header(b, "Node convergence")
	l := lab.New(b, lab.Options{})
	var base []*lab.Node
	for i := 1; i <= 3; i++ {
		base = append(base, l.AddNode(b, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i}))
	}
	for _, n := range base {
		ready(b, n)
	}
	meshed(b, base)
	watches := make([]*routeWatch, len(base))
	for i, n := range base {
		watches[i] = watchRoutes(b, n.NetNS)
	}

	results := map[string][]convergenceRound{}
	index := 4
	for r := range rounds {
		for _, m := range convergenceModes {
			res := convergeOnce(b, l, base, watches, fmt.Sprintf("join-%d-%d", r, index), index, m)
			index++
			results[m.name] = append(results[m.name], res)
			fmt.Printf("round %d, %s: routed everywhere %s ms (first %s ms), new node routes the others %s ms, removed everywhere %s ms\n",
				r+1, m.name, ms(res.add), ms(res.addFirst), ms(res.learn), ms(res.del))
		}
	}
	loadEnd := loadavg()

	fmt.Printf("\n%d rounds per mode, 3 running nodes, hold time 3 s, keepalive 1 s, connect retry 5 s; milliseconds; load average %s at start, %s at end\n\n", rounds, load, loadEnd)
	fmt.Println("| mode | measure | median | worst | best |")
	fmt.Println("| --- | --- | ---: | ---: | ---: |")
	for _, m := range convergenceModes {
		rs := results[m.name]
		row := func(what string, get func(convergenceRound) time.Duration) {
			var ds []time.Duration
			for _, r := range rs {
				ds = append(ds, get(r))
			}
			fmt.Printf("| %s | %s | %s | %s | %s |\n", m.name, what, ms(median(ds)), ms(pct(ds, 100)), ms(pct(ds, 0)))
		}
		row("Node created -> its routes on every other node", func(r convergenceRound) time.Duration { return r.add })
		row("Node created -> its first route on any node", func(r convergenceRound) time.Duration { return r.addFirst })
		row("Node created -> new node routes every other node", func(r convergenceRound) time.Duration { return r.learn })
		row("Node deleted -> its routes gone from every node", func(r convergenceRound) time.Duration { return r.del })
	}
	var adds, dels []time.Duration
	for _, r := range results[convergenceModes[0].name] {
		adds, dels = append(adds, r.add), append(dels, r.del)
	}
	b.ReportMetric(float64(median(adds))/1e6, "add-median-ms")
	b.ReportMetric(float64(pct(adds, 100))/1e6, "add-worst-ms")
	b.ReportMetric(float64(median(dels))/1e6, "del-median-ms")
	b.ReportMetric(float64(pct(dels, 100))/1e6, "del-worst-ms")
}

func convergeOnce(b *testing.B, l *lab.Lab, base []*lab.Node, watches []*routeWatch, name string, index int, m convergenceMode) convergenceRound {
	b.Helper()
	n := l.AddNode(b, name, lab.NodeOptions{Index: index, NoNodeObject: true, NoAgent: !m.agentFirst})
	own := watchRoutes(b, n.NetNS)
	if m.agentFirst {
		// The agent answers podroutectl once it runs; it says why it is not ready (no Node
		// object) once its Node watch has synced.
		lab.Eventually(b, converge, name+" agent waiting for its Node", func() error {
			st, err := n.Status()
			if err != nil {
				return err
			}
			if !strings.Contains(strings.Join(st.NotReadyReasons, " "), "no such Node") {
				return fmt.Errorf("%s: not yet waiting for its Node object: %v", name, st.NotReadyReasons)
			}
			return nil
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), converge)
	defer cancel()

	t0 := time.Now()
	if err := n.CreateNodeObject(); err != nil {
		b.Fatal(err)
	}
	if !m.agentFirst {
		if err := n.Agent.Start(); err != nil {
			b.Fatal(err)
		}
	}
	var res convergenceRound
	var last, first time.Time
	for i, w := range watches {
		for _, p := range n.PodCIDRs {
			at, err := w.routeAdded(ctx, t0, p)
			if err != nil {
				b.Fatalf("%s: %s on %s: %v\nagent log of %s:\n%s", name, p, base[i].Name, err, name, n.Agent.Log())
			}
			if at.After(last) {
				last = at
			}
			if first.IsZero() || at.Before(first) {
				first = at
			}
		}
	}
	res.add, res.addFirst = last.Sub(t0), first.Sub(t0)
	var learned time.Time
	for _, o := range base {
		for _, p := range o.PodCIDRs {
			at, err := own.routeAdded(ctx, t0, p)
			if err != nil {
				b.Fatalf("%s: route to %s: %v", name, p, err)
			}
			if at.After(learned) {
				learned = at
			}
		}
	}
	res.learn = learned.Sub(t0)
	// The kernel says so; check the routes are the right ones.
	for _, o := range base {
		for _, p := range n.PodCIDRs {
			via := n.IPv4
			if p.Addr().Is6() {
				via = n.IPv6
			}
			if err := o.RouteVia(p, via); err != nil {
				b.Fatal(err)
			}
		}
	}

	t1 := time.Now()
	if err := n.DeleteNodeObject(); err != nil {
		b.Fatal(err)
	}
	var gone time.Time
	for i, w := range watches {
		for _, p := range n.PodCIDRs {
			at, err := w.routeDeleted(ctx, t1, p)
			if err != nil {
				b.Fatalf("%s: %s still on %s: %v", name, p, base[i].Name, err)
			}
			if at.After(gone) {
				gone = at
			}
		}
	}
	res.del = gone.Sub(t1)
	for _, o := range base {
		for _, p := range n.PodCIDRs {
			if err := o.NoRoute(p); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := n.Remove(); err != nil {
		b.Fatal(err)
	}
	// The next round starts from the converged three-node mesh.
	meshed(b, base)
	return res
}
