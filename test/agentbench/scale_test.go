package agentbench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podroute/podroute/test/lab"
)

// scaleCluster: a /8 cluster CIDR with /24 node CIDRs, so that 10,000 /24s pass the import
// filter. The generated prefixes (10.0.0.0/24 up) stay clear of the nodes' own
// (10.244.i.0/24).
var (
	scaleClusterV4 = netip.MustParsePrefix("10.0.0.0/8")
	scaleFirst     = netip.MustParsePrefix("10.0.0.0/24")
)

// BenchmarkRouteScale: a BGP speaker (GoBGP, its own process in its own namespace on the
// fabric) holds 10,000 /24s in its table before any session exists, so the session's
// initial UPDATEs carry them all, and one node learns them. Measured: session established
// (the speaker's clock) -> 10,000th route in the node's kernel (the kernel's route
// notifications); the receiving process's RSS before and after; the speaker stopping -> all
// routes gone. Baseline: `ip -batch` adding, then deleting, the same 10,000 routes in an
// empty namespace.
//
// Two receivers:
//
//   - agent: podroute-agent itself, the speaker being a Node object (so a mesh peer). An agent
//     that accepts from a mesh peer only that Node's own pod CIDRs refuses the 10,000
//     prefixes: the sub-benchmark then stops and says so.
//   - engine: the agent's BGP speaker and route reconciler wired as the agent wires them, in
//     their own process in the node's namespace, the speaker being an external (non-mesh)
//     neighbor, like a top-of-rack router (see startEngine).
func BenchmarkRouteScale(b *testing.B) {
	b.Run("agent", func(b *testing.B) { benchRouteScale(b, false) })
	b.Run("engine", func(b *testing.B) { benchRouteScale(b, true) })
}

