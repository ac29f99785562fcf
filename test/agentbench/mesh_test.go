package agentbench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podroute/podroute/test/lab"
	"github.com/podroute/podroute/test/scaleplot"
)

// BenchmarkMeshScale: a full iBGP mesh of AGENTBENCH_MESH_NODES (default 50) real
// podroute-agents, each in its own node namespace, against one kube-apiserver, with the
// agents' default BGP timers (hold 9 s, keepalive 3 s). In order, in one lab:
//
//  1. the baseline: three nodes, meshed; AGENTBENCH_MESH_ROUNDS (default 5) joins and leaves
//     of a fourth node in each of the two ways a node joins (meshModes); the steady state
//     of the three agents;
//  2. the mesh: the other nodes' namespaces made, their Node objects created in bulk and
//     their agents started with some parallelism; time until every node routes every other
//     node's pod CIDRs (the kernel's route notifications) and until the last session is up
//     (the agents' "Peer Up" log lines), checked against every agent's own neighbor list;
//  3. the same joins and leaves with the mesh of N nodes;
//  4. the steady state of the N agents: CPU (utime+stime from /proc/PID/stat) over
//     AGENTBENCH_STEADY_SECONDS (default 60) and VmRSS, per agent.
//
// A leave is the deletion of the joined node's Node object. Per join and leave, besides the
// times: what it cost, as far as it shows from outside the agents: the reconcile passes of
// every agent (podroute_reconcile_duration_seconds), the route changes the kernel announced
// in every node, and the BGP messages on the wire, counted from the frames crossing the
// fabric bridge (the agents expose no per-peer message counters). The join is also taken
// apart from the agents' logs: when each running agent added the new neighbor, when the new
// agent added its neighbors, and when its sessions came up.
func BenchmarkMeshScale(b *testing.B) {
	total := envInt("AGENTBENCH_MESH_NODES", 50)
	rounds := envInt("AGENTBENCH_MESH_ROUNDS", 5)
	steady := time.Duration(envInt("AGENTBENCH_STEADY_SECONDS", 60)) * time.Second
	startDelay := time.Duration(envInt("AGENTBENCH_MESH_START_DELAY_MS", 3000)) * time.Millisecond
	const baseNodes = 3
	// Joining nodes take the indexes after the mesh's, so that (like the mesh's own last
	// node) the new node has the greatest address and its neighbors dial it.
	if total <= baseNodes || total+4*rounds > 200 {
		b.Fatalf("AGENTBENCH_MESH_NODES=%d, AGENTBENCH_MESH_ROUNDS=%d: want %d < nodes and nodes + 4*rounds <= 200 (lab node indexes)", total, rounds, baseNodes)
	}
	headroom := meshHeadroom(b, total)
	load := header(b, fmt.Sprintf("Mesh scale: a full iBGP mesh of %d podroute-agents, against %d", total, baseNodes))
	fmt.Println(headroom)
	fmt.Println()
	l := lab.New(b, lab.Options{AgentArgs: []string{"--hold-time", "9s", "--keepalive", "3s"}})
	wire := captureBGP(b, l.Fabric)

	var nodes []*lab.Node
	var watches []*routeWatch
	for i := 1; i <= baseNodes; i++ {
		n := l.AddNode(b, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i})
		nodes = append(nodes, n)
		watches = append(watches, watchRoutes(b, n.NetNS))
	}
	for _, n := range nodes {
		ready(b, n)
	}
	meshCounted(b, nodes)

	next := total + 1
	small := &meshPhase{nodes: baseNodes}
	for r := range rounds {
		for m := range meshModes {
			j := meshJoinOnce(b, l, nodes, watches, wire, fmt.Sprintf("join-%d", next), next, m == 0, startDelay)
			small.modes[m] = append(small.modes[m], j)
			fmt.Printf("%d nodes, round %d, %s: %s\n", baseNodes, r+1, meshModes[m], j)
			next++
		}
	}
	small.steady = meshSteady(b, nodes, steady)
	fmt.Printf("%d nodes, steady: %s\n", baseNodes, small.steady)

	big := &meshPhase{nodes: total}
	big.up = meshBringUp(b, l, &nodes, &watches, total)
	fmt.Printf("%d nodes up: %s\n", total, big.up)
	for r := range rounds {
		for m := range meshModes {
			j := meshJoinOnce(b, l, nodes, watches, wire, fmt.Sprintf("join-%d", next), next, m == 0, startDelay)
			big.modes[m] = append(big.modes[m], j)
			fmt.Printf("%d nodes, round %d, %s: %s\n", total, r+1, meshModes[m], j)
			next++
		}
	}
	big.steady = meshSteady(b, nodes, steady)
	fmt.Printf("%d nodes, steady: %s\n", total, big.steady)
	loadEnd := loadavg()

	fmt.Printf("\n%d joins and leaves per mesh size and mode; agent start delay %v; hold time 9 s, keepalive 3 s, connect retry 5 s; steady window %v; load average %s at start, %s at end\n",
		rounds, startDelay, steady, load, loadEnd)
	meshTable(small, big)

	big.joins = big.modes[0]
	b.ReportMetric(median(big.durs(func(j meshJoin) time.Duration { return j.add })).Seconds(), "join-median-s")
	b.ReportMetric(pct(big.durs(func(j meshJoin) time.Duration { return j.add }), 100).Seconds(), "join-worst-s")
	big.joins = big.modes[1]
	b.ReportMetric(median(big.durs(func(j meshJoin) time.Duration { return j.add })).Seconds(), "start-join-median-s")
	b.ReportMetric(big.up.routes.Seconds(), "mesh-up-s")
	b.ReportMetric(median(big.steady.cpu), "cpu-median-pct")
	b.ReportMetric(float64(median(big.steady.rss))/1024, "rss-median-MiB")
	for _, ph := range []*meshPhase{small, big} {
		ph.joins = ph.modes[0]
		add := ph.durs(func(j meshJoin) time.Duration { return j.add })
		recordScale(b, scaleplot.Point{
			Topology: "full mesh", Nodes: ph.nodes,
			JoinMedian: median(add).Seconds(), JoinWorst: pct(add, 100).Seconds(),
			MemoryMiB: map[string]float64{
				"agent":                float64(median(ph.steady.rss)) / 1024,
				"agent, own (RssAnon)": float64(median(ph.steady.anon)) / 1024,
			},
		})
	}
}

