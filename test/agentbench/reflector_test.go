package agentbench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/podroute/podroute/agentapi"
	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/test/lab"
	"github.com/podroute/podroute/test/scaleplot"
)

// reflectorLabel selects the route reflectors (docs/peering.md, section 3).
const reflectorLabel = "podroute.io/route-reflector"

// BenchmarkReflectorScale: a cluster of AGENTBENCH_RR_NODES (default 1000) nodes with the
// node mesh off and two route reflectors, emulated. Real podroute-agents run the two
// reflectors (Nodes labelled reflectorLabel) and AGENTBENCH_RR_CLIENTS (default 4) clients,
// each in its node's namespace; every other node is a Node object (InternalIP and pod CIDR)
// and a speaker of the reflectors' farm at that address: iBGP, the cluster's AS, both
// reflectors as neighbors, announcing the Node's pod CIDR with itself as next hop. Agents
// and speakers run with a hold time of AGENTBENCH_RR_HOLD_SECONDS (default 9, the agent's
// default; keepalive a third of it), the agents with AGENTBENCH_RR_AGENT_ARGS besides (extra
// flags, e.g. --profiling). In order, in one lab:
//
//  1. start-up: the Node objects exist and the farm runs; the real agents start together;
//     time until each reflector has a session with every node (the farm's logs) and until
//     every real node routes every other node's pod CIDR (the kernel's notifications);
//  2. the steady state of the real agents: CPU (utime+stime) over AGENTBENCH_STEADY_SECONDS
//     (default 60), VmRSS, VmHWM; the farm's CPU beside;
//  3. AGENTBENCH_RR_JOINS (default 5) joins: a new speaker, then its Node object; time from
//     the create call to its pod CIDR on every client; then it leaves again;
//  4. churn: 10 % of the emulated nodes replaced (Node deleted and speaker stopped, a new
//     Node and speaker at a new address), eight at a time; then, after two hold times, no
//     session to a surviving node may have flapped (the reflectors' neighbor lists, the
//     clients' and the farm's logs) nor any surviving node's route have left a client;
//  5. a fresh client node: its Node object, then its agent started; time to its conflist,
//     to Ready, and to every route installed.
func BenchmarkReflectorScale(b *testing.B) {
	total := envInt("AGENTBENCH_RR_NODES", 1000)
	clients := envInt("AGENTBENCH_RR_CLIENTS", 4)
	joins := envInt("AGENTBENCH_RR_JOINS", 5)
	steady := time.Duration(envInt("AGENTBENCH_STEADY_SECONDS", 60)) * time.Second
	const reflectors = 2
	emulated := total - reflectors - clients
	churn := max(1, emulated/10)
	if emulated < 10 || reflectors+clients+1 > 200 || emulated+joins+churn > rrFarmSize() {
		b.Fatalf("AGENTBENCH_RR_NODES=%d, AGENTBENCH_RR_CLIENTS=%d, AGENTBENCH_RR_JOINS=%d: want at least 10 emulated nodes, at most 197 real ones, and emulated nodes + joins + 10 %% churn within the farm's %d addresses",
			total, clients, joins, rrFarmSize())
	}
	// Shared neighbour tables: each reflector has an entry per node, the farm one per real
	// node; raiseNeighbourTables sizes for a mesh of n, (n+10)^2 entries.
	headroom := raiseNeighbourTables(b, int(math.Ceil(math.Sqrt(float64(4*total+200))))-10)
	load := header(b, fmt.Sprintf("Route reflectors: %d nodes, 2 reflectors and %d clients real, %d emulated", total, clients, emulated))
	fmt.Println(headroom)
	fmt.Println()

	hold := time.Duration(envInt("AGENTBENCH_RR_HOLD_SECONDS", 9)) * time.Second
	keepalive := max(time.Second, hold/3)
	agentArgs := []string{"--hold-time", hold.String(), "--keepalive", keepalive.String()}
	agentArgs = append(agentArgs, strings.Fields(os.Getenv("AGENTBENCH_RR_AGENT_ARGS"))...)
	// The emulated nodes are IPv4 only, so the cluster is too, unless AGENTBENCH_RR_DUAL_STACK=1
	// (the real nodes then carry IPv6 pod CIDRs and every session both families).
	clusterCIDRs := []netip.Prefix{scaleClusterV4}
	if envInt("AGENTBENCH_RR_DUAL_STACK", 0) == 1 {
		clusterCIDRs = append(clusterCIDRs, lab.DefaultClusterV6)
	}
	fmt.Printf("cluster CIDRs %v\n", clusterCIDRs)
	l := lab.New(b, lab.Options{ClusterCIDRs: clusterCIDRs, AgentArgs: agentArgs})
	crds := lab.InstallCRDs(b, l)
	crds.Configuration(config.BGPConfigurationSpec{
		NodeToNodeMesh:             ptr(false),
		RouteReflectorNodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{reflectorLabel: "true"}},
	})

	var rrs, cls []*lab.Node
	for i := 1; i <= reflectors; i++ {
		rrs = append(rrs, l.AddNode(b, fmt.Sprintf("rr-%d", i), lab.NodeOptions{Index: i, NoAgent: true, Labels: map[string]string{reflectorLabel: "true"}}))
	}
	for i := 1; i <= clients; i++ {
		cls = append(cls, l.AddNode(b, fmt.Sprintf("client-%d", i), lab.NodeOptions{Index: reflectors + i, NoAgent: true}))
	}
	realNodes := slices.Concat(rrs, cls)
	watches := map[*lab.Node]*routeWatch{}
	for _, n := range realNodes {
		watches[n] = watchRoutes(b, n.NetNS)
	}
	var initial []farmSpeaker
	for k := 1; k <= emulated; k++ {
		initial = append(initial, emuSpeaker(k))
	}
	tf := time.Now()
	f := startReflectorFarm(b, l, []netip.Addr{rrs[0].IPv4, rrs[1].IPv4}, realNodes, config.DefaultASN, hold, keepalive, initial)
	farmUp := time.Since(tf)
	c := &rrCluster{l: l, f: f, rrs: rrs, cls: cls, watches: watches, live: map[int]bool{}, hold: hold}
	to := time.Now()
	if err := parallelDo(emulated, 8, func(i int) error { return c.createEmu(i + 1) }); err != nil {
		b.Fatalf("emulated Node objects: %v", err)
	}
	objects := time.Since(to)
	c.next = emulated + 1
	fmt.Printf("farm of %d speakers up in %s ms; %d Node objects created in %s ms (8 calls at a time)\n", emulated, ms(farmUp), emulated, ms(objects))

	up := c.startUp(b)
	fmt.Printf("start-up: %s\n", up)
	st := c.steadyState(b, steady)
	fmt.Printf("steady: %s\n", st)
	var js []rrJoin
	for range joins {
		j := c.join(b)
		fmt.Printf("join: %s\n", j)
		js = append(js, j)
	}
	ch := c.churn(b, churn)
	fmt.Printf("churn: %s\n", ch)
	fresh := c.freshClient(b, reflectors+clients+1)
	fmt.Printf("fresh client: %s\n", fresh)
	loadEnd := loadavg()

	fmt.Printf("\n%d nodes: reflectors %s and %s, %d real clients, %d emulated (Node objects and GoBGP speakers of one process, the cluster's AS, announcing a /24 each); hold time %v, keepalive %v; steady window %v; load average %s at start, %s at end\n\n",
		total, rrs[0].IPv4, rrs[1].IPv4, clients, emulated, hold, keepalive, steady, load, loadEnd)
	rrTable(up, st, js, ch, fresh)

	b.ReportMetric(up.allRoutes.Seconds(), "startup-s")
	b.ReportMetric(slices.Max(st.cpu[:reflectors]), "rr-cpu-pct")
	b.ReportMetric(float64(slices.Max(st.rss[:reflectors]))/1024, "rr-rss-MiB")
	b.ReportMetric(median(joinWorsts(js)).Seconds(), "join-median-s")
	b.ReportMetric(float64(ch.flaps), "churn-flaps")
	b.ReportMetric(float64(ch.missing), "churn-routes-lost")
	b.ReportMetric(fresh.routes.Seconds(), "fresh-routes-s")
	recordScale(b, scaleplot.Point{
		Topology: "route reflectors", Nodes: total,
		JoinMedian: median(joinWorsts(js)).Seconds(), JoinWorst: slices.Max(joinWorsts(js)).Seconds(),
		MemoryMiB: map[string]float64{
			"reflector":                float64(slices.Max(st.rss[:reflectors])) / 1024,
			"reflector, own (RssAnon)": float64(slices.Max(st.anon[:reflectors])) / 1024,
			"client":                   float64(median(toInt64(st.rss[reflectors:]))) / 1024,
		},
	})
	if ch.flaps > 0 || ch.missing > 0 {
		b.Errorf("churn: %d sessions to surviving nodes flapped, %d surviving routes left a client (%s)", ch.flaps, ch.missing, ch.detail)
	}
}

