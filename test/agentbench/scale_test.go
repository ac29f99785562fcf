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

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/routes"
	"github.com/podroute/podroute/test/lab"
)

// The route-scale lab: cluster CIDR 10.0.0.0/8 with the node's /24s (10.244.1.0/24), so that
// 10,000 /24s pass the import filter's cluster and length rules. The generated prefixes
// (10.1.0.0/24 up to 10.40.15.0/24) stay clear of the node CIDRs (10.244.i.0/24) and of the
// fabric's addresses (192.0.2.0/24).
var (
	scaleClusterV4 = netip.MustParsePrefix("10.0.0.0/8")
	scaleFirst     = netip.MustParsePrefix("10.1.0.0/24")
)

const (
	// speakerIndex puts the speaker at 192.0.2.99 on the fabric.
	speakerIndex = 99
	// speakerASN is the speaker's AS: an eBGP peer of the cluster (AS 64512), like a
	// top-of-rack router.
	speakerASN = 65099
	// peerName is the speaker's BGPPeer object.
	peerName = "tor"
)

// BenchmarkRouteScale: podroute-agent on one node learns 10,000 prefixes from an external
// BGP peer. The peer is a GoBGP speaker in its own namespace on the fabric (AS 65099, not a
// Node: a top-of-rack router), configured in the cluster as a BGPPeer object selecting the
// node; it has the 10,000 /24s in its table before any session exists, so the session's
// initial UPDATEs carry them all. Times come from the kernel's route notifications in the
// node's namespace (a netlink subscription), against the speaker's own log of the session
// reaching Established, or against the moment the test acted. Phases, in order:
//
//  1. install: BGPPeer created -> session established -> all 10,000 routes (protocol 201, via
//     the speaker) in the kernel;
//  2. BGPPeer deleted -> all gone: the agent removes the neighbor, which closes the session
//     with a CEASE NOTIFICATION, and withdraws the routes at once;
//  3. install again: BGPPeer created again, as in 1;
//  4. speaker killed -> all gone: the session's TCP connection closes without a
//     NOTIFICATION. The speaker does not offer graceful restart, so the agent keeps nothing
//     stale: this is the hard loss of a peer, not graceful-restart expiry (which would be
//     the restart time, 120 s by default, by construction).
//
// Also measured: the agent's VmRSS and VmHWM, its reconcile passes (count and time from its
// /metrics, one line per pass that changed kernel routes from its log, with the time
// Reconcile() took), and `ip -batch` adding and deleting the same routes in an empty
// namespace in the same run: the kernel floor.
func BenchmarkRouteScale(b *testing.B) {
	count := envInt("AGENTBENCH_ROUTES", 10000)
	load := header(b, fmt.Sprintf("Route installation at scale: %d prefixes from an external peer into podroute-agent", count))
	l := lab.New(b, lab.Options{ClusterCIDRs: []netip.Prefix{scaleClusterV4, lab.DefaultClusterV6}})
	crds := lab.InstallCRDs(b, l)

	n := l.AddNode(b, "node-1", lab.NodeOptions{Index: 1, NoAgent: true})
	gen := lab.PrefixRange{First: scaleFirst, Count: count}
	want := map[netip.Prefix]bool{}
	for _, p := range gen.Prefixes() {
		want[p] = true
	}
	if len(want) != count {
		b.Fatalf("%d prefixes from %s, want %d", len(want), scaleFirst, count)
	}
	sp := l.StartRogue(b, lab.RogueOptions{
		Name: "tor", Index: speakerIndex, ASN: speakerASN,
		ExtraPeers:    []lab.RoguePeer{{Address: n.IPv4, ASN: config.DefaultASN}},
		Generate:      gen,
		LogPeerEvents: true,
	})
	speaker := sp.IPv4
	// StartRogue registers the speaker as a Node, which would make it a mesh peer of every
	// node. This speaker is a router, not a node: its Node object goes before the agent
	// starts, so the agent only ever knows it as a BGPPeer.
	if err := sp.DeleteNodeObject(); err != nil {
		b.Fatal(err)
	}
	if err := n.Agent.Start(); err != nil {
		b.Fatal(err)
	}
	ready(b, n)
	pid := n.Agent.PID()
	w := watchRoutes(b, n.NetNS)
	rss0, hwm0, err := rssKiB(pid)
	if err != nil {
		b.Fatal(err)
	}

	spec := config.BGPPeerSpec{
		PeerAddress:    speaker.String(),
		PeerASN:        speakerASN,
		NodeSelector:   &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/hostname": n.Name}},
		ExportPodCIDRs: ptr(true),
	}
	s := scaleRun{b: b, n: n, sp: sp, w: w, count: count, want: want, speaker: speaker}

	// 1. Install.
	install1 := s.phase("install", func() error { return crds.CreatePeer(peerName, spec) }, true)
	s.checkKernel()
	rss1, hwm1, _ := rssKiB(pid)
	ctlStart := time.Now()
	var rs struct {
		Routes []json.RawMessage `json:"routes"`
	}
	if err := n.CtlJSON(&rs, "bgp", "routes"); err != nil {
		b.Fatal(err)
	}
	ctlTime, ctlRoutes := time.Since(ctlStart), len(rs.Routes)
	time.Sleep(5 * time.Second) // a few keepalives later: the steady state
	rss2, hwm2, _ := rssKiB(pid)

	// 2. BGPPeer deleted.
	peerDel := s.phase("BGPPeer deleted", func() error { return crds.DeletePeer(peerName) }, false)

	// 3. Install again.
	install2 := s.phase("install again", func() error { return crds.CreatePeer(peerName, spec) }, true)
	s.checkKernel()
	rss3, hwm3, _ := rssKiB(pid)

	// 4. Speaker killed.
	kill := s.phase("speaker killed", func() error { sp.Stop(); return nil }, false)
	time.Sleep(2 * time.Second)
	rss4, hwm4, _ := rssKiB(pid)

	floorAdd, floorDel := kernelFloor(b, l, gen.Prefixes())
	loadEnd := loadavg()

	ratio := func(d, floor time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(floor)) }
	fmt.Printf("%d prefixes (IPv4 /24s from %s, next hop the speaker), one node, one eBGP session (AS %d -> AS %d), hold time 3 s, keepalive 1 s; load average %s at start, %s at end\n\n",
		count, scaleFirst, speakerASN, config.DefaultASN, load, loadEnd)
	fmt.Println("| measure | podroute-agent | `ip -batch` (kernel floor) | ratio |")
	fmt.Println("| --- | ---: | ---: | ---: |")
	for _, in := range []*scalePhase{install1, install2} {
		fmt.Printf("| %s: session established -> all routes in the kernel (ms) | **%s** | %s | %s |\n", in.name, ms(in.total()), ms(floorAdd), ratio(in.total(), floorAdd))
		fmt.Printf("| %s: session established -> first route in the kernel (ms) | %s | | |\n", in.name, ms(in.first.Sub(in.from)))
		fmt.Printf("| %s: BGPPeer created -> neighbor added by the agent -> session established (ms) | %s -> %s | | |\n", in.name, ms(in.neighborAdded.Sub(in.action)), ms(in.from.Sub(in.action)))
	}
	for _, del := range []*scalePhase{peerDel, kill} {
		fmt.Printf("| %s -> all routes gone (ms) | **%s** | %s | %s |\n", del.name, ms(del.total()), ms(floorDel), ratio(del.total(), floorDel))
		fmt.Printf("| %s -> first route gone (ms) | %s | | |\n", del.name, ms(del.first.Sub(del.from)))
	}
	fmt.Printf("| agent VmRSS: before / installed / 5 s later / installed again / after the kill (MiB) | %s / %s / %s / %s / %s | | |\n", mib(rss0), mib(rss1), mib(rss2), mib(rss3), mib(rss4))
	fmt.Printf("| agent VmHWM: same points (MiB) | %s / %s / %s / %s / %s | | |\n", mib(hwm0), mib(hwm1), mib(hwm2), mib(hwm3), mib(hwm4))
	fmt.Printf("| `podroutectl bgp routes -o json` with %d routes (ms) | %s | | |\n", ctlRoutes, ms(ctlTime))
	fmt.Println()
	fmt.Println("Reconcile passes per phase, from the action to the end (count and total time from the agent's podroute_reconcile_duration_seconds; Reconcile() is the kernel step, summed from the agent's log; the rest is mostly the Routes() listing of the BGP RIB, and for an install also the passes that add the neighbor before the session is up):")
	fmt.Println()
	fmt.Println("| phase | passes | all passes (ms) | Reconcile() (ms) | rest (ms) |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: |")
	for _, p := range []*scalePhase{install1, peerDel, install2, kill} {
		var took time.Duration
		for _, x := range p.passes {
			took += x.took
		}
		all := p.m1.sum - p.m0.sum
		fmt.Printf("| %s | %d | %s | %s | %s |\n", p.name, p.m1.count-p.m0.count, ms(all), ms(took), ms(all-took))
	}
	fmt.Println()
	fmt.Println("Passes that changed kernel routes (agent's log; times from session establishment or from the action):")
	fmt.Println()
	fmt.Println("| phase | Reconcile() started (ms) | pass ended (ms) | desired | added | removed | failed | Reconcile() (ms) | before Reconcile() (ms) |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, p := range []*scalePhase{install1, peerDel, install2, kill} {
		prev := p.from
		for _, x := range p.passes {
			fmt.Printf("| %s | %s | %s | %d | %d | %d | %d | %s | %s |\n", p.name, ms(x.start.Sub(p.from)), ms(x.end.Sub(p.from)),
				x.desired, x.added, x.removed, x.failed, ms(x.took), ms(x.start.Sub(prev)))
			prev = x.end
		}
	}
	b.ReportMetric(float64(install1.total())/1e6, "install-ms")
	b.ReportMetric(float64(install2.total())/1e6, "install2-ms")
	b.ReportMetric(float64(floorAdd)/1e6, "ip-batch-add-ms")
	b.ReportMetric(float64(install1.total())/float64(floorAdd), "install/ip-batch")
	b.ReportMetric(float64(peerDel.total())/1e6, "peer-deleted-ms")
	b.ReportMetric(float64(kill.total())/1e6, "speaker-killed-ms")
	b.ReportMetric(float64(floorDel)/1e6, "ip-batch-del-ms")
	b.ReportMetric(float64(rss2)/1024, "rss-MiB")
}

