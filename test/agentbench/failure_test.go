package agentbench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podroute/podroute/test/lab"
)

// failureSetting is one set of BGP timer flags, given to every agent of the lab.
type failureSetting struct {
	key  string // for AGENTBENCH_FAILURE_SETTINGS and the metric names
	name string
	args []string
	// hold and restart bound the expected time: hold expiry, then (graceful restart
	// negotiated) the dead peer's restart time during which its routes are kept as stale.
	hold, restart time.Duration
}

// failureSettings run in this order; the slow one (graceful restart with the default
// restart time, over two minutes per repetition) last.
var failureSettings = []failureSetting{
	{
		key: "tuned-nogr", name: "tuned timers, graceful restart off",
		args: []string{"--hold-time", "3s", "--keepalive", "1s", "--graceful-restart=false", "--restart-time", "0s"},
		hold: 3 * time.Second,
	},
	{
		key: "tuned", name: "tuned timers, graceful restart on, short restart time",
		args: []string{"--hold-time", "3s", "--keepalive", "1s", "--graceful-restart=true", "--restart-time", "5s"},
		hold: 3 * time.Second, restart: 5 * time.Second,
	},
	{
		key: "default-nogr", name: "default timers, graceful restart off",
		args: []string{"--hold-time", "9s", "--keepalive", "3s", "--graceful-restart=false", "--restart-time", "0s"},
		hold: 9 * time.Second,
	},
	{
		key: "default", name: "agent defaults (graceful restart on)",
		args: []string{"--hold-time", "9s", "--keepalive", "3s", "--graceful-restart=true", "--restart-time", "120s"},
		hold: 9 * time.Second, restart: 120 * time.Second,
	},
}

// failureRound is one dead node, seen from the three survivors.
type failureRound struct {
	dead      time.Duration // failure started -> link down and agent gone (the failure's own length)
	holdFirst time.Duration // failure -> first survivor's hold timer expired (its log)
	holdLast  time.Duration // ... -> last survivor's
	goneFirst time.Duration // failure -> first of the dead node's routes gone from any survivor
	goneLast  time.Duration // failure -> its last route gone from the last survivor
	grLogged  int           // survivors that logged "peer graceful restart" for the dead node
}

// BenchmarkNodeFailure: a node dies as a machine does: its fabric switch port goes down
// (carrier loss), then its agent is SIGKILLed (the kill's FIN and RST never leave the
// namespace), then its uplink is set down. Nobody deletes its Node object. The clock starts
// when the port goes down and stops when the kernels of the three other nodes no longer
// route its pod CIDRs (protocol 201 deletions seen by a netlink subscription in each
// survivor's namespace). Each timer setting gets a lab of its own (three nodes) with the
// flags on every agent, and AGENTBENCH_FAILURE_REPS (default 5) victims, one after the
// other, each a fourth node that joins the mesh and then dies.
func BenchmarkNodeFailure(b *testing.B) {
	reps := envInt("AGENTBENCH_FAILURE_REPS", 5)
	want := map[string]bool{}
	for _, k := range strings.Split(os.Getenv("AGENTBENCH_FAILURE_SETTINGS"), ",") {
		if k = strings.TrimSpace(k); k != "" {
			want[k] = true
		}
	}
	load := header(b, "Node failure: a node dies, its routes leave the other nodes")
	type result struct {
		s      failureSetting
		rounds []failureRound
		load   [2]string
	}
	var results []result
	for _, s := range failureSettings {
		if len(want) > 0 && !want[s.key] {
			continue
		}
		r := result{s: s}
		r.load[0] = loadavg()
		r.rounds = failureSetting1(b, s, reps)
		r.load[1] = loadavg()
		results = append(results, r)
	}
	loadEnd := loadavg()

	sec := func(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()) }
	fmt.Printf("\n%d repetitions per setting, 3 surviving nodes, the failed node the 4th of a full mesh; seconds from the failure; load average %s at start, %s at end\n\n", reps, load, loadEnd)
	fmt.Println("| setting | agent flags (every node) | hold timer expired on the last survivor: median / worst | routes gone from every other node: median | worst | best | hold + restart time |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
	for _, r := range results {
		var hold, gone []time.Duration
		for _, x := range r.rounds {
			hold, gone = append(hold, x.holdLast), append(gone, x.goneLast)
		}
		bound := sec(r.s.hold)
		if r.s.restart > 0 {
			bound = fmt.Sprintf("%s + %s", sec(r.s.hold), sec(r.s.restart))
		}
		fmt.Printf("| %s | `%s` | %s / %s | **%s** | %s | %s | %s |\n", r.s.name, strings.Join(r.s.args, " "),
			sec(median(hold)), sec(pct(hold, 100)), sec(median(gone)), sec(pct(gone, 100)), sec(pct(gone, 0)), bound)
		b.ReportMetric(median(gone).Seconds(), r.s.key+"-median-s")
		b.ReportMetric(pct(gone, 100).Seconds(), r.s.key+"-worst-s")
	}
	fmt.Println()
	fmt.Println("Every repetition (seconds from the failure; the failure itself: port down, SIGKILL, uplink down):")
	fmt.Println()
	fmt.Println("| setting | rep | failure took | hold expired: first / last survivor | routes gone: first / last | survivors logging graceful restart | load average start -> end of setting |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, r := range results {
		for i, x := range r.rounds {
			fmt.Printf("| %s | %d | %s | %s / %s | %s / %s | %d | %s -> %s |\n", r.s.key, i+1, ms(x.dead)+" ms",
				sec(x.holdFirst), sec(x.holdLast), sec(x.goneFirst), sec(x.goneLast), x.grLogged, r.load[0], r.load[1])
		}
	}
}