// rrCluster is the emulated cluster: the real nodes, and the emulated ones by number.
type rrCluster struct {
	l        *lab.Lab
	f        *rrFarm
	rrs, cls []*lab.Node
	watches  map[*lab.Node]*routeWatch
	mu       sync.Mutex
	live     map[int]bool // emulated nodes with a Node object and a speaker
	next     int          // the next emulated node's number
	hold     time.Duration
}

func emuName(k int) string { return fmt.Sprintf("emu-%04d", k) }

func (c *rrCluster) createEmu(k int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.l.Kube.CreateNode(ctx, emuName(k), []string{emuPrefix(k).String()}, []string{emuAddr(k).String()}, nil); err != nil {
		return err
	}
	c.mu.Lock()
	c.live[k] = true
	c.mu.Unlock()
	return nil
}

func (c *rrCluster) deleteEmu(k int) error {
	c.mu.Lock()
	delete(c.live, k)
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.l.Kube.DeleteNode(ctx, emuName(k))
}

func (c *rrCluster) realNodes() []*lab.Node { return slices.Concat(c.rrs, c.cls) }

// want is every pod CIDR n should route, with its next hop.
func (c *rrCluster) want(n *lab.Node) map[netip.Prefix]netip.Addr {
	out := map[netip.Prefix]netip.Addr{}
	c.mu.Lock()
	for k := range c.live {
		out[emuPrefix(k)] = emuAddr(k)
	}
	c.mu.Unlock()
	for _, o := range c.realNodes() {
		if o == n {
			continue
		}
		for _, p := range o.PodCIDRs {
			out[p] = o.IPv4
			if p.Addr().Is6() {
				out[p] = o.IPv6
			}
		}
	}
	return out
}