func benchRouteScale(b *testing.B, useEngine bool) {
	count := envInt("AGENTBENCH_ROUTES", 10000)
	receiver := "podroute-agent, speaker as a mesh peer (Node object)"
	if useEngine {
		receiver = "route engine (bgp.Router + routes.Reconciler), speaker as an external peer"
	}
	load := header(b, fmt.Sprintf("Route installation at scale (%d prefixes): %s", count, receiver))
	cluster := []netip.Prefix{scaleClusterV4, lab.DefaultClusterV6}
	l := lab.New(b, lab.Options{ClusterCIDRs: cluster})
	const speakerIndex = 99
	speakerIP := netip.AddrFrom4([4]byte{192, 0, 2, speakerIndex})
	var n *lab.Node
	var pid int
	var logOf func() string
	if useEngine {
		n = l.AddNode(b, "node-1", lab.NodeOptions{Index: 1, NoAgent: true})
		e := startEngine(b, n, speakerIP, 64512, cluster)
		pid, logOf = e.cmd.Process.Pid, e.Log
	} else {
		n = l.AddNode(b, "node-1", lab.NodeOptions{Index: 1})
		ready(b, n)
		pid, logOf = n.Agent.PID(), n.Agent.Log
	}
	rss0, hwm0, err := rssKiB(pid)
	if err != nil {
		b.Fatal(err)
	}
	var m0 reconcileSums
	if !useEngine {
		m0 = reconcileMetrics(b, n)
	}
	w := watchRoutes(b, n.NetNS)
	logOff := len(logOf())

	ctx, cancel := context.WithTimeout(context.Background(), 5*converge)
	defer cancel()
	gen := lab.PrefixRange{First: scaleFirst, Count: count}
	want := map[netip.Prefix]bool{}
	for _, p := range gen.Prefixes() {
		want[p] = true
	}
	t0 := time.Now()
	sp := l.StartRogue(b, lab.RogueOptions{Name: "speaker", Index: speakerIndex, Peers: []*lab.Node{n}, Generate: gen, LogPeerEvents: true})
	if !useEngine {
		// Stop early if the agent refuses the speaker's prefixes.
		go func() {
			for ctx.Err() == nil {
				if agentMetric(n, "podroute_bgp_refused_prefixes") > 0 {
					cancel()
					return
				}
				time.Sleep(500 * time.Millisecond)
			}
		}()
	}
	isGen := func(e routeEvent) bool { return e.add && e.gateway && want[e.prefix] }
	first, last, err := w.countAfter(ctx, t0, count, isGen)
	if err != nil && !useEngine && errors.Is(err, context.Canceled) {
		rs, _ := n.BGPRoutes()
		reason := ""
		if len(rs.Refused) > 0 {
			reason = rs.Refused[0].Reason
		}
		fmt.Printf("the agent refuses the speaker's prefixes (%q): a mesh peer may only announce its own Node's pod CIDRs; see the engine figures\n", reason)
		b.Skipf("the agent refuses a mesh peer's prefixes other than its Node's pod CIDRs (%q)", reason)
	}
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), 5*converge)
	defer cancel()
	if err != nil {
		b.Fatalf("%v\nspeaker log:\n%s\nreceiver log:\n%s", err, sp.Log(), logOf()[logOff:])
	}
	var est time.Time
	for _, c := range sp.StateChanges() {
		if c.Peer == n.IPv4 && c.State == "established" {
			est = c.Time
			break
		}
	}
	if est.IsZero() {
		b.Fatalf("no session establishment in the speaker's log:\n%s", sp.Log())
	}
	installed, err := countRoutes(n.NetNS)
	if err != nil {
		b.Fatal(err)
	}
	if installed < count {
		b.Fatalf("kernel has %d podroute routes with a next hop, want at least %d", installed, count)
	}
	rss1, hwm1, _ := rssKiB(pid)
	var m1, m2 reconcileSums
	var ctlTime time.Duration
	var ctlRoutes int
	if !useEngine {
		m1 = reconcileMetrics(b, n)
		ctlStart := time.Now()
		var rs struct {
			Routes []json.RawMessage `json:"routes"`
		}
		if err := n.CtlJSON(&rs, "bgp", "routes"); err != nil {
			b.Fatal(err)
		}
		ctlTime, ctlRoutes = time.Since(ctlStart), len(rs.Routes)
	}
	reconciles := reconcileLog(logOf()[logOff:], est)
	time.Sleep(5 * time.Second) // a few keepalives later: the steady state
	rss2, hwm2, _ := rssKiB(pid)

	// Withdrawal: the speaker dies, its TCP session closes, the receiver drops its routes.
	logOff = len(logOf())
	t1 := time.Now()
	sp.Stop()
	isGenDel := func(e routeEvent) bool { return !e.add && want[e.prefix] }
	firstDel, lastDel, err := w.countAfter(ctx, t1, count, isGenDel)
	if err != nil {
		b.Fatal(err)
	}
	withdrawReconciles := reconcileLog(logOf()[logOff:], t1)
	if !useEngine {
		m2 = reconcileMetrics(b, n)
	}

	floorAdd, floorDel := kernelFloor(b, l, gen.Prefixes())
	loadEnd := loadavg()

	install := last.Sub(est)
	withdraw := lastDel.Sub(t1)
	fmt.Printf("%d prefixes (IPv4 /24s from %s), one node, one session; load average %s at start, %s at end\n\n", count, scaleFirst, load, loadEnd)
	fmt.Println("| measure | podroute | `ip -batch` (kernel floor) | ratio |")
	fmt.Println("| --- | ---: | ---: | ---: |")
	fmt.Printf("| session established -> all routes in the kernel (ms) | %s | %s | %.2f |\n", ms(install), ms(floorAdd), float64(install)/float64(floorAdd))
	fmt.Printf("| session established -> first route in the kernel (ms) | %s | | |\n", ms(first.Sub(est)))
	fmt.Printf("| first route in the kernel -> last (ms) | %s | | |\n", ms(last.Sub(first)))
	fmt.Printf("| speaker killed -> all routes gone (ms) | %s | %s | %.2f |\n", ms(withdraw), ms(floorDel), float64(withdraw)/float64(floorDel))
	fmt.Printf("| speaker killed -> first route gone (ms) | %s | | |\n", ms(firstDel.Sub(t1)))
	fmt.Printf("| receiver VmRSS before / after / 5 s later (MiB) | %s / %s / %s | | |\n", mib(rss0), mib(rss1), mib(rss2))
	fmt.Printf("| receiver VmHWM before / after / 5 s later (MiB) | %s / %s / %s | | |\n", mib(hwm0), mib(hwm1), mib(hwm2))
	if !useEngine {
		fmt.Printf("| `podroutectl bgp routes -o json` with %d routes (ms) | %s | | |\n", ctlRoutes, ms(ctlTime))
		fmt.Printf("| reconcile passes during install: count, total time (ms) | %d, %s | | |\n", m1.count-m0.count, ms(m1.sum-m0.sum))
		fmt.Printf("| reconcile passes during withdrawal: count, total time (ms) | %d, %s | | |\n", m2.count-m1.count, ms(m2.sum-m1.sum))
	}
	fmt.Println()
	fmt.Println("Passes that changed kernel routes (receiver's log; times from session establishment / speaker kill; Routes() and Reconcile() durations where the receiver logs them):")
	fmt.Println()
	fmt.Println("| phase | logged at (ms) | learned | added | removed | failed | Routes() ms | Reconcile() ms |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, r := range reconciles {
		fmt.Printf("| install | %s | %s |\n", ms(r.at), r.row())
	}
	for _, r := range withdrawReconciles {
		fmt.Printf("| withdrawal | %s | %s |\n", ms(r.at), r.row())
	}
	b.ReportMetric(float64(install)/1e6, "install-ms")
	b.ReportMetric(float64(floorAdd)/1e6, "ip-batch-ms")
	b.ReportMetric(float64(install)/float64(floorAdd), "install/ip-batch")
	b.ReportMetric(float64(withdraw)/1e6, "withdraw-ms")
	b.ReportMetric(float64(rss2)/1024, "rss-MiB")
}