// meshHeadroom checks memory and file descriptors for n agents (about 40 MiB and 100
// descriptors each, 4 descriptors per node in this process) and raises this process's
// descriptor limit to its hard limit when that is needed; it describes the headroom.
func meshHeadroom(b *testing.B, n int) string {
	b.Helper()
	avail := 0
	if mi, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(mi), "\n") {
			if rest, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
				avail, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			}
		}
	}
	const perAgentKiB, apiServerKiB = 64 << 10, 1 << 20
	if need := n*perAgentKiB + apiServerKiB; avail > 0 && avail < need {
		b.Fatalf("%d agents need about %s MiB (%s each, the control plane %s); %s MiB available: lower AGENTBENCH_MESH_NODES",
			n, mib(need), mib(perAgentKiB), mib(apiServerKiB), mib(avail))
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("RLIMIT_NOFILE: %v", err)
	}
	// Agents inherit the limit: each holds a socket per session, its API connections, logs.
	need := uint64(n*128 + 1024)
	if lim.Cur < need && lim.Max > lim.Cur {
		lim.Cur = min(lim.Max, max(need, lim.Cur))
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			b.Fatalf("raise RLIMIT_NOFILE to %d: %v", lim.Cur, err)
		}
	}
	if lim.Cur < need {
		b.Fatalf("RLIMIT_NOFILE %d (hard %d) is below the %d that %d agents need: raise it (ulimit -n)", lim.Cur, lim.Max, need, n)
	}
	neigh := raiseNeighbourTables(b, n)
	return fmt.Sprintf("Headroom: %s MiB available (%d agents at up to %s MiB each need %s), RLIMIT_NOFILE %d (%d needed); %s.",
		mib(avail), n, mib(perAgentKiB), mib(n*perAgentKiB+apiServerKiB), lim.Cur, need, neigh)
}

// raiseNeighbourTables makes room in the kernel's ARP and NDP tables for a mesh of n nodes.
// The tables are shared by every network namespace on the machine, and their limit
// (gc_thresh3, 1024 entries by default, settable only from the initial namespace) would
// hold about 30 fully meshed nodes: each node has an entry for each other node. Beyond it
// the kernel refuses new neighbours ("neighbor table overflow", ENOBUFS), and sessions and
// API connections stall: a limit of the lab, not of podroute, where every node is a
// machine with its own table. The thresholds are only raised, and restored at cleanup.
func raiseNeighbourTables(b *testing.B, n int) string {
	b.Helper()
	need := (n + 10) * (n + 10) // every node, the joining ones and the fabric, to every other
	want := map[string]int{"gc_thresh1": need, "gc_thresh2": 2 * need, "gc_thresh3": 4 * need}
	var raised []string
	for _, fam := range []string{"ipv4", "ipv6"} {
		// gc_thresh3 first when raising: the kernel wants thresh1 <= thresh2 <= thresh3.
		for _, k := range []string{"gc_thresh3", "gc_thresh2", "gc_thresh1"} {
			path := fmt.Sprintf("/proc/sys/net/%s/neigh/default/%s", fam, k)
			raw, err := os.ReadFile(path)
			if err != nil {
				b.Fatalf("neighbour table limit: %v", err)
			}
			cur, err := strconv.Atoi(strings.TrimSpace(string(raw)))
			if err != nil {
				b.Fatalf("neighbour table limit %s: %q: %v", path, raw, err)
			}
			if cur >= want[k] {
				continue
			}
			if err := os.WriteFile(path, []byte(strconv.Itoa(want[k])), 0o644); err != nil {
				b.Fatalf("raise the neighbour table limit %s from %d to %d: %v", path, cur, want[k], err)
			}
			raised = append(raised, fmt.Sprintf("%s.%s %d->%d", fam, k, cur, want[k]))
			b.Cleanup(func() {
				if err := os.WriteFile(path, []byte(strconv.Itoa(cur)), 0o644); err != nil {
					b.Errorf("restore %s to %d: %v", path, cur, err)
				}
			})
		}
	}
	if len(raised) == 0 {
		return fmt.Sprintf("neighbour tables hold %d entries or more already", need)
	}
	return "neighbour tables raised for the run (shared by every namespace): " + strings.Join(raised, ", ")
}

// meshCounted waits until every node has a route to each other node's pod CIDRs and no
// other: one netlink dump per node (meshed's `ip route` per pair is too slow for 50 nodes).
// The joins check the routes' next hops themselves.
func meshCounted(b *testing.B, nodes []*lab.Node) {
	b.Helper()
	want := 0
	for _, o := range nodes[1:] {
		want += len(o.PodCIDRs)
	}
	lab.Eventually(b, converge, "mesh routes", func() error {
		for _, n := range nodes {
			got, err := countRoutes(n.NetNS)
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("%s has %d routes via other nodes, want %d", n.Name, got, want)
			}
		}
		return nil
	})
}

// meshPhase is one mesh size's figures.
type meshPhase struct {
	nodes int
	up    meshUp
	// joins is the current mode's rounds (see meshTable); modes holds each mode's.
	joins  []meshJoin
	modes  [2][]meshJoin
	steady meshSteadyState
}