// parallelDo calls f(0..count-1), at most n at a time, and joins the errors.
func parallelDo(count, n int, f func(i int) error) error {
	sem := make(chan struct{}, n)
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = f(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// rrUp is the start-up, from the real agents' start.
type rrUp struct {
	nodes      int
	sessions   []time.Duration // per reflector: its last session with an emulated node established
	ready      []time.Duration // per real agent: Ready (podroutectl status)
	routes     []time.Duration // per real node: every other node's pod CIDRs in its kernel
	allRoutes  time.Duration   // the last of routes
	rrSessions []int           // per reflector: sessions established, by its neighbor list
	// per reflector: `podroutectl bgp neighbors -o json` at the end of the start-up, and
	// its error if it failed
	neighborsCall []time.Duration
	listErr       string
}

func (u rrUp) String() string {
	var s []string
	for _, d := range u.routes {
		s = append(s, ms(d))
	}
	return fmt.Sprintf("reflectors' sessions all up %s / %s ms (%v established), real nodes routed everything %v ms, Ready %v ms",
		ms(u.sessions[0]), ms(u.sessions[1]), u.rrSessions, s, msList(u.ready))
}

func msList(ds []time.Duration) []string {
	var s []string
	for _, d := range ds {
		s = append(s, ms(d))
	}
	return s
}

// startUp starts every real agent at once and waits for the cluster to converge.
func (c *rrCluster) startUp(b *testing.B) rrUp {
	b.Helper()
	nodes := c.realNodes()
	u := rrUp{nodes: len(c.live) + len(nodes)}
	t0 := time.Now()
	for _, n := range nodes {
		if err := n.Agent.Start(); err != nil {
			b.Fatal(err)
		}
	}
	// Generous: at 1,000 nodes each reflector adds its neighbors at a few a second (see
	// docs/benchmarks.md) and sends about a million UPDATEs.
	limit := 2*time.Minute + time.Duration(u.nodes)*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var wg sync.WaitGroup
	u.ready = make([]time.Duration, len(nodes))
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = lab.Poll(ctx, limit, 100*time.Millisecond, func() error {
				st, err := n.Status()
				if err != nil || !st.Ready {
					return fmt.Errorf("not ready")
				}
				u.ready[i] = time.Since(t0)
				return nil
			})
		}()
	}
	for _, n := range nodes {
		want := c.want(n)
		_, last, err := c.watches[n].countAfter(ctx, t0, len(want), func(e routeEvent) bool { return e.add && want[e.prefix] == e.via })
		if err != nil {
			b.Fatalf("start-up: routes on %s: %v\nagent log:\n%s", n.Name, err, tail(n.Agent.Log(), 40))
		}
		u.routes = append(u.routes, last.Sub(t0))
	}
	wg.Wait()
	u.allRoutes = slices.Max(u.routes)
	fmt.Printf("start-up: every other node's pod CIDRs in the kernel of each real node after %v ms, Ready after %v ms\n", msList(u.routes), msList(u.ready))
	// Sessions: the farm's first "established" after t0 of every speaker with each reflector.
	// The clients may have every route through one reflector while the other still dials
	// its last nodes, and the farm's log lags: wait for it, up to two hold times.
	for _, r := range c.rrs {
		est := map[netip.Addr]time.Time{}
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, max(20*time.Second, 2*c.hold), true, func(context.Context) (bool, error) {
			for _, s := range c.f.states() {
				if s.neighbor == r.IPv4 && s.state == "established" && !s.at.Before(t0) {
					if _, seen := est[s.speaker]; !seen {
						est[s.speaker] = s.at
					}
				}
			}
			return len(est) == len(c.live), nil
		})
		if err != nil {
			b.Fatalf("start-up: %d of %d emulated nodes have a session with %s", len(est), len(c.live), r.Name)
		}
		var last time.Time
		for _, at := range est {
			last = later(last, at)
		}
		u.sessions = append(u.sessions, last.Sub(t0))
		// The reflector's own count, when it can give it: at 1,000 peers its neighbor
		// listing may exceed the agent's own deadline (docs/benchmarks.md); the farm's
		// logs above have every session then.
		ns, took, err := neighbors(r)
		u.neighborsCall = append(u.neighborsCall, took)
		if err != nil {
			u.rrSessions = append(u.rrSessions, -1)
			u.listErr = err.Error()
			continue
		}
		up := 0
		for _, x := range ns {
			if x.State == "established" {
				up++
			}
		}
		if up != u.nodes-1 {
			b.Fatalf("start-up: %s has %d sessions established, want %d", r.Name, up, u.nodes-1)
		}
		u.rrSessions = append(u.rrSessions, up)
	}
	for _, n := range c.cls {
		_, _ = c.established(b, n, len(c.rrs))
	}
	for _, n := range nodes {
		c.counted(b, n)
	}
	return u
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// neighbors is `podroutectl bgp neighbors` with room for a reflector of 1,000 peers, which
// takes longer than podroutectl's default 5 s to answer; and how long the call took.
func neighbors(n *lab.Node) ([]agentapi.Neighbor, time.Duration, error) {
	var out []agentapi.Neighbor
	t0 := time.Now()
	err := n.CtlJSON(&out, "--timeout", "3m", "bgp", "neighbors")
	return out, time.Since(t0), err
}