// agentMetric is the value of an unlabelled metric on the agent's /metrics (0 if absent).
func agentMetric(n *lab.Node, name string) float64 {
	p, err := n.ProbeSocket("/metrics")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(p.Body, "\n") {
		if rest, ok := strings.CutPrefix(l, name+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return 0
}

type reconcileSums struct {
	count int
	sum   time.Duration
}

// reconcileMetrics reads podroute_reconcile_duration_seconds from the agent's /metrics.
func reconcileMetrics(b *testing.B, n *lab.Node) reconcileSums {
	b.Helper()
	p, err := n.ProbeSocket("/metrics")
	if err != nil {
		b.Fatal(err)
	}
	var s reconcileSums
	for _, l := range strings.Split(p.Body, "\n") {
		var v float64
		if rest, ok := strings.CutPrefix(l, "podroute_reconcile_duration_seconds_sum "); ok {
			fmt.Sscan(rest, &v)
			s.sum = time.Duration(v * float64(time.Second))
		}
		if rest, ok := strings.CutPrefix(l, "podroute_reconcile_duration_seconds_count "); ok {
			fmt.Sscan(rest, &v)
			s.count = int(v)
		}
	}
	return s
}

type reconcileEntry struct {
	at                              time.Duration
	learned, added, removed, failed int
	routesMs, reconcileMs           float64
}

func (r reconcileEntry) row() string {
	opt := func(v float64) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f", v)
	}
	learned := "-"
	if r.learned > 0 || r.routesMs > 0 {
		learned = fmt.Sprint(r.learned)
	}
	return fmt.Sprintf("%s | %d | %d | %d | %s | %s", learned, r.added, r.removed, r.failed, opt(r.routesMs), opt(r.reconcileMs))
}

// reconcileLog picks the agent's "kernel routes reconciled" lines (JSON) out of its log.
func reconcileLog(log string, since time.Time) []reconcileEntry {
	var out []reconcileEntry
	for _, l := range strings.Split(log, "\n") {
		var e struct {
			Time    time.Time `json:"time"`
			Msg     string    `json:"msg"`
			Added   int       `json:"added"`
			Removed int       `json:"removed"`
			Failed  int       `json:"failed"`
			Learned int       `json:"learned"`
			RMs     float64   `json:"routesMs"`
			KMs     float64   `json:"reconcileMs"`
		}
		if json.Unmarshal([]byte(l), &e) != nil || e.Msg != "kernel routes reconciled" {
			continue
		}
		out = append(out, reconcileEntry{at: e.Time.Sub(since), learned: e.Learned, added: e.Added, removed: e.Removed, failed: e.Failed, routesMs: e.RMs, reconcileMs: e.KMs})
	}
	return out
}

// kernelFloor times `ip -batch` adding, then deleting, the same routes (protocol 201, via a
// gateway on a connected /24, the uplink a veth like the lab's) in a fresh namespace.
func kernelFloor(b *testing.B, l *lab.Lab, ps []netip.Prefix) (add, del time.Duration) {
	b.Helper()
	ns, err := lab.CreateNetNS(l.Name + "-floor")
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Delete()
	if err := ns.IP(
		[]string{"link", "add", "uplink", "type", "veth", "peer", "name", "fabric"},
		[]string{"addr", "add", "192.0.2.11/24", "dev", "uplink"},
		[]string{"link", "set", "fabric", "up"},
		[]string{"link", "set", "uplink", "up"},
	); err != nil {
		b.Fatal(err)
	}
	var addB, delB strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&addB, "route add %s via 192.0.2.99 proto 201\n", p)
		fmt.Fprintf(&delB, "route del %s via 192.0.2.99 proto 201\n", p)
	}
	dir := b.TempDir()
	run := func(name, script string) time.Duration {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if out, err := exec.Command("ip", "-n", ns.Name, "-batch", path).CombinedOutput(); err != nil {
			b.Fatalf("ip -batch %s: %v: %s", name, err, out)
		}
		return time.Since(t0)
	}
	add = run("add", addB.String())
	if n, err := countRoutes(ns); err != nil || n != len(ps) {
		b.Fatalf("ip -batch installed %d routes (%v), want %d", n, err, len(ps))
	}
	del = run("del", delB.String())
	return add, del
}