// meshModes are the two ways a node joins: its agent runs (and waits for its Node object)
// when the Node object is created; or the Node object exists, every running agent has
// added the new neighbor (and dials it), and its agent starts AGENTBENCH_MESH_START_DELAY_MS
// (default 3000) later, as when a kubelet registers its node and the agent's DaemonSet pod
// starts a few seconds after. Times are taken from the Node create call, or from the agent
// start.
var meshModes = [2]string{"agent running, then Node object", "Node object, then agent start"}

func (p *meshPhase) durs(get func(meshJoin) time.Duration) []time.Duration {
	var out []time.Duration
	for _, j := range p.joins {
		out = append(out, get(j))
	}
	return out
}

// ints gathers a per-agent count over every round.
func (p *meshPhase) ints(get func(meshJoin) []int) []int64 {
	var out []int64
	for _, j := range p.joins {
		for _, v := range get(j) {
			out = append(out, int64(v))
		}
	}
	return out
}

// meshJoin is one round: a node joins, then leaves.
type meshJoin struct {
	add       time.Duration // Node created -> its routes in the kernel of the last other node
	addMedian time.Duration // ... of the median other node
	learn     time.Duration // Node created -> the new node routes every other node
	del       time.Duration // Node deleted -> its routes gone from the last other node
	delMedian time.Duration
	// From the agents' logs: each running agent's "BGP neighbor added" for the new node,
	// since the Node create call; since t0 (the create call, or the agent start): the new
	// agent's last "BGP neighbor added", its first and last "Peer Up", and how often it
	// turned a neighbor's connection away for want of its configuration ("Can't find
	// configuration for a new passive connection").
	neighborAdded           []time.Duration
	newAdded                time.Duration
	firstPeerUp, lastPeerUp time.Duration
	peersUp                 int
	refusedConns            int
	startLead               time.Duration // Node created -> agent started (agent-start mode)
	created                 time.Time     // the create call, to read the agents' logs by
	// Work: per running agent, reconcile passes and the time they took, from the create call
	// to 3 s after the join converged (join) and from the delete call to 3 s after the
	// routes were gone (leave); the new agent's passes during the join.
	joinPasses, leavePasses []int
	joinPassTime            time.Duration // every running agent's, summed
	newPasses               int
	// CPU time (utime+stime) of each running agent over the same windows, ms: a Node event's
	// cost where every node has its own CPU, plus the few ms of keepalives in the window.
	joinCPU, leaveCPU []int
	// Route changes the kernel announced in each running node over the same windows.
	joinRoutes, leaveRoutes []int
	// BGP messages on the fabric over the same windows.
	joinWire, leaveWire wireDelta
}

func (j meshJoin) String() string {
	return fmt.Sprintf("(Node created at %s, agent started %s ms after) routed everywhere %s ms (median node %s), new node routes the others %s ms, removed everywhere %s ms; neighbor added by the others %s..%s ms, by the new agent (last) %s ms; sessions up %s..%s ms (%d), connections refused by the new agent %d; passes per agent (join) %d..%d, CPU per agent (join) median %d ms; updates: new->others %d, others->new %d, among the others %d",
		j.created.UTC().Format("15:04:05.000"), ms(j.startLead), ms(j.add), ms(j.addMedian), ms(j.learn), ms(j.del), ms(slices.Min(j.neighborAdded)), ms(slices.Max(j.neighborAdded)), ms(j.newAdded),
		ms(j.firstPeerUp), ms(j.lastPeerUp), j.peersUp, j.refusedConns, slices.Min(j.joinPasses), slices.Max(j.joinPasses), median(toInt64(j.joinCPU)),
		j.joinWire.fromNew[bgpUpdate], j.joinWire.toNew[bgpUpdate], j.joinWire.among[bgpUpdate])
}

func toInt64(xs []int) []int64 {
	out := make([]int64, len(xs))
	for i, x := range xs {
		out[i] = int64(x)
	}
	return out
}