// established checks that n has want sessions, all established, and returns their number
// and how long the last neighbor listing took.
func (c *rrCluster) established(b *testing.B, n *lab.Node, want int) (int, time.Duration) {
	b.Helper()
	var est int
	var took time.Duration
	lab.Eventually(b, 5*converge, n.Name+" sessions", func() error {
		var ns []agentapi.Neighbor
		var err error
		ns, took, err = neighbors(n)
		if err != nil {
			return err
		}
		est = 0
		for _, x := range ns {
			if x.State == "established" {
				est++
			}
		}
		if len(ns) != want || est != want {
			return fmt.Errorf("%s: %d of %d neighbors established, want %d", n.Name, est, len(ns), want)
		}
		return nil
	})
	return est, took
}

// counted waits until n's kernel holds exactly the routes it should (a netlink dump).
func (c *rrCluster) counted(b *testing.B, n *lab.Node) {
	b.Helper()
	want := len(c.want(n))
	lab.Eventually(b, converge, n.Name+" routes", func() error {
		got, err := countRoutes(n.NetNS)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("%s has %d routes via other nodes, want %d", n.Name, got, want)
		}
		return nil
	})
}

// rrSteady is the real agents over a quiet window (reflectors first, then clients).
type rrSteady struct {
	window   time.Duration
	cpu      []float64 // % of one CPU
	rss, hwm []int     // KiB
	farmCPU  float64
	farmRSS  int
	heap     []float64 // Go heap in use, bytes
	anon     []int     // RssAnon KiB
}

func (s rrSteady) String() string {
	return fmt.Sprintf("over %v: CPU %% %.2f, VmRSS MiB %v, RssAnon MiB %v; farm CPU %.1f %%, VmRSS %s MiB",
		s.window.Round(time.Second), s.cpu, toMiB(s.rss), toMiB(s.anon), s.farmCPU, mib(s.farmRSS))
}

func toMiB(kib []int) []string {
	var out []string
	for _, v := range kib {
		out = append(out, mib(v))
	}
	return out
}