// failureSetting1 builds a three-node lab with the setting's flags and kills reps fourth
// nodes in turn.
func failureSetting1(b *testing.B, s failureSetting, reps int) []failureRound {
	b.Helper()
	// Each setting's lab goes away before the next one starts.
	sc := newScope(b)
	defer sc.close()
	l := lab.New(sc, lab.Options{AgentArgs: s.args})
	var base []*lab.Node
	for i := 1; i <= 3; i++ {
		base = append(base, l.AddNode(sc, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i}))
	}
	for _, n := range base {
		ready(b, n)
	}
	meshed(b, base)
	watches := make([]*routeWatch, len(base))
	for i, n := range base {
		watches[i] = watchRoutes(sc, n.NetNS)
	}
	var out []failureRound
	for r := range reps {
		x := failOnce(b, sc, l, base, watches, s, r)
		fmt.Printf("%s, rep %d: failure took %s ms; hold timer expired %.2f s (first survivor %.2f s); routes gone from every other node %.2f s (first %.2f s); %d survivors logged graceful restart\n",
			s.key, r+1, ms(x.dead), x.holdLast.Seconds(), x.holdFirst.Seconds(), x.goneLast.Seconds(), x.goneFirst.Seconds(), x.grLogged)
		out = append(out, x)
	}
	return out
}

func failOnce(b *testing.B, sc *scope, l *lab.Lab, base []*lab.Node, watches []*routeWatch, s failureSetting, r int) failureRound {
	b.Helper()
	v := l.AddNode(sc, fmt.Sprintf("victim-%d", r+1), lab.NodeOptions{Index: 4 + r})
	ready(b, v)
	meshed(b, append(slices.Clone(base), v))
	// A few keepalives on the new sessions, so the failure lands at any point of the
	// keepalive cycle rather than right after the OPEN exchange.
	time.Sleep(2*time.Second + time.Duration(r)*700*time.Millisecond)
	offs := make([]int64, len(base))
	for i, n := range base {
		offs[i] = n.Agent.LogSize()
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.hold+s.restart+converge)
	defer cancel()

	// The machine dies: the switch port first, so nothing the dying kernel sends (the
	// FIN or RST of the killed agent's sessions) reaches the fabric.
	t0 := time.Now()
	if err := v.FabricPort(false); err != nil {
		b.Fatal(err)
	}
	if err := v.Agent.Kill(); err != nil {
		b.Fatal(err)
	}
	if err := v.Uplink(false); err != nil {
		b.Fatal(err)
	}
	var x failureRound
	x.dead = time.Since(t0)

	var first, last time.Time
	for i, w := range watches {
		for _, p := range v.PodCIDRs {
			at, err := w.routeDeleted(ctx, t0, p)
			if err != nil {
				b.Fatalf("%s: %s still on %s %v after the failure: %v\nagent log of %s:\n%s", s.key, p, base[i].Name, time.Since(t0), err,
					base[i].Name, tail(base[i].Agent.LogSince(offs[i]), 40))
			}
			if at.After(last) {
				last = at
			}
			if first.IsZero() || at.Before(first) {
				first = at
			}
		}
	}
	x.goneFirst, x.goneLast = first.Sub(t0), last.Sub(t0)
	for _, o := range base {
		for _, p := range v.PodCIDRs {
			if err := o.NoRoute(p); err != nil {
				b.Fatal(err)
			}
		}
	}
	var hFirst, hLast time.Time
	for i, n := range base {
		log := n.Agent.LogSince(offs[i])
		at := peerLogTime(log, "hold timer expired", v.IPv4.String())
		if at.IsZero() {
			b.Fatalf("%s: %s logged no hold timer expiry for %s:\n%s", s.key, n.Name, v.IPv4, tail(log, 40))
		}
		if at.After(hLast) {
			hLast = at
		}
		if hFirst.IsZero() || at.Before(hFirst) {
			hFirst = at
		}
		if !peerLogTime(log, "peer graceful restart", v.IPv4.String()).IsZero() {
			x.grLogged++
		}
	}
	x.holdFirst, x.holdLast = hFirst.Sub(t0), hLast.Sub(t0)
	if err := v.Remove(); err != nil {
		b.Fatal(err)
	}
	return x
}

// scope is the benchmark as a testing.TB whose cleanups run when close is called (or at the
// end of the benchmark, if it stops first): one lab after another in one benchmark.
type scope struct {
	testing.TB
	mu  sync.Mutex
	fns []func()
}

func newScope(b *testing.B) *scope {
	s := &scope{TB: b}
	b.Cleanup(s.close)
	return s
}

func (s *scope) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fns = append(s.fns, f)
}

// close runs the cleanups registered so far, last first.
func (s *scope) close() {
	for {
		s.mu.Lock()
		if len(s.fns) == 0 {
			s.mu.Unlock()
			return
		}
		f := s.fns[len(s.fns)-1]
		s.fns = s.fns[:len(s.fns)-1]
		s.mu.Unlock()
		f()
	}
}

// peerLogTime is the time of the first JSON log line with message msg about GoBGP peer key
// (its "Key" field), or zero.
func peerLogTime(log, msg, key string) time.Time {
	for _, l := range strings.Split(log, "\n") {
		if !strings.HasPrefix(l, "{") || !strings.Contains(l, msg) {
			continue
		}
		var e struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
			Key  string    `json:"Key"`
		}
		if json.Unmarshal([]byte(l), &e) == nil && e.Msg == msg && e.Key == key {
			return e.Time
		}
	}
	return time.Time{}
}