// meshJoinOnce: a new node joins the mesh of nodes (meshModes: agentFirst, its agent runs
// when its Node object is created; else its Node object is created, and its agent started
// once every running agent has added it), then leaves (its Node object deleted) and is
// removed.
func meshJoinOnce(b *testing.B, l *lab.Lab, nodes []*lab.Node, watches []*routeWatch, wire *bgpWire, name string, index int, agentFirst bool, startDelay time.Duration) meshJoin {
	b.Helper()
	n := l.AddNode(b, name, lab.NodeOptions{Index: index, NoNodeObject: true, NoAgent: !agentFirst})
	own := watchRoutes(b, n.NetNS)
	lab.Eventually(b, converge, name+" agent waiting for its Node", func() error {
		if !agentFirst {
			return nil
		}
		st, err := n.Status()
		if err != nil {
			return err
		}
		if !strings.Contains(strings.Join(st.NotReadyReasons, " "), "no such Node") {
			return fmt.Errorf("%s: not yet waiting for its Node object: %v", name, st.NotReadyReasons)
		}
		return nil
	})
	via := map[netip.Prefix]netip.Addr{}
	for _, p := range n.PodCIDRs {
		via[p] = n.IPv4
		if p.Addr().Is6() {
			via[p] = n.IPv6
		}
	}
	mine := func(e routeEvent) bool { _, ok := via[e.prefix]; return ok }
	offs := logOffsets(nodes)
	newOff := n.Agent.LogSize()
	m0 := allReconcileMetrics(b, nodes)
	c0 := allCPU(b, nodes)
	var new0 reconcileSums // an agent not started yet has made no passes
	if agentFirst {
		new0 = reconcileMetrics(b, n)
	}
	w0 := wire.snapshot()
	ctx, cancel := context.WithTimeout(context.Background(), converge)
	defer cancel()

	var res meshJoin
	created := time.Now()
	res.created = created
	if err := n.CreateNodeObject(); err != nil {
		b.Fatal(err)
	}
	if !agentFirst {
		lab.Eventually(b, converge, "every running agent adding neighbor "+n.IPv4.String(), func() error {
			for i, o := range nodes {
				if logLineWith(o.Agent.LogSince(offs[i]), "BGP neighbor added", "peer", n.IPv4.String()).IsZero() {
					return fmt.Errorf("%s has not added neighbor %s", o.Name, n.IPv4)
				}
			}
			return nil
		})
		time.Sleep(startDelay)
		res.startLead = time.Since(created)
		if err := n.Agent.Start(); err != nil {
			b.Fatal(err)
		}
	}
	t0 := created.Add(res.startLead)
	var ats []time.Duration
	for i, w := range watches {
		_, last, err := w.countAfter(ctx, t0, len(via), func(e routeEvent) bool { return e.add && via[e.prefix] == e.via })
		if err != nil {
			b.Fatalf("%s: its routes on %s: %v\nagent log of %s:\n%s", name, nodes[i].Name, err, name, tail(n.Agent.LogSince(newOff), 40))
		}
		ats = append(ats, last.Sub(t0))
	}
	res.add, res.addMedian = pct(ats, 100), median(ats)
	others := map[netip.Prefix]netip.Addr{}
	for _, o := range nodes {
		for _, p := range o.PodCIDRs {
			others[p] = o.IPv4
			if p.Addr().Is6() {
				others[p] = o.IPv6
			}
		}
	}
	_, learned, err := own.countAfter(ctx, t0, len(others), func(e routeEvent) bool { return e.add && others[e.prefix] == e.via })
	if err != nil {
		b.Fatalf("%s: routes to the other nodes: %v\nits agent log:\n%s", name, err, tail(n.Agent.LogSince(newOff), 40))
	}
	res.learn = learned.Sub(t0)
	done := t0.Add(max(res.add, res.learn))
	time.Sleep(3 * time.Second)
	m1 := allReconcileMetrics(b, nodes)
	c1 := allCPU(b, nodes)
	new1 := reconcileMetrics(b, n)
	w1 := wire.snapshot()
	res.joinWire = w1.delta(w0, n)
	res.newPasses = new1.count - new0.count
	for i := range nodes {
		res.joinPasses = append(res.joinPasses, m1[i].count-m0[i].count)
		res.joinPassTime += m1[i].sum - m0[i].sum
		res.joinRoutes = append(res.joinRoutes, watches[i].count(t0, done.Add(3*time.Second)))
		res.joinCPU = append(res.joinCPU, int(c1[i]-c0[i])*1000/clkTck)
	}
	// The join taken apart, from the logs.
	for i, o := range nodes {
		at := logLineWith(o.Agent.LogSince(offs[i]), "BGP neighbor added", "peer", n.IPv4.String())
		if at.IsZero() {
			b.Fatalf("%s never logged adding neighbor %s (%s)", o.Name, n.IPv4, name)
		}
		res.neighborAdded = append(res.neighborAdded, at.Sub(created))
	}
	newLog := n.Agent.LogSince(newOff)
	res.newAdded = lastLogLine(newLog, "BGP neighbor added").Sub(t0)
	ups := logLinesKeyed(newLog, "Peer Up", "Key")
	for _, at := range ups {
		d := at.Sub(t0)
		if res.peersUp == 0 || d < res.firstPeerUp {
			res.firstPeerUp = d
		}
		res.lastPeerUp = max(res.lastPeerUp, d)
		res.peersUp++
	}
	res.refusedConns = strings.Count(newLog, `"msg":"Can't find configuration for a new passive connection"`)
	if res.peersUp != len(nodes) {
		b.Fatalf("%s: %d sessions came up (Peer Up in its log), want %d", name, res.peersUp, len(nodes))
	}

	m1 = allReconcileMetrics(b, nodes)
	c1 = allCPU(b, nodes)
	w1 = wire.snapshot()
	t1 := time.Now()
	if err := n.DeleteNodeObject(); err != nil {
		b.Fatal(err)
	}
	ats = ats[:0]
	for i, w := range watches {
		_, last, err := w.countAfter(ctx, t1, len(via), func(e routeEvent) bool { return !e.add && mine(e) })
		if err != nil {
			b.Fatalf("%s: its routes still on %s: %v", name, nodes[i].Name, err)
		}
		ats = append(ats, last.Sub(t1))
	}
	res.del, res.delMedian = pct(ats, 100), median(ats)
	time.Sleep(3 * time.Second)
	m2 := allReconcileMetrics(b, nodes)
	c2 := allCPU(b, nodes)
	res.leaveWire = wire.snapshot().delta(w1, n)
	for i := range nodes {
		res.leavePasses = append(res.leavePasses, m2[i].count-m1[i].count)
		res.leaveRoutes = append(res.leaveRoutes, watches[i].count(t1, t1.Add(res.del+3*time.Second)))
		res.leaveCPU = append(res.leaveCPU, int(c2[i]-c1[i])*1000/clkTck)
	}
	if err := n.Remove(); err != nil {
		b.Fatal(err)
	}
	// The next round starts from the converged mesh.
	meshCounted(b, nodes)
	return res
}