func (c *rrCluster) steadyState(b *testing.B, window time.Duration) rrSteady {
	b.Helper()
	time.Sleep(10 * time.Second)
	nodes := c.realNodes()
	s := rrSteady{}
	t0 := make([]int64, len(nodes))
	for i, n := range nodes {
		var err error
		if t0[i], err = cpuTicks(n.Agent.PID()); err != nil {
			b.Fatal(err)
		}
	}
	f0, err := cpuTicks(c.f.PID())
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	time.Sleep(window)
	s.window = time.Since(start)
	for i, n := range nodes {
		t1, err := cpuTicks(n.Agent.PID())
		if err != nil {
			b.Fatal(err)
		}
		s.cpu = append(s.cpu, 100*float64(t1-t0[i])/clkTck/s.window.Seconds())
		m, err := memKiB(n.Agent.PID())
		if err != nil {
			b.Fatal(err)
		}
		s.rss, s.hwm, s.anon = append(s.rss, m.rss), append(s.hwm, m.hwm), append(s.anon, m.anon)
		s.heap = append(s.heap, agentMetric(n, "go_memstats_heap_inuse_bytes"))
	}
	f1, err := cpuTicks(c.f.PID())
	if err != nil {
		b.Fatal(err)
	}
	s.farmCPU = 100 * float64(f1-f0) / clkTck / s.window.Seconds()
	s.farmRSS, _, _ = rssKiB(c.f.PID())
	return s
}

// rrJoin is one emulated node joining (and leaving).
type rrJoin struct {
	perClient []time.Duration // Node create call -> its pod CIDR in each client's kernel
	rr        []time.Duration // ... in each reflector's kernel
	leave     []time.Duration // Node delete call -> gone from each client's kernel
}

func (j rrJoin) String() string {
	return fmt.Sprintf("routed on the clients after %v ms, on the reflectors after %v ms; gone from the clients %v ms after the delete",
		msList(j.perClient), msList(j.rr), msList(j.leave))
}

func joinWorsts(js []rrJoin) []time.Duration {
	var out []time.Duration
	for _, j := range js {
		out = append(out, slices.Max(j.perClient))
	}
	return out
}

// join adds an emulated node (its speaker, then its Node object), waits for its route on
// every real node, then removes it again (Node object, then speaker).
func (c *rrCluster) join(b *testing.B) rrJoin {
	b.Helper()
	k := c.next
	c.next++
	if err := c.f.add(k); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*converge)
	defer cancel()
	var j rrJoin
	t0 := time.Now()
	if err := c.createEmu(k); err != nil {
		b.Fatal(err)
	}
	for _, n := range c.realNodes() {
		at, err := c.watches[n].routeAdded(ctx, t0, emuPrefix(k))
		if err != nil {
			b.Fatalf("join of %s: its route on %s: %v", emuName(k), n.Name, err)
		}
		if slices.Contains(c.rrs, n) {
			j.rr = append(j.rr, at.Sub(t0))
		} else {
			j.perClient = append(j.perClient, at.Sub(t0))
		}
	}
	time.Sleep(2 * time.Second)
	t1 := time.Now()
	if err := c.deleteEmu(k); err != nil {
		b.Fatal(err)
	}
	for _, n := range c.cls {
		at, err := c.watches[n].routeDeleted(ctx, t1, emuPrefix(k))
		if err != nil {
			b.Fatalf("leave of %s: its route on %s: %v", emuName(k), n.Name, err)
		}
		j.leave = append(j.leave, at.Sub(t1))
	}
	if err := c.f.del(k); err != nil {
		b.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	return j
}

// rrChurn is the replacement of part of the emulated nodes.
type rrChurn struct {
	replaced  int
	calls     time.Duration // first delete call -> the last create call returned
	converged time.Duration // ... -> the new routes on every client and the old ones gone
	quiet     time.Duration // how long after that the survivors were watched
	survivors int           // sessions to surviving nodes checked (both reflectors)
	flaps     int           // sessions to surviving nodes that went down or restarted
	missing   int           // surviving nodes' routes removed from a client's kernel
	detail    string
}

func (ch rrChurn) String() string {
	return fmt.Sprintf("%d nodes replaced: calls %s ms, converged %s ms; then %v quiet: %d sessions to survivors checked, %d flapped, %d survivor routes lost %s",
		ch.replaced, ms(ch.calls), ms(ch.converged), ch.quiet, ch.survivors, ch.flaps, ch.missing, ch.detail)
}