func ptr[T any](v T) *T { return &v }

// scaleRun is the state the phases of BenchmarkRouteScale share.
type scaleRun struct {
	b       *testing.B
	n       *lab.Node
	sp      *lab.Rogue
	w       *routeWatch
	count   int
	want    map[netip.Prefix]bool
	speaker netip.Addr
}

// scalePhase is one timed change of all the routes.
type scalePhase struct {
	name   string
	action time.Time // the test acted (created or deleted the BGPPeer, killed the speaker)
	// from is when the clock starts: the session's establishment (speaker's log) for an
	// install, the action otherwise.
	from, first, last time.Time
	// neighborAdded is when the agent logged the speaker's neighbor added (installs).
	neighborAdded time.Time
	m0, m1        reconcileSums
	passes        []agentPass
}

func (p *scalePhase) total() time.Duration { return p.last.Sub(p.from) }

// phase runs act and waits until every generated prefix has been added via the speaker
// (install) or deleted.
func (s *scaleRun) phase(name string, act func() error, install bool) *scalePhase {
	b := s.b
	b.Helper()
	ctx, cancel := context.WithTimeoutCause(context.Background(), 5*converge, fmt.Errorf("%s: not within %v", name, 5*converge))
	defer cancel()
	p := &scalePhase{name: name, m0: reconcileMetrics(b, s.n)}
	logOff := s.n.Agent.LogSize()
	if install {
		// Fail early, with the reason, if the agent refuses the speaker's prefixes.
		ctx2, cancel2 := context.WithCancelCause(ctx)
		defer cancel2(nil)
		ctx = ctx2
		go func() {
			_ = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) {
				if agentMetric(s.n, "podroute_bgp_refused_prefixes") == 0 {
					return false, nil
				}
				reason := "?"
				if rs, err := s.n.BGPRoutes(); err == nil && len(rs.Refused) > 0 {
					reason = rs.Refused[0].Reason
				}
				cancel2(fmt.Errorf("the agent refuses the speaker's prefixes: %s", reason))
				return true, nil
			})
		}()
	}
	p.action = time.Now()
	if err := act(); err != nil {
		b.Fatal(err)
	}
	match := func(e routeEvent) bool { return !e.add && s.want[e.prefix] }
	if install {
		match = func(e routeEvent) bool { return e.add && e.via == s.speaker && s.want[e.prefix] }
	}
	var err error
	p.first, p.last, err = s.w.countAfter(ctx, p.action, s.count, match)
	if err != nil {
		if c := context.Cause(ctx); c != nil && !errors.Is(c, err) {
			err = fmt.Errorf("%w (%v)", err, c)
		}
		b.Fatalf("%s: %v\nspeaker log:\n%s\nagent log:\n%s", name, err, tail(s.sp.Log(), 30), tail(s.n.Agent.LogSince(logOff), 60))
	}
	p.from = p.action
	if install {
		for _, c := range s.sp.StateChanges() {
			if c.Peer == s.n.IPv4 && c.State == "established" && !c.Time.Before(p.action) {
				p.from = c.Time
				break
			}
		}
		p.neighborAdded = logTime(s.n.Agent.LogSince(logOff), "BGP neighbor added")
		if p.from == p.action {
			b.Fatalf("%s: no session establishment after %s in the speaker's log:\n%s", name, p.action.Format(time.RFC3339Nano), tail(s.sp.Log(), 30))
		}
	}
	// The pass that made the last change logs it right after; the metrics count it once it
	// ended.
	lab.Eventually(b, 10*time.Second, name+": agent's pass logged", func() error {
		p.passes = agentPasses(s.n.Agent.LogSince(logOff))
		added, removed := 0, 0
		for _, x := range p.passes {
			added, removed = added+x.added, removed+x.removed
		}
		if (install && added < s.count) || (!install && removed < s.count) {
			return fmt.Errorf("%d added, %d removed in the agent's log", added, removed)
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	p.m1 = reconcileMetrics(b, s.n)
	return p
}

// checkKernel dumps the node's table: every generated prefix must be there via the speaker.
func (s *scaleRun) checkKernel() {
	s.b.Helper()
	got, err := routesVia(s.n.NetNS, s.speaker)
	if err != nil {
		s.b.Fatal(err)
	}
	missing := 0
	for p := range s.want {
		if !got[p] {
			missing++
		}
	}
	if missing > 0 {
		s.b.Fatalf("%d of %d generated prefixes missing from the kernel (protocol %d via %s)", missing, s.count, routes.Protocol, s.speaker)
	}
}

// routesVia lists the namespace's protocol 201 IPv4 routes via gw.
func routesVia(ns *lab.NetNS, gw netip.Addr) (map[netip.Prefix]bool, error) {
	h, err := netns.GetFromPath(ns.Path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	rs, err := nh.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routes.Protocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Prefix]bool, len(rs))
	for _, r := range rs {
		g, ok := netip.AddrFromSlice(r.Gw)
		if r.Dst == nil || !ok || g.Unmap() != gw {
			continue
		}
		a, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		out[netip.PrefixFrom(a.Unmap(), ones)] = true
	}
	return out, nil
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
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

// agentPass is one agent reconcile pass that changed kernel routes, from its log: the
// kernel reconciler's "routes reconciled" line (with the time Reconcile() took), then the
// agent's "kernel routes reconciled".
type agentPass struct {
	start, end                      time.Time // Reconcile() started; the pass logged its result
	took                            time.Duration
	desired, added, removed, failed int
}

// logTime is the time of the first JSON log line with message msg (zero if none).
func logTime(log, msg string) time.Time {
	for _, l := range strings.Split(log, "\n") {
		var e struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if strings.HasPrefix(l, "{") && json.Unmarshal([]byte(l), &e) == nil && e.Msg == msg {
			return e.Time
		}
	}
	return time.Time{}
}

func agentPasses(log string) []agentPass {
	var out []agentPass
	var cur *agentPass
	for _, l := range strings.Split(log, "\n") {
		if !strings.HasPrefix(l, "{") {
			continue
		}
		var e struct {
			Time    time.Time `json:"time"`
			Msg     string    `json:"msg"`
			Desired int       `json:"desired"`
			Added   int       `json:"added"`
			Removed int       `json:"removed"`
			Failed  int       `json:"failed"`
			Took    int64     `json:"took"` // nanoseconds
		}
		if json.Unmarshal([]byte(l), &e) != nil {
			continue
		}
		switch e.Msg {
		case "routes reconciled":
			took := time.Duration(e.Took)
			cur = &agentPass{start: e.Time.Add(-took), took: took, desired: e.Desired, added: e.Added, removed: e.Removed}
		case "kernel routes reconciled":
			if cur == nil {
				continue
			}
			cur.end, cur.failed = e.Time, e.Failed
			out = append(out, *cur)
			cur = nil
		}
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