// meshUp is the bring-up of the mesh from the baseline's nodes.
type meshUp struct {
	namespaces time.Duration // the new nodes' namespaces and uplinks (not timed below)
	objects    time.Duration // first Node create call -> the last returned
	agents     time.Duration // ... -> the last agent started
	lastAdded  time.Duration // ... -> the last "BGP neighbor added" of any agent
	sessions   time.Duration // ... -> the last "Peer Up" of any agent
	routes     time.Duration // ... -> every node routes every other node
	medianNode time.Duration // ... -> the median node routes every other node
	sessionsUp int           // established, by every agent's neighbor list, counted once each
}

func (u meshUp) String() string {
	return fmt.Sprintf("namespaces %s ms (untimed); from the first Node create: objects %s ms, agents started %s ms, last neighbor added %s ms, last session up %s ms, every node routes every other %s ms (median node %s ms); %d sessions established",
		ms(u.namespaces), ms(u.objects), ms(u.agents), ms(u.lastAdded), ms(u.sessions), ms(u.routes), ms(u.medianNode), u.sessionsUp)
}

// meshBringUp grows the mesh to total nodes: namespaces first, then (timed) the Node
// objects in bulk and the agents started, eight at a time.
func meshBringUp(b *testing.B, l *lab.Lab, nodes *[]*lab.Node, watches *[]*routeWatch, total int) meshUp {
	b.Helper()
	var u meshUp
	old := len(*nodes)
	ts := time.Now()
	for i := old + 1; i <= total; i++ {
		n := l.AddNode(b, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i, NoNodeObject: true, NoAgent: true})
		*nodes = append(*nodes, n)
		*watches = append(*watches, watchRoutes(b, n.NetNS))
	}
	u.namespaces = time.Since(ts)
	offs := logOffsets(*nodes)
	fresh := (*nodes)[old:]

	const parallel = 8
	t0 := time.Now()
	if err := inParallel(fresh, parallel, (*lab.Node).CreateNodeObject); err != nil {
		b.Fatalf("create Node objects: %v", err)
	}
	u.objects = time.Since(t0)
	if err := inParallel(fresh, parallel, func(n *lab.Node) error { return n.Agent.Start() }); err != nil {
		b.Fatalf("start agents: %v", err)
	}
	u.agents = time.Since(t0)

	ctx, cancel := context.WithTimeout(context.Background(), 5*converge)
	defer cancel()
	var ats []time.Duration
	for i, n := range *nodes {
		want := map[netip.Prefix]netip.Addr{}
		for j, o := range *nodes {
			// The baseline nodes route each other already.
			if o == n || (i < old && j < old) {
				continue
			}
			for _, p := range o.PodCIDRs {
				want[p] = o.IPv4
				if p.Addr().Is6() {
					want[p] = o.IPv6
				}
			}
		}
		_, last, err := (*watches)[i].countAfter(ctx, t0, len(want), func(e routeEvent) bool { return e.add && want[e.prefix] == e.via })
		if err != nil {
			b.Fatalf("mesh of %d: routes on %s: %v\nits agent log:\n%s", total, n.Name, err, tail(n.Agent.LogSince(offs[i]), 40))
		}
		ats = append(ats, last.Sub(t0))
	}
	u.routes, u.medianNode = pct(ats, 100), median(ats)
	meshCounted(b, *nodes)
	for i, n := range *nodes {
		log := n.Agent.LogSince(offs[i])
		if at := lastLogLine(log, "BGP neighbor added"); !at.IsZero() {
			u.lastAdded = max(u.lastAdded, at.Sub(t0))
		}
		for _, at := range logLinesKeyed(log, "Peer Up", "Key") {
			u.sessions = max(u.sessions, at.Sub(t0))
		}
	}
	u.sessionsUp = meshSessions(b, *nodes)
	return u
}

// meshSessions checks that every agent has a session established with every other node
// (podroutectl bgp neighbors) and returns the number of sessions, each counted once.
func meshSessions(b *testing.B, nodes []*lab.Node) int {
	b.Helper()
	up := 0
	for _, n := range nodes {
		ns, err := n.Neighbors()
		if err != nil {
			b.Fatal(err)
		}
		est := 0
		for _, x := range ns {
			if x.State == "established" {
				est++
			}
		}
		if est != len(nodes)-1 {
			b.Fatalf("%s: %d of %d sessions established: %+v", n.Name, est, len(nodes)-1, ns)
		}
		up += est
	}
	return up / 2
}