// churn replaces count emulated nodes, eight at a time: the Node object deleted and the
// speaker stopped, then a new speaker started and a new Node object created at a new
// address. Then it checks that nothing happened to the sessions and routes of the others.
func (c *rrCluster) churn(b *testing.B, count int) rrChurn {
	b.Helper()
	c.mu.Lock()
	var all []int
	for k := range c.live {
		all = append(all, k)
	}
	c.mu.Unlock()
	slices.Sort(all)
	var victims []int
	for i := 0; i < len(all) && len(victims) < count; i += max(1, len(all)/count) {
		victims = append(victims, all[i])
	}
	gone := map[int]bool{}
	for _, k := range victims {
		gone[k] = true
	}
	// The sessions' state before: every reflector's neighbor and its "since".
	before := map[*lab.Node]map[string]time.Time{}
	for _, n := range c.realNodes() {
		before[n] = c.sessionsSince(b, n)
	}
	fresh := make([]int, len(victims))
	for i := range victims {
		fresh[i] = c.next
		c.next++
	}
	ch := rrChurn{replaced: len(victims)}
	t0 := time.Now()
	if err := parallelDo(len(victims), 8, func(i int) error {
		if err := c.deleteEmu(victims[i]); err != nil {
			return err
		}
		if err := c.f.del(victims[i]); err != nil {
			return err
		}
		if err := c.f.add(fresh[i]); err != nil {
			return err
		}
		return c.createEmu(fresh[i])
	}); err != nil {
		b.Fatalf("churn: %v", err)
	}
	ch.calls = time.Since(t0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*converge)
	defer cancel()
	newVia := map[netip.Prefix]netip.Addr{}
	oldPrefix := map[netip.Prefix]bool{}
	for i := range victims {
		newVia[emuPrefix(fresh[i])] = emuAddr(fresh[i])
		oldPrefix[emuPrefix(victims[i])] = true
	}
	var done time.Time
	for _, n := range c.cls {
		w := c.watches[n]
		_, a, err := w.countAfter(ctx, t0, len(newVia), func(e routeEvent) bool { return e.add && newVia[e.prefix] == e.via })
		if err != nil {
			b.Fatalf("churn: new routes on %s: %v", n.Name, err)
		}
		_, d, err := w.countAfter(ctx, t0, len(oldPrefix), func(e routeEvent) bool { return !e.add && oldPrefix[e.prefix] })
		if err != nil {
			b.Fatalf("churn: old routes on %s: %v", n.Name, err)
		}
		done = later(done, later(a, d))
	}
	ch.converged = done.Sub(t0)
	// Two hold times: a session starved by the churn would have expired by then.
	ch.quiet = 2*c.hold + 2*time.Second
	time.Sleep(ch.quiet)
	var detail []string
	for _, n := range c.realNodes() {
		if before[n] == nil {
			continue // a reflector that could not list its neighbors: the farm's logs below
		}
		after := c.sessionsSince(b, n)
		if after == nil {
			continue
		}
		for addr, since := range before[n] {
			if a, err := netip.ParseAddr(addr); err == nil && a.Is4() && rrFarmPrefix.Contains(a) && gone[emuNumber(a)] {
				continue
			}
			ch.survivors++
			if s2, ok := after[addr]; !ok || !s2.Equal(since) {
				ch.flaps++
				if len(detail) < 5 {
					detail = append(detail, fmt.Sprintf("%s: session to %s established since %s, now %v", n.Name, addr, since.Format(time.RFC3339Nano), s2))
				}
			}
		}
	}
	// The farm's side: any state change of a surviving speaker since t0.
	for _, s := range c.f.states() {
		if s.at.Before(t0) || gone[emuNumber(s.speaker)] || slices.Contains(fresh, emuNumber(s.speaker)) {
			continue
		}
		ch.flaps++
		if len(detail) < 5 {
			detail = append(detail, fmt.Sprintf("speaker %s: session with %s %s at %s", s.speaker, s.neighbor, s.state, s.at.Format(time.RFC3339Nano)))
		}
	}
	// The clients' kernels: no surviving prefix removed since t0.
	for _, n := range c.cls {
		want := c.want(n)
		w := c.watches[n]
		w.mu.Lock()
		for _, e := range w.ev {
			if !e.add && !e.at.Before(t0) && want[e.prefix].IsValid() {
				ch.missing++
				if len(detail) < 5 {
					detail = append(detail, fmt.Sprintf("%s: route %s removed at %s", n.Name, e.prefix, e.at.Format(time.RFC3339Nano)))
				}
			}
		}
		w.mu.Unlock()
	}
	for _, n := range c.realNodes() {
		c.counted(b, n)
	}
	if len(detail) > 0 {
		ch.detail = fmt.Sprint(detail)
	}
	return ch
}

