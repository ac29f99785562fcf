package agentbench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/test/lab"
)

// clkTck is USER_HZ, the unit of utime and stime in /proc/PID/stat (100 on Linux).
const clkTck = 100

// cpuTicks is utime+stime of a process, in clock ticks.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: count fields after it.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	return ut + st, nil
}

// metricValue is the value of an unlabelled metric (or of one exact labelled series, as in
// `name{label="v"}`) in a Prometheus text exposition; ok is false when absent.
func metricValue(body, series string) (float64, bool) {
	for _, l := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(l, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// sessionPhase is the agent with a given number of external peers.
type sessionPhase struct {
	peers int
	load  [2]string // load average at the phase's start and at the end of its steady window
	// Establishment, from the first BGPPeer create call.
	created      time.Duration // the create calls done
	lastAdded    time.Duration // the agent's log: the last of the new neighbors added
	firstEstab   time.Duration // the speakers' logs: the first new session established
	lastEstab    time.Duration // ... and the last
	routesIn     time.Duration // the last of the new peers' prefixes in the kernel
	lastStatus   time.Duration // the agent's log: its last BGPPeer status write
	statusWrites int           // ... and how many it wrote
	estPasses    int           // reconcile passes from the first create to the routes in
	estPassTime  time.Duration
	// Steady state: a window of steady seconds, a while after the routes are in.
	window        time.Duration
	cpu           time.Duration // the agent's utime+stime in the window
	farmCPU       time.Duration // the speaker farm's (every speaker, one process)
	passes        int           // reconcile passes in the window
	passTime      time.Duration
	rss, hwm      int // KiB, at the end of the window
	goroutines    float64
	heapInuse     float64 // bytes
	established   int     // sessions established by the agent's own count (podroutectl)
	neighborsCall time.Duration
}

// BenchmarkSessionScale: one node's podroute-agent with many external BGP peers. The peers
// are a speaker farm (one process, one GoBGP server per address, speakersEnv) on the
// fabric's segment, each an eBGP router (AS 65099) announcing one /24 of its own; every one
// is a BGPPeer object (created through the API, selecting the node) and the agent dials it.
// The agent runs with its default timers (hold 9 s, keepalive 3 s) and graceful restart on.
// Two phases on the same agent, in order: 3 peers (the baseline), then the peers added up to
// AGENTBENCH_PEERS (default 200). In each: the time from the first create call to every new
// session established (the speakers' logs) and every new prefix in the kernel (a netlink
// subscription), then, AGENTBENCH_STEADY_SECONDS (default 60) later than 10 s after that,
// the agent's CPU time (utime+stime from /proc/PID/stat) over that window, its VmRSS and
// VmHWM, its goroutines and Go heap (go_goroutines, go_memstats_heap_inuse_bytes) and its
// reconcile passes (podroute_reconcile_duration_seconds) from its /metrics.
func BenchmarkSessionScale(b *testing.B) {
	peers := envInt("AGENTBENCH_PEERS", 200)
	steady := time.Duration(envInt("AGENTBENCH_STEADY_SECONDS", 60)) * time.Second
	const basePeers = 3
	if peers <= basePeers || peers > 250 {
		b.Fatalf("AGENTBENCH_PEERS=%d: want %d..250", peers, basePeers+1)
	}
	load := header(b, fmt.Sprintf("Session scale: one podroute-agent with %d external BGP peers, against %d", peers, basePeers))
	l := lab.New(b, lab.Options{ClusterCIDRs: []netip.Prefix{scaleClusterV4, lab.DefaultClusterV6}})
	crds := lab.InstallCRDs(b, l)
	// The agent's own defaults for the timers (the lab's agents otherwise run 3 s / 1 s).
	n := l.AddNode(b, "node-1", lab.NodeOptions{Index: 1, AgentArgs: []string{"--hold-time", "9s", "--keepalive", "3s"}})
	ready(b, n)
	f := startFarm(b, l, n, peers, speakerASN, config.DefaultASN, 9*time.Second, 3*time.Second)
	w := watchRoutes(b, n.NetNS)

	// The API server's first write of a BGPPeer costs it about 2 s (its first request on a
	// new custom resource): pay that outside the timed phases, with a BGPPeer that selects
	// no node.
	warmSpec := config.BGPPeerSpec{
		PeerAddress:  speakerAddr(peers + 1).String(),
		PeerASN:      speakerASN,
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/hostname": "no-such-node"}},
	}
	tw := time.Now()
	if err := crds.CreatePeer("warm-up", warmSpec); err != nil {
		b.Fatal(err)
	}
	warm := time.Since(tw)
	if err := crds.DeletePeer("warm-up"); err != nil {
		b.Fatal(err)
	}
	time.Sleep(3 * time.Second)

	base := sessionRun(b, crds, n, f, w, 1, basePeers, steady)
	big := sessionRun(b, crds, n, f, w, basePeers+1, peers, steady)
	loadEnd := loadavg()

	sec := func(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()) }
	ratio := func(x, y float64) string {
		if y == 0 {
			return ""
		}
		return fmt.Sprintf("%.2f", x/y)
	}
	pctCPU := func(p *sessionPhase) float64 { return 100 * p.cpu.Seconds() / p.window.Seconds() }
	perPass := func(p *sessionPhase) time.Duration {
		if p.passes == 0 {
			return 0
		}
		return p.passTime / time.Duration(p.passes)
	}
	estPerPass := func(p *sessionPhase) time.Duration {
		if p.estPasses == 0 {
			return 0
		}
		return p.estPassTime / time.Duration(p.estPasses)
	}
	fmt.Printf("\nOne node, eBGP peers (AS %d) on the node's segment, one /24 each; hold time 9 s, keepalive 3 s; steady window %v; load average %s at start, %s at end\n\n",
		speakerASN, steady, load, loadEnd)
	fmt.Printf("| measure | %d peers (baseline) | %d peers | ratio |\n", base.peers, big.peers)
	fmt.Println("| --- | ---: | ---: | ---: |")
	fmt.Printf("| new BGPPeers created through the API (count) | %d | %d | |\n", base.peers, big.peers-base.peers)
	fmt.Printf("| first create call -> last create call returned (s) | %s | %s | |\n", sec(base.created), sec(big.created))
	fmt.Printf("| first create call -> last BGPPeer status written by the agent: count of status writes | %s: %d | %s: %d | |\n", sec(base.lastStatus), base.statusWrites, sec(big.lastStatus), big.statusWrites)
	fmt.Printf("| first create call -> last new neighbor added by the agent (s) | %s | %s | |\n", sec(base.lastAdded), sec(big.lastAdded))
	fmt.Printf("| first create call -> first new session established (s) | %s | %s | |\n", sec(base.firstEstab), sec(big.firstEstab))
	fmt.Printf("| first create call -> **all sessions established** (s) | **%s** | **%s** | %s |\n", sec(base.lastEstab), sec(big.lastEstab), ratio(big.lastEstab.Seconds(), base.lastEstab.Seconds()))
	fmt.Printf("| first create call -> all new prefixes in the kernel (s) | %s | %s | %s |\n", sec(base.routesIn), sec(big.routesIn), ratio(big.routesIn.Seconds(), base.routesIn.Seconds()))
	fmt.Printf("| reconcile passes until then: count / mean (ms) | %d / %s | %d / %s | |\n", base.estPasses, ms(estPerPass(base)), big.estPasses, ms(estPerPass(big)))
	fmt.Printf("| sessions established (podroutectl bgp neighbors) | %d | %d | |\n", base.established, big.established)
	fmt.Printf("| steady: agent CPU, utime+stime over the window (%% of one CPU) | %.2f | %.2f | **%s** |\n", pctCPU(base), pctCPU(big), ratio(pctCPU(big), pctCPU(base)))
	fmt.Printf("| steady: agent CPU (ms per minute) | %.0f | %.0f | |\n", base.cpu.Seconds()*1000*60/base.window.Seconds(), big.cpu.Seconds()*1000*60/big.window.Seconds())
	fmt.Printf("| steady: agent VmRSS (MiB) | %s | %s | **%s** |\n", mib(base.rss), mib(big.rss), ratio(float64(big.rss), float64(base.rss)))
	fmt.Printf("| agent VmHWM so far (MiB) | %s | %s | %s |\n", mib(base.hwm), mib(big.hwm), ratio(float64(big.hwm), float64(base.hwm)))
	fmt.Printf("| steady: Go heap in use (MiB) | %.1f | %.1f | %s |\n", base.heapInuse/(1<<20), big.heapInuse/(1<<20), ratio(big.heapInuse, base.heapInuse))
	fmt.Printf("| steady: goroutines | %.0f | %.0f | %s |\n", base.goroutines, big.goroutines, ratio(big.goroutines, base.goroutines))
	fmt.Printf("| steady: reconcile passes in the window: count / mean (ms) | %d / %s | %d / %s | %s |\n", base.passes, ms(perPass(base)), big.passes, ms(perPass(big)), ratio(float64(perPass(big)), float64(perPass(base))))
	fmt.Printf("| `podroutectl bgp neighbors -o json` (ms) | %s | %s | %s |\n", ms(base.neighborsCall), ms(big.neighborsCall), ratio(float64(big.neighborsCall), float64(base.neighborsCall)))
	fmt.Printf("| steady: speaker farm CPU, all %d speakers (%% of one CPU) | %.2f | %.2f | |\n", peers, 100*base.farmCPU.Seconds()/base.window.Seconds(), 100*big.farmCPU.Seconds()/big.window.Seconds())
	fmt.Printf("| the API server's first BGPPeer create (untimed warm-up, s) | %s | | |\n", sec(warm))
	fmt.Printf("| load average at phase start -> end of window | %s -> %s | %s -> %s | |\n", base.load[0], base.load[1], big.load[0], big.load[1])

	b.ReportMetric(big.lastEstab.Seconds(), "established-s")
	b.ReportMetric(pctCPU(big), "cpu-pct")
	b.ReportMetric(pctCPU(big)/pctCPU(base), "cpu-ratio")
	b.ReportMetric(float64(big.rss)/1024, "rss-MiB")
	b.ReportMetric(float64(big.rss)/float64(base.rss), "rss-ratio")
	b.ReportMetric(big.goroutines, "goroutines")
}

// sessionRun creates BGPPeers for speakers lo..hi (1-based), waits for their sessions and
// routes, then measures the steady state.
func sessionRun(b *testing.B, crds *lab.CRDs, n *lab.Node, f *farm, w *routeWatch, lo, hi int, steady time.Duration) *sessionPhase {
	b.Helper()
	p := &sessionPhase{peers: hi}
	p.load[0] = loadavg()
	pid := n.Agent.PID()
	m0 := reconcileMetrics(b, n)
	logOff := n.Agent.LogSize()
	want := map[netip.Prefix]netip.Addr{}
	for i := lo; i <= hi; i++ {
		want[speakerPrefix(i)] = speakerAddr(i)
	}

	t0 := time.Now()
	for i := lo; i <= hi; i++ {
		spec := config.BGPPeerSpec{
			PeerAddress:    speakerAddr(i).String(),
			PeerASN:        speakerASN,
			NodeSelector:   &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/hostname": n.Name}},
			ExportPodCIDRs: ptr(true),
		}
		if err := crds.CreatePeer(fmt.Sprintf("tor-%03d", i), spec); err != nil {
			b.Fatal(err)
		}
	}
	p.created = time.Since(t0)

	ctx, cancel := context.WithTimeout(context.Background(), 5*converge)
	defer cancel()
	var estab map[netip.Addr]time.Time
	if err := lab.Poll(ctx, 5*converge, 100*time.Millisecond, func() error {
		estab = f.established(t0)
		missing := 0
		for i := lo; i <= hi; i++ {
			if _, ok := estab[speakerAddr(i)]; !ok {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d new sessions not established", missing, hi-lo+1)
		}
		return nil
	}); err != nil {
		b.Fatalf("%v\nagent log:\n%s\nfarm log:\n%s", err, tail(n.Agent.LogSince(logOff), 40), tail(f.Log(), 20))
	}
	var first, last time.Time
	for i := lo; i <= hi; i++ {
		at := estab[speakerAddr(i)]
		if first.IsZero() || at.Before(first) {
			first = at
		}
		if at.After(last) {
			last = at
		}
	}
	p.firstEstab, p.lastEstab = first.Sub(t0), last.Sub(t0)
	_, in, err := w.countAfter(ctx, t0, len(want), func(e routeEvent) bool { return e.add && want[e.prefix] == e.via && e.via.IsValid() })
	if err != nil {
		b.Fatalf("routes from the speakers: %v", err)
	}
	p.routesIn = in.Sub(t0)
	estLog := n.Agent.LogSince(logOff)
	p.lastAdded = lastLogLine(estLog, "BGP neighbor added").Sub(t0)
	for _, l := range strings.Split(estLog, "\n") {
		if strings.Contains(l, `"msg":"status written"`) && strings.Contains(l, `"kind":"BGPPeer"`) {
			p.statusWrites++
		}
	}
	p.lastStatus = lastLogLine(estLog, "status written").Sub(t0)
	time.Sleep(200 * time.Millisecond)
	m1 := reconcileMetrics(b, n)
	p.estPasses, p.estPassTime = m1.count-m0.count, m1.sum-m0.sum

	// Let the last events settle, then the steady window.
	time.Sleep(10 * time.Second)
	mA := reconcileMetrics(b, n)
	a0, err := cpuTicks(pid)
	if err != nil {
		b.Fatal(err)
	}
	f0, err := cpuTicks(f.PID())
	if err != nil {
		b.Fatal(err)
	}
	w0 := time.Now()
	time.Sleep(steady)
	a1, err := cpuTicks(pid)
	if err != nil {
		b.Fatal(err)
	}
	f1, _ := cpuTicks(f.PID())
	p.window = time.Since(w0)
	mB := reconcileMetrics(b, n)
	p.load[1] = loadavg()
	p.cpu = time.Duration(a1-a0) * time.Second / clkTck
	p.farmCPU = time.Duration(f1-f0) * time.Second / clkTck
	p.passes, p.passTime = mB.count-mA.count, mB.sum-mA.sum
	if p.rss, p.hwm, err = rssKiB(pid); err != nil {
		b.Fatal(err)
	}
	pr, err := n.ProbeSocket("/metrics")
	if err != nil {
		b.Fatal(err)
	}
	p.goroutines, _ = metricValue(pr.Body, "go_goroutines")
	p.heapInuse, _ = metricValue(pr.Body, "go_memstats_heap_inuse_bytes")
	tc := time.Now()
	ns, err := n.Neighbors()
	if err != nil {
		b.Fatal(err)
	}
	p.neighborsCall = time.Since(tc)
	for _, x := range ns {
		if x.State == "established" {
			p.established++
		}
	}
	if p.established != hi {
		b.Fatalf("%d sessions established after the steady window, want %d", p.established, hi)
	}
	fmt.Printf("%d peers: created in %s ms, last neighbor added %s ms, sessions established %s..%s ms, routes in %s ms; steady %v: agent CPU %.2f s, RSS %s MiB, %.0f goroutines, %d reconcile passes\n",
		hi, ms(p.created), ms(p.lastAdded), ms(p.firstEstab), ms(p.lastEstab), ms(p.routesIn), p.window.Round(time.Millisecond), p.cpu.Seconds(), mib(p.rss), p.goroutines, p.passes)
	return p
}

// lastLogLine is the time of the last JSON line of the agent's log with message msg.
func lastLogLine(log, msg string) time.Time {
	var last time.Time
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, `"msg":"`+msg+`"`) {
			continue
		}
		if at := logTime(l, msg); at.After(last) {
			last = at
		}
	}
	return last
}