// inParallel calls f on every node, at most n at a time, and joins their errors.
func inParallel(nodes []*lab.Node, n int, f func(*lab.Node) error) error {
	sem := make(chan struct{}, n)
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, node := range nodes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(node); err != nil {
				errs[i] = fmt.Errorf("%s: %w", node.Name, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// meshSteadyState is every agent over a quiet window.
type meshSteadyState struct {
	window     time.Duration
	cpu        []float64 // % of one CPU, per agent
	rss        []int64   // VmRSS KiB, per agent, at the end
	anon       []int64   // RssAnon KiB (the agent's own memory, without its executable's pages)
	passes     []int64   // reconcile passes in the window, per agent
	sessionsUp int
}

func (s meshSteadyState) String() string {
	return fmt.Sprintf("CPU median %.2f%% max %.2f%% of one CPU, VmRSS median %s max %s MiB, RssAnon median %s max %s MiB, reconcile passes median %d max %d, %d sessions up",
		median(s.cpu), slices.Max(s.cpu), mib(int(median(s.rss))), mib(int(slices.Max(s.rss))), mib(int(median(s.anon))), mib(int(slices.Max(s.anon))),
		median(s.passes), slices.Max(s.passes), s.sessionsUp)
}

// meshSteady lets the mesh settle for 10 s, then measures every agent over window.
func meshSteady(b *testing.B, nodes []*lab.Node, window time.Duration) meshSteadyState {
	b.Helper()
	time.Sleep(10 * time.Second)
	s := meshSteadyState{}
	pids := make([]int, len(nodes))
	t0 := make([]int64, len(nodes))
	m0 := allReconcileMetrics(b, nodes)
	start := time.Now()
	for i, n := range nodes {
		pids[i] = n.Agent.PID()
		var err error
		if t0[i], err = cpuTicks(pids[i]); err != nil {
			b.Fatalf("%s: %v", n.Name, err)
		}
	}
	time.Sleep(window)
	for i, n := range nodes {
		t1, err := cpuTicks(pids[i])
		if err != nil {
			b.Fatalf("%s: %v", n.Name, err)
		}
		s.cpu = append(s.cpu, 100*float64(t1-t0[i])/clkTck/time.Since(start).Seconds())
	}
	s.window = time.Since(start)
	m1 := allReconcileMetrics(b, nodes)
	for i, n := range nodes {
		m, err := memKiB(pids[i])
		if err != nil {
			b.Fatalf("%s: %v", n.Name, err)
		}
		s.rss, s.anon = append(s.rss, int64(m.rss)), append(s.anon, int64(m.anon))
		s.passes = append(s.passes, int64(m1[i].count-m0[i].count))
	}
	s.sessionsUp = meshSessions(b, nodes)
	return s
}

func allReconcileMetrics(b *testing.B, nodes []*lab.Node) []reconcileSums {
	b.Helper()
	out := make([]reconcileSums, len(nodes))
	for i, n := range nodes {
		out[i] = reconcileMetrics(b, n)
	}
	return out
}

// allCPU is every agent's utime+stime, in clock ticks.
func allCPU(b *testing.B, nodes []*lab.Node) []int64 {
	b.Helper()
	out := make([]int64, len(nodes))
	for i, n := range nodes {
		var err error
		if out[i], err = cpuTicks(n.Agent.PID()); err != nil {
			b.Fatalf("%s: %v", n.Name, err)
		}
	}
	return out
}

func logOffsets(nodes []*lab.Node) []int64 {
	out := make([]int64, len(nodes))
	for i, n := range nodes {
		out[i] = n.Agent.LogSize()
	}
	return out
}

// logLineWith is the time of the first JSON log line with message msg whose key has value.
func logLineWith(log, msg, key, value string) time.Time {
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, `"msg":"`+msg+`"`) {
			continue
		}
		var e map[string]any
		if json.Unmarshal([]byte(l), &e) != nil || fmt.Sprint(e[key]) != value {
			continue
		}
		if at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(e["time"])); err == nil {
			return at
		}
	}
	return time.Time{}
}

// logLinesKeyed is, for each value of key, the time of the last JSON log line with message
// msg carrying it.
func logLinesKeyed(log, msg, key string) map[string]time.Time {
	out := map[string]time.Time{}
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, `"msg":"`+msg+`"`) {
			continue
		}
		var e map[string]any
		if json.Unmarshal([]byte(l), &e) != nil {
			continue
		}
		if at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(e["time"])); err == nil {
			out[fmt.Sprint(e[key])] = at
		}
	}
	return out
}

// count is the number of route changes the kernel announced from t0 up to t1.
func (w *routeWatch) count(t0, t1 time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, e := range w.ev {
		if !e.at.Before(t0) && !e.at.After(t1) {
			n++
		}
	}
	return n
}

// BGP message types (RFC 4271, RFC 2918).
const (
	bgpOpen = iota + 1
	bgpUpdate
	bgpNotification
	bgpKeepalive
	bgpRouteRefresh
	bgpTypes
)

// bgpWire counts the BGP messages crossing the fabric, by type, per (source, destination)
// address pair. It reads every frame the fabric namespace's interfaces receive (a packet
// socket: each frame between two nodes is seen once, entering the bridge from the sender's
// port) and looks for BGP message headers in TCP segments to or from port 179. A header
// split across two segments is missed; BGP's messages here are far smaller than a segment.
type bgpWire struct {
	mu     sync.Mutex
	counts map[[2]netip.Addr]*[bgpTypes]int
	err    error
}