// emuNumber is the emulated node number of a farm address (0 if none).
func emuNumber(a netip.Addr) int {
	if !a.Is4() || !rrFarmPrefix.Contains(a) {
		return 0
	}
	x, p := a.As4(), rrFarmPrefix.Addr().As4()
	return int(x[2]-p[2])<<8 | int(x[3]-p[3])
}

// sessionsSince is n's neighbors and when each last changed state, all established; nil
// for a reflector whose listing fails (see startUp), fatal for a client.
func (c *rrCluster) sessionsSince(b *testing.B, n *lab.Node) map[string]time.Time {
	b.Helper()
	ns, _, err := neighbors(n)
	if err != nil && slices.Contains(c.rrs, n) {
		fmt.Printf("churn: %s: %v\n", n.Name, err)
		return nil
	}
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]time.Time{}
	for _, x := range ns {
		if x.State == "established" {
			out[x.Address] = x.Since
		}
	}
	return out
}

// rrFresh is a client node's agent starting in the full cluster.
type rrFresh struct {
	conflist, ready, sessions, routes time.Duration // from the agent's start
	rss                               int           // KiB, once every route is in
	count                             int           // routes installed
}

func (f rrFresh) String() string {
	return fmt.Sprintf("conflist written %s ms, Ready %s ms, both reflector sessions %s ms, all %d routes %s ms; VmRSS %s MiB",
		ms(f.conflist), ms(f.ready), ms(f.sessions), f.count, ms(f.routes), mib(f.rss))
}

// freshClient adds a real client node: its namespace and Node object first, then its agent.
func (c *rrCluster) freshClient(b *testing.B, index int) rrFresh {
	b.Helper()
	n := c.l.AddNode(b, "client-new", lab.NodeOptions{Index: index, NoAgent: true})
	if err := n.IP([]string{"route", "add", rrFarmPrefix.String(), "dev", lab.UplinkName}); err != nil {
		b.Fatal(err)
	}
	w := watchRoutes(b, n.NetNS)
	want := c.want(n)
	time.Sleep(3 * time.Second) // the running agents take the new Node in first
	var f rrFresh
	f.count = len(want)
	ctx, cancel := context.WithTimeout(context.Background(), 5*converge)
	defer cancel()
	t0 := time.Now()
	if err := n.Agent.Start(); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		_ = lab.Poll(ctx, 5*converge, 10*time.Millisecond, func() error {
			if _, _, err := n.ConfList(); err != nil {
				return err
			}
			f.conflist = time.Since(t0)
			return nil
		})
	}()
	go func() {
		defer wg.Done()
		_ = lab.Poll(ctx, 5*converge, 50*time.Millisecond, func() error {
			st, err := n.Status()
			if err != nil || !st.Ready {
				return errors.New("not ready")
			}
			f.ready = time.Since(t0)
			return nil
		})
	}()
	go func() {
		defer wg.Done()
		_ = lab.Poll(ctx, 5*converge, 50*time.Millisecond, func() error {
			if err := n.Established(c.rrs[0].IPv4, c.rrs[1].IPv4); err != nil {
				return err
			}
			f.sessions = time.Since(t0)
			return nil
		})
	}()
	_, last, err := w.countAfter(ctx, t0, len(want), func(e routeEvent) bool { return e.add && want[e.prefix] == e.via })
	if err != nil {
		b.Fatalf("fresh client: %v\nagent log:\n%s", err, tail(n.Agent.Log(), 40))
	}
	f.routes = last.Sub(t0)
	wg.Wait()
	if f.conflist == 0 || f.ready == 0 || f.sessions == 0 {
		b.Fatalf("fresh client: conflist %v, Ready %v, sessions %v (zero: not seen)", f.conflist, f.ready, f.sessions)
	}
	f.rss, _, _ = rssKiB(n.Agent.PID())
	return f
}