func captureBGP(b *testing.B, fabric *lab.NetNS) *bgpWire {
	b.Helper()
	var fd int
	err := fabric.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		return err
	})
	if err != nil {
		b.Fatalf("packet socket in %s: %v", fabric.Name, err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
	tv := unix.Timeval{Usec: 200_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		b.Fatal(err)
	}
	w := &bgpWire{counts: map[[2]netip.Addr]*[bgpTypes]int{}}
	stop := make(chan struct{})
	stopped := make(chan struct{})
	b.Cleanup(func() {
		close(stop)
		<-stopped
		unix.Close(fd)
	})
	go func() {
		defer close(stopped)
		buf := make([]byte, 256<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				w.mu.Lock()
				w.err = err
				w.mu.Unlock()
				return
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			w.frame(buf[:n])
		}
	}()
	return w
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// frame counts the BGP messages in one Ethernet frame.
func (w *bgpWire) frame(f []byte) {
	if len(f) < 14 {
		return
	}
	var src, dst netip.Addr
	var l4 []byte
	switch binary.BigEndian.Uint16(f[12:14]) {
	case 0x0800:
		ip := f[14:]
		if len(ip) < 20 || ip[9] != unix.IPPROTO_TCP {
			return
		}
		hl := int(ip[0]&0x0f) * 4
		tl := int(binary.BigEndian.Uint16(ip[2:4]))
		if hl < 20 || tl > len(ip) || hl > tl {
			return
		}
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		l4 = ip[hl:tl]
	case 0x86dd:
		ip := f[14:]
		if len(ip) < 40 || ip[6] != unix.IPPROTO_TCP {
			return
		}
		pl := int(binary.BigEndian.Uint16(ip[4:6]))
		if 40+pl > len(ip) {
			return
		}
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		l4 = ip[40 : 40+pl]
	default:
		return
	}
	if len(l4) < 20 {
		return
	}
	sp, dp := binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
	if sp != 179 && dp != 179 {
		return
	}
	off := int(l4[12]>>4) * 4
	if off < 20 || off > len(l4) {
		return
	}
	payload := l4[off:]
	var seen [bgpTypes]int
	found := false
	for i := 0; i+19 <= len(payload); {
		if !marker(payload[i : i+16]) {
			i++
			continue
		}
		t := payload[i+18]
		if t >= bgpOpen && t < bgpTypes {
			seen[t]++
			found = true
		}
		length := int(binary.BigEndian.Uint16(payload[i+16 : i+18]))
		i += max(length, 19)
	}
	if !found {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	k := [2]netip.Addr{src, dst}
	c := w.counts[k]
	if c == nil {
		c = new([bgpTypes]int)
		w.counts[k] = c
	}
	for t, v := range seen {
		c[t] += v
	}
}

func marker(b []byte) bool {
	for _, x := range b {
		if x != 0xff {
			return false
		}
	}
	return true
}

type wireSnapshot map[[2]netip.Addr][bgpTypes]int

func (w *bgpWire) snapshot() wireSnapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := wireSnapshot{}
	for k, c := range w.counts {
		out[k] = *c
	}
	return out
}

// wireDelta is the BGP messages, by type, between two snapshots, as seen from node n: sent
// by it, sent to it, and exchanged among the other nodes.
type wireDelta struct {
	fromNew, toNew, among [bgpTypes]int
}

func (s wireSnapshot) delta(before wireSnapshot, n *lab.Node) wireDelta {
	var d wireDelta
	isNew := func(a netip.Addr) bool { return a == n.IPv4 || a == n.IPv6 }
	for k, c := range s {
		b := before[k]
		var into *[bgpTypes]int
		switch {
		case isNew(k[0]):
			into = &d.fromNew
		case isNew(k[1]):
			into = &d.toNew
		default:
			into = &d.among
		}
		for t := range c {
			into[t] += c[t] - b[t]
		}
	}
	return d
}

// meshTable prints the figures of both mesh sizes side by side.
func meshTable(small, big *meshPhase) {
	ratio := func(x, y float64) string {
		if y == 0 {
			return ""
		}
		return fmt.Sprintf("%.2f", x/y)
	}
	durRow := func(what string, get func(meshJoin) time.Duration, bold bool) {
		s, g := small.durs(get), big.durs(get)
		f := "| %s | %s / %s | %s / %s | %s |\n"
		if bold {
			f = "| **%s** | %s / %s | **%s** / %s | **%s** |\n"
		}
		fmt.Printf(f, what, ms(median(s)), ms(pct(s, 100)), ms(median(g)), ms(pct(g, 100)), ratio(float64(median(g)), float64(median(s))))
	}
	allDurs := func(p *meshPhase, get func(meshJoin) []time.Duration) []time.Duration {
		var out []time.Duration
		for _, j := range p.joins {
			out = append(out, get(j)...)
		}
		return out
	}
	intRow := func(what string, get func(meshJoin) []int) {
		s, g := small.ints(get), big.ints(get)
		fmt.Printf("| %s | %d / %d | %d / %d | %s |\n", what, median(s), slices.Max(s), median(g), slices.Max(g), ratio(float64(median(g)), float64(median(s))))
	}
	wireRow := func(what string, get func(meshJoin) int) {
		s := small.ints(func(j meshJoin) []int { return []int{get(j)} })
		g := big.ints(func(j meshJoin) []int { return []int{get(j)} })
		fmt.Printf("| %s | %d / %d | %d / %d | %s |\n", what, median(s), slices.Max(s), median(g), slices.Max(g), ratio(float64(median(g)), float64(median(s))))
	}

	for m, mode := range meshModes {
		small.joins, big.joins = small.modes[m], big.modes[m]
		from := "Node created"
		if m == 1 {
			from = "agent started"
		}
		fmt.Printf("\n%s:\n\n| per join or leave (median / worst of the rounds; ms unless said) | %d nodes (baseline) | %d nodes | ratio of medians |\n", mode, small.nodes, big.nodes)
		fmt.Println("| --- | ---: | ---: | ---: |")
		if m == 1 {
			durRow("Node created -> agent started (every running agent has added the neighbor, then the start delay)", func(j meshJoin) time.Duration { return j.startLead }, false)
		}
		durRow(from+" -> its routes in every other node's kernel", func(j meshJoin) time.Duration { return j.add }, true)
		durRow(from+" -> its routes in the median other node's kernel", func(j meshJoin) time.Duration { return j.addMedian }, false)
		durRow(from+" -> the new node routes every other node", func(j meshJoin) time.Duration { return j.learn }, true)
		durRow("Node deleted -> its routes gone from every other node", func(j meshJoin) time.Duration { return j.del }, true)
		durRow("Node deleted -> its routes gone from the median other node", func(j meshJoin) time.Duration { return j.delMedian }, false)
		{
			s := allDurs(small, func(j meshJoin) []time.Duration { return j.neighborAdded })
			g := allDurs(big, func(j meshJoin) []time.Duration { return j.neighborAdded })
			fmt.Printf("| Node created -> a running agent logs \"BGP neighbor added\" for it (every agent, every round) | %s / %s | %s / %s | %s |\n",
				ms(median(s)), ms(pct(s, 100)), ms(median(g)), ms(pct(g, 100)), ratio(float64(median(g)), float64(median(s))))
		}
		durRow(from+" -> the new agent's last \"BGP neighbor added\"", func(j meshJoin) time.Duration { return j.newAdded }, false)
		durRow(from+" -> the new agent's first session up (\"Peer Up\")", func(j meshJoin) time.Duration { return j.firstPeerUp }, false)
		durRow(from+" -> the new agent's last session up", func(j meshJoin) time.Duration { return j.lastPeerUp }, false)
		wireRow("connections the new agent turned away (\"Can't find configuration for a new passive connection\")", func(j meshJoin) int { return j.refusedConns })
		intRow("join: reconcile passes per running agent", func(j meshJoin) []int { return j.joinPasses })
		{
			mean := func(p *meshPhase) time.Duration {
				var sum time.Duration
				n := 0
				for _, j := range p.joins {
					sum += j.joinPassTime
					for _, c := range j.joinPasses {
						n += c
					}
				}
				if n == 0 {
					return 0
				}
				return sum / time.Duration(n)
			}
			fmt.Printf("| join: mean reconcile pass of a running agent | %s | %s | %s |\n", ms(mean(small)), ms(mean(big)), ratio(float64(mean(big)), float64(mean(small))))
		}
		wireRow("join: reconcile passes of the new agent", func(j meshJoin) int { return j.newPasses })
		intRow("leave: reconcile passes per running agent", func(j meshJoin) []int { return j.leavePasses })
		intRow("join: CPU of a running agent, ms (create call to 3 s after convergence)", func(j meshJoin) []int { return j.joinCPU })
		intRow("leave: CPU of a running agent, ms (delete call to 3 s after the routes are gone)", func(j meshJoin) []int { return j.leaveCPU })
		intRow("join: kernel route changes per running node", func(j meshJoin) []int { return j.joinRoutes })
		intRow("leave: kernel route changes per running node", func(j meshJoin) []int { return j.leaveRoutes })
		wireRow("join: BGP UPDATEs sent by the new node (all peers)", func(j meshJoin) int { return j.joinWire.fromNew[bgpUpdate] })
		wireRow("join: BGP UPDATEs sent to the new node (all peers)", func(j meshJoin) int { return j.joinWire.toNew[bgpUpdate] })
		wireRow("join: BGP UPDATEs among the running nodes", func(j meshJoin) int { return j.joinWire.among[bgpUpdate] })
		wireRow("join: BGP OPENs on the wire (all)", func(j meshJoin) int {
			return j.joinWire.fromNew[bgpOpen] + j.joinWire.toNew[bgpOpen] + j.joinWire.among[bgpOpen]
		})
		wireRow("join: BGP ROUTE-REFRESHes on the wire (all)", func(j meshJoin) int {
			return j.joinWire.fromNew[bgpRouteRefresh] + j.joinWire.toNew[bgpRouteRefresh] + j.joinWire.among[bgpRouteRefresh]
		})
		wireRow("leave: BGP UPDATEs among the remaining nodes", func(j meshJoin) int { return j.leaveWire.among[bgpUpdate] })
		wireRow("leave: BGP NOTIFICATIONs on the wire (all)", func(j meshJoin) int {
			return j.leaveWire.fromNew[bgpNotification] + j.leaveWire.toNew[bgpNotification] + j.leaveWire.among[bgpNotification]
		})
	}

	fmt.Println()
	fmt.Printf("| steady state, every agent over %v | %d nodes (baseline) | %d nodes | ratio |\n", big.steady.window.Round(time.Second), small.nodes, big.nodes)
	fmt.Println("| --- | ---: | ---: | ---: |")
	fmt.Printf("| **agent CPU, %% of one CPU: median / max** | %.2f / %.2f | **%.2f** / %.2f | **%s** |\n",
		median(small.steady.cpu), slices.Max(small.steady.cpu), median(big.steady.cpu), slices.Max(big.steady.cpu), ratio(median(big.steady.cpu), median(small.steady.cpu)))
	fmt.Printf("| **agent VmRSS, MiB: median / max** | %s / %s | **%s** / %s | **%s** |\n",
		mib(int(median(small.steady.rss))), mib(int(slices.Max(small.steady.rss))), mib(int(median(big.steady.rss))), mib(int(slices.Max(big.steady.rss))),
		ratio(float64(median(big.steady.rss)), float64(median(small.steady.rss))))
	fmt.Printf("| reconcile passes per agent in the window: median / max | %d / %d | %d / %d | |\n",
		median(small.steady.passes), slices.Max(small.steady.passes), median(big.steady.passes), slices.Max(big.steady.passes))
	fmt.Printf("| BGP sessions established (every agent's neighbor list) | %d | %d | |\n", small.steady.sessionsUp, big.steady.sessionsUp)

	u := big.up
	fmt.Println()
	fmt.Printf("| bringing the mesh from %d to %d nodes (from the first Node create call) | s |\n", small.nodes, big.nodes)
	fmt.Println("| --- | ---: |")
	sec := func(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()) }
	fmt.Printf("| the %d new namespaces and uplinks, before (untimed) | %s |\n", big.nodes-small.nodes, sec(u.namespaces))
	fmt.Printf("| Node objects created, 8 calls at a time | %s |\n", sec(u.objects))
	fmt.Printf("| agents started, 8 at a time | %s |\n", sec(u.agents))
	fmt.Printf("| the last \"BGP neighbor added\" of any agent | %s |\n", sec(u.lastAdded))
	fmt.Printf("| the last session up (\"Peer Up\") of any agent | %s |\n", sec(u.sessions))
	fmt.Printf("| the median node routes every other node | %s |\n", sec(u.medianNode))
	fmt.Printf("| **every node routes every other node** | **%s** |\n", sec(u.routes))
	fmt.Printf("| sessions established, by the agents' neighbor lists (want %d) | %d |\n", big.nodes*(big.nodes-1)/2, u.sessionsUp)
}