// rrTable prints the figures.
func rrTable(up rrUp, st rrSteady, js []rrJoin, ch rrChurn, fresh rrFresh) {
	sec := func(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()) }
	nr := len(up.sessions)
	fmt.Println("| measure | figure |")
	fmt.Println("| --- | ---: |")
	fmt.Printf("| start-up (all real agents started together, %d nodes): each reflector's last session with a node established (s) | %s / %s |\n", up.nodes, sec(up.sessions[0]), sec(up.sessions[1]))
	fmt.Printf("| start-up: sessions established per reflector (its neighbor list) | %d / %d |\n", up.rrSessions[0], up.rrSessions[1])
	fmt.Printf("| `podroutectl bgp neighbors -o json` on each reflector, end of start-up (s) | %s |\n", joinSec(up.neighborsCall))
	if up.listErr != "" {
		fmt.Printf("| ... failed (-1 sessions above): | %s |\n", up.listErr)
	}
	fmt.Printf("| start-up: every other node's pod CIDRs in the kernel, reflectors (s) | %s |\n", joinSec(up.routes[:nr]))
	fmt.Printf("| start-up: **every other node's pod CIDRs in the kernel, clients (s)** | **%s** |\n", joinSec(up.routes[nr:]))
	fmt.Printf("| start-up: Ready (podroutectl status), reflectors then clients (s) | %s |\n", joinSec(up.ready))
	fmt.Printf("| steady (%v): **reflector CPU, %% of one CPU** | **%s** |\n", st.window.Round(time.Second), joinPct(st.cpu[:nr]))
	fmt.Printf("| steady: **reflector VmRSS (MiB)** (VmHWM) | **%s** |\n", joinMiBHWM(st.rss[:nr], st.hwm[:nr]))
	fmt.Printf("| steady: reflector Go heap in use (MiB) | %s |\n", joinHeap(st.heap[:nr]))
	fmt.Printf("| steady: client CPU, %% of one CPU | %s |\n", joinPct(st.cpu[nr:]))
	fmt.Printf("| steady: client VmRSS (MiB) (VmHWM) | %s |\n", joinMiBHWM(st.rss[nr:], st.hwm[nr:]))
	fmt.Printf("| steady: the farm (every emulated node, one process): CPU %% / VmRSS MiB | %.1f / %s |\n", st.farmCPU, mib(st.farmRSS))
	if len(js) > 0 {
		worst := joinWorsts(js)
		var all, rr, leave []time.Duration
		for _, j := range js {
			all = append(all, j.perClient...)
			rr = append(rr, j.rr...)
			leave = append(leave, j.leave...)
		}
		fmt.Printf("| join (%d, speaker then Node object): **Node created -> pod CIDR on every client, median / worst of the joins (ms)** | **%s / %s** |\n", len(js), ms(median(worst)), ms(slices.Max(worst)))
		fmt.Printf("| join: Node created -> pod CIDR on a client, median over clients and joins (ms) | %s |\n", ms(median(all)))
		fmt.Printf("| join: Node created -> pod CIDR on a reflector, median / worst (ms) | %s / %s |\n", ms(median(rr)), ms(slices.Max(rr)))
		fmt.Printf("| leave: Node deleted -> pod CIDR gone from a client, median / worst (ms) | %s / %s |\n", ms(median(leave)), ms(slices.Max(leave)))
	}
	fmt.Printf("| churn: nodes replaced (8 at a time: Node deleted, speaker stopped, new speaker, new Node) | %d |\n", ch.replaced)
	fmt.Printf("| churn: first call -> last call returned / -> clients converged (s) | %s / %s |\n", sec(ch.calls), sec(ch.converged))
	fmt.Printf("| churn: **sessions to surviving nodes that flapped** (of %d checked, over %v after convergence; and the farm's logs) | **%d** |\n", ch.survivors, ch.quiet, ch.flaps)
	fmt.Printf("| churn: **surviving nodes' routes removed from a client** | **%d** |\n", ch.missing)
	fmt.Printf("| fresh client agent in the full cluster: conflist written (s) | %s |\n", sec(fresh.conflist))
	fmt.Printf("| fresh client: Ready (s) | %s |\n", sec(fresh.ready))
	fmt.Printf("| fresh client: both reflector sessions established (podroutectl, polled) (s) | %s |\n", sec(fresh.sessions))
	fmt.Printf("| fresh client: **all %d routes installed (s)** | **%s** |\n", fresh.count, sec(fresh.routes))
	fmt.Printf("| fresh client: VmRSS then (MiB) | %s |\n", mib(fresh.rss))
}

func joinSec(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, fmt.Sprintf("%.2f", d.Seconds()))
	}
	return joinSlash(s)
}

func joinPct(xs []float64) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprintf("%.2f", x))
	}
	return joinSlash(s)
}

// joinMiBHWM is "rss (hwm)" per agent.
func joinMiBHWM(rss, hwm []int) string {
	var s []string
	for i := range rss {
		s = append(s, fmt.Sprintf("%s (%s)", mib(rss[i]), mib(hwm[i])))
	}
	return joinSlash(s)
}

func joinHeap(xs []float64) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprintf("%.1f", x/(1<<20)))
	}
	return joinSlash(s)
}

func joinSlash(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += " / "
		}
		out += x
	}
	return out
}
