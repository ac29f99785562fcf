package agentbench

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/test/cniutil"
	"github.com/podroute/podroute/test/lab"
)

// BFD timers of every BFD setting: 100 ms x 3 (the agent's floor), on the agents and on FRR.
const (
	bfdInterval   = 100 * time.Millisecond
	bfdMultiplier = 3
	torASN        = 65101
	// flowInterval is the probes' rate: a lost probe is 10 ms without traffic.
	flowInterval = 10 * time.Millisecond
)

func bfdSpec() *config.BFDSpec {
	m := int64(bfdMultiplier)
	return &config.BFDSpec{MinTx: bfdInterval.String(), MinRx: bfdInterval.String(), Multiplier: &m}
}

// Agent flags of the settings below: the agent's defaults, and the tuned timers without
// graceful restart (BenchmarkNodeFailure's "tuned-nogr").
var (
	defaultArgs = []string{"--hold-time", "9s", "--keepalive", "3s", "--graceful-restart=true", "--restart-time", "120s"}
	tunedArgs   = []string{"--hold-time", "3s", "--keepalive", "1s", "--graceful-restart=false", "--restart-time", "0s"}
)

// foSetting is one configuration of a failover lab: agent flags (every node), BFD on the
// mesh and the ToR sessions or not, and FRR's side.
type foSetting struct {
	key, name string
	args      []string
	bfd       bool
	// ccpf adds "neighbor X bfd check-control-plane-failure" on FRR.
	ccpf bool
	// hold is the BGP hold time (FRR's neighbours get the same), restart the agent's
	// graceful restart time (0: off).
	hold, restart time.Duration
}

func (s foSetting) torNeighbor(n *lab.Node, asn uint32) lab.Neighbor {
	nb := lab.Neighbor{Address: n.IPv4, ASN: asn, Description: n.Name, HoldTime: int(s.hold / time.Second)}
	if s.bfd {
		nb.BFD, nb.BFDInterval, nb.BFDMultiplier, nb.BFDCheckControlPlane = true, bfdInterval, bfdMultiplier, s.ccpf
	}
	return nb
}

func (s foSetting) peerBFD() *config.BFDSpec {
	if s.bfd {
		return bfdSpec()
	}
	return nil
}

// bfdImpl names the BFD implementation of the binaries under test, for the tables.
func bfdImpl() string {
	if v := os.Getenv("AGENTBENCH_BFD_IMPL"); v != "" {
		return v
	}
	return "the working tree's"
}

// BenchmarkFailover: how fast traffic leaves a failed node or link with BFD (100 ms x 3 on
// the mesh and on an FRR ToR) against the hold-timer baselines, and what agent restarts
// cost with BFD on. Three parts (AGENTBENCH_FAILOVER_PARTS, comma-separated, default all):
//
//   - death: a node dies as in BenchmarkNodeFailure (fabric port down, agent SIGKILLed,
//     uplink down); time until its pod CIDRs are gone from the kernels of the three other
//     nodes and from the ToR's kernel (FRR's FIB);
//   - link: a node with two ToRs (ECMP); the path between it and one ToR is cut silently
//     (both ends keep their carrier); a pod on a second node of the rack sends a UDP echo
//     every 10 ms to a pod on it: probes lost;
//   - restart: an agent restarts (SIGTERM and start, a rolling upgrade: SIGTERM, 2 s, a fresh
//     copy of the binary with a changed flag; SIGKILL, 2 s, start) while a pod on another
//     node and a host behind the ToR send a UDP echo every 10 ms, both families, to a pod on
//     it: probes lost.
//
// AGENTBENCH_FAILOVER_REPS (default 5) repetitions per setting of death and link,
// AGENTBENCH_RESTART_REPS (default 3) of each restart case, AGENTBENCH_FAILOVER_GR_REPS (default
// AGENTBENCH_FAILOVER_REPS) of the death baseline with graceful restart (over 2 min each); AGENTBENCH_FAILOVER_SETTINGS
// limits the settings (keys, comma-separated); AGENTBENCH_BFD_IMPL names the BFD
// implementation of the binaries, for the tables.
func BenchmarkFailover(b *testing.B) {
	parts := envSet("AGENTBENCH_FAILOVER_PARTS")
	load := header(b, "Failover and restarts with BFD ("+bfdImpl()+" BFD)")
	_ = load
	if parts == nil || parts["death"] {
		deathPart(b)
	}
	if parts == nil || parts["link"] {
		linkPart(b)
	}
	if parts == nil || parts["restart"] {
		restartPart(b)
	}
}

// envSet is a comma-separated environment variable as a set; nil when unset or empty.
func envSet(name string) map[string]bool {
	var out map[string]bool
	for _, k := range strings.Split(os.Getenv(name), ",") {
		if k = strings.TrimSpace(k); k != "" {
			if out == nil {
				out = map[string]bool{}
			}
			out[k] = true
		}
	}
	return out
}

func selected(s foSetting) bool {
	want := envSet("AGENTBENCH_FAILOVER_SETTINGS")
	return want == nil || want[s.key]
}

func sec(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()) }

// ratio is a/b as "0.05x", or "-" without b.
func ratio(a, b time.Duration) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.3gx", a.Seconds()/b.Seconds())
}

// --- 1. node death -------------------------------------------------------------------

var deathSettings = []foSetting{
	{key: "bfd", name: "BFD 100ms x 3, agent defaults (hold 9 s, graceful restart 120 s)", args: defaultArgs, bfd: true, hold: 9 * time.Second, restart: 120 * time.Second},
	{key: "bfd-nogr", name: "BFD 100ms x 3, hold 3 s, graceful restart off", args: tunedArgs, bfd: true, hold: 3 * time.Second},
	{key: "tuned-nogr", name: "no BFD, hold 3 s, graceful restart off (baseline)", args: tunedArgs, hold: 3 * time.Second},
	{key: "default", name: "no BFD, agent defaults (hold 9 s, graceful restart 120 s) (baseline)", args: defaultArgs, hold: 9 * time.Second, restart: 120 * time.Second},
}

type deathRound struct {
	nodes, tor, all time.Duration // failure -> gone from the last survivor, from the ToR, from both
	torErr          string        // why the ToR's time is missing
}

func deathPart(b *testing.B) {
	reps := envInt("AGENTBENCH_FAILOVER_REPS", 5)
	type result struct {
		s      foSetting
		rounds []deathRound
		load   [2]string
	}
	var results []result
	for _, s := range deathSettings {
		if !selected(s) {
			continue
		}
		r := result{s: s}
		r.load[0] = loadavg()
		n := reps
		if !s.bfd && s.restart > 0 {
			// Over two minutes a failure: the restart time runs out in full.
			n = envInt("AGENTBENCH_FAILOVER_GR_REPS", reps)
		}
		r.rounds = deathSetting(b, s, n)
		r.load[1] = loadavg()
		results = append(results, r)
	}
	meds := map[string]time.Duration{}
	for _, r := range results {
		var all []time.Duration
		for _, x := range r.rounds {
			all = append(all, x.all)
		}
		meds[r.s.key] = median(all)
	}
	fmt.Printf("\n#### Node death: routes gone from the 3 other nodes and the ToR (%s BFD)\n\n", bfdImpl())
	fmt.Printf("%d repetitions per setting (the default baseline: AGENTBENCH_FAILOVER_GR_REPS); seconds from the failure (port down, SIGKILL, uplink down) until the dead node's pod CIDRs are gone from every other node's kernel and from the ToR's kernel (FRR, the same timers)\n\n", reps)
	fmt.Println("| setting | gone from the nodes: median / worst | from the ToR: median / worst | from both: median | worst | vs tuned-nogr | vs default | load average start -> end |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, r := range results {
		var nodes, tor, all []time.Duration
		for _, x := range r.rounds {
			nodes, tor, all = append(nodes, x.nodes), append(tor, x.tor), append(all, x.all)
		}
		m := median(all)
		fmt.Printf("| %s | %s / %s | %s / %s | **%s** | %s | %s | %s | %s -> %s |\n", r.s.name,
			sec(median(nodes)), sec(pct(nodes, 100)), sec(median(tor)), sec(pct(tor, 100)),
			sec(m), sec(pct(all, 100)), ratio(m, meds["tuned-nogr"]), ratio(m, meds["default"]), r.load[0], r.load[1])
		b.ReportMetric(m.Seconds(), "death-"+r.s.key+"-median-s")
	}
	fmt.Println()
}

// deathSetting builds three nodes and a ToR with the setting and kills reps fourth nodes
// in turn.
func deathSetting(b *testing.B, s foSetting, reps int) []deathRound {
	sc := newScope(b)
	defer sc.close()
	l := lab.New(sc, lab.Options{AgentArgs: s.args})
	c := lab.InstallCRDs(sc, l)
	fab := l.DefaultSegment()
	tor := l.AddRouter(sc, "tor", lab.RouterOptions{ASN: torASN, Segments: []*lab.Segment{fab}, BFD: s.bfd})
	torAddr := tor.Addr4(fab)
	c.Configuration(config.BGPConfigurationSpec{NodeToNodeMesh: ptrTo(true), MeshBFD: s.peerBFD()})
	c.Peer("tor", config.BGPPeerSpec{PeerAddress: torAddr.String(), PeerASN: torASN, BFD: s.peerBFD()})
	var base []*lab.Node
	for i := 1; i <= 3; i++ {
		n := l.AddNode(sc, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i})
		if err := tor.AddNeighbor(s.torNeighbor(n, config.DefaultASN)); err != nil {
			b.Fatal(err)
		}
		base = append(base, n)
	}
	for _, n := range base {
		ready(b, n)
	}
	meshed(b, base)
	watches := make([]*routeWatch, len(base))
	for i, n := range base {
		watches[i] = watchRoutes(sc, n.NetNS)
	}
	torWatch := watchRoutesProto(sc, tor.NetNS, unix.RTPROT_BGP)
	var out []deathRound
	for r := range reps {
		v := l.AddNode(sc, fmt.Sprintf("victim-%d", r+1), lab.NodeOptions{Index: 4 + r})
		if err := tor.AddNeighbor(s.torNeighbor(v, config.DefaultASN)); err != nil {
			b.Fatal(err)
		}
		ready(b, v)
		all := append(slices.Clone(base), v)
		meshed(b, all)
		up(b, s, all, tor, torAddr)
		torHasRoutes(b, tor, v)
		// A few keepalives and BFD packets, so the failure lands anywhere in their cycles.
		time.Sleep(2*time.Second + time.Duration(r)*700*time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), s.hold+s.restart+converge)
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
		var x deathRound
		for i, w := range watches {
			for _, p := range v.PodCIDRs {
				at, err := w.routeDeleted(ctx, t0, p)
				if err != nil {
					b.Fatalf("%s: %s still on %s %v after the failure: %v\n%s", s.key, p, base[i].Name, time.Since(t0), err, tail(base[i].Agent.Log(), 30))
				}
				x.nodes = max(x.nodes, at.Sub(t0))
			}
		}
		for _, p := range v.PodCIDRs {
			at, err := torWatch.routeDeleted(ctx, t0, p)
			if err != nil {
				b.Fatalf("%s: %s still on the ToR %v after the failure: %v\n%s", s.key, p, time.Since(t0), err, tail(tor.Log(), 30))
			}
			x.tor = max(x.tor, at.Sub(t0))
		}
		cancel()
		x.all = max(x.nodes, x.tor)
		fmt.Printf("death %s, rep %d: gone from the nodes %.2f s, from the ToR %.2f s (load %s)\n", s.key, r+1, x.nodes.Seconds(), x.tor.Seconds(), loadavg())
		out = append(out, x)
		if err := tor.RemoveNeighbor(v.IPv4); err != nil {
			b.Fatal(err)
		}
		if err := v.Remove(); err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// up waits until every node's sessions with the others and the ToR are established, with
// BFD up when the setting has it, and FRR's too.
func up(b *testing.B, s foSetting, nodes []*lab.Node, tor *lab.Router, torAddr netip.Addr) {
	b.Helper()
	lab.Eventually(b, converge, "sessions established (BFD up)", func() error { return upErr(s, s.bfd, nodes, tor, torAddr) })
}

// upErr is up's check; torBFD says whether the ToR's sessions run BFD (the mesh's do when
// s.bfd).
func upErr(s foSetting, torBFD bool, nodes []*lab.Node, tor *lab.Router, torAddr netip.Addr) error {
	for _, n := range nodes {
		want := map[string]bool{torAddr.String(): torBFD}
		for _, o := range nodes {
			if o != n {
				want[o.IPv4.String()] = s.bfd
			}
		}
		ns, err := n.Neighbors()
		if err != nil {
			return err
		}
		for _, p := range ns {
			withBFD, ok := want[p.Address]
			if !ok {
				continue
			}
			if p.State != "established" || (withBFD && p.BFD != "up") {
				return fmt.Errorf("%s: %s is %s, BFD %q", n.Name, p.Address, p.State, p.BFD)
			}
			delete(want, p.Address)
		}
		if len(want) > 0 {
			return fmt.Errorf("%s: no session with %v", n.Name, want)
		}
	}
	var addrs []netip.Addr
	for _, n := range nodes {
		addrs = append(addrs, n.IPv4)
	}
	if err := tor.Established(addrs...); err != nil {
		return err
	}
	if !torBFD {
		return nil
	}
	return bfdUp(tor, addrs...)
}

// bfdUp reports an error unless bfdd's sessions with addrs are up at 100 ms x 3 both ways.
func bfdUp(r *lab.Router, addrs ...netip.Addr) error {
	ss, err := r.BFDSessions()
	if err != nil {
		return err
	}
	want := int(bfdInterval.Milliseconds())
	for _, a := range addrs {
		x := ss[a.String()]
		if x.Status != "up" {
			return fmt.Errorf("%s: BFD with %s is %q", r.Name, a, x.Status)
		}
		if x.DetectMultiplier != bfdMultiplier || x.TransmitInterval != want || x.ReceiveInterval != want ||
			x.RemoteReceiveInterval != want || x.RemoteTransmitInterval != want || x.RemoteDetectMultiplier != bfdMultiplier {
			return fmt.Errorf("%s: BFD with %s does not run at %v x %d both ways: %+v", r.Name, a, bfdInterval, bfdMultiplier, x)
		}
	}
	return nil
}

// torHasRoutes waits until the ToR's kernel routes n's pod CIDRs (proto bgp).
func torHasRoutes(b *testing.B, tor *lab.Router, nodes ...*lab.Node) {
	b.Helper()
	lab.Eventually(b, converge, "ToR kernel routes", func() error {
		for _, n := range nodes {
			for _, p := range n.PodCIDRs {
				k, err := tor.KernelRoute(p)
				if err != nil {
					return err
				}
				if !strings.Contains(k, "proto bgp") {
					return fmt.Errorf("tor: %s: %q", p, k)
				}
			}
		}
		return nil
	})
}

// watchRoutesProto is watchRoutes for routes of another protocol (FRR's: RTPROT_BGP).
func watchRoutesProto(b testing.TB, ns *lab.NetNS, proto int) *routeWatch {
	b.Helper()
	h, err := netns.GetFromPath(ns.Path)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	w := &routeWatch{name: ns.Name, cond: make(chan struct{})}
	ch := make(chan netlink.RouteUpdate, 4096)
	done := make(chan struct{})
	err = netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
		Namespace: &h, ReceiveBufferSize: 8 << 20, ReceiveBufferForceSize: true,
		ErrorCallback: func(err error) {
			w.mu.Lock()
			if w.err == nil {
				w.err = err
			}
			w.mu.Unlock()
		},
	})
	if err != nil {
		b.Fatalf("watch routes in %s: %v", ns.Name, err)
	}
	b.Cleanup(func() { close(done) })
	go func() {
		for u := range ch {
			now := time.Now()
			if int(u.Route.Protocol) != proto || u.Route.Dst == nil || (u.Type != unix.RTM_NEWROUTE && u.Type != unix.RTM_DELROUTE) {
				continue
			}
			a, ok := netip.AddrFromSlice(u.Route.Dst.IP)
			if !ok {
				continue
			}
			ones, _ := u.Route.Dst.Mask.Size()
			w.mu.Lock()
			w.ev = append(w.ev, routeEvent{at: now, add: u.Type == unix.RTM_NEWROUTE, prefix: netip.PrefixFrom(a.Unmap(), ones),
				gateway: u.Route.Gw != nil || len(u.Route.MultiPath) > 0})
			close(w.cond)
			w.cond = make(chan struct{})
			w.mu.Unlock()
		}
	}()
	return w
}

func ptrTo[T any](v T) *T { return &v }

// --- 2. link failure -----------------------------------------------------------------

var linkSettings = []foSetting{
	{key: "bfd", name: "BFD 100ms x 3, hold 3 s, graceful restart off", args: tunedArgs, bfd: true, hold: 3 * time.Second},
	{key: "bfd-gr", name: "BFD 100ms x 3, agent defaults (hold 9 s, graceful restart 120 s)", args: defaultArgs, bfd: true, hold: 9 * time.Second, restart: 120 * time.Second},
	{key: "tuned-nogr", name: "no BFD, hold 3 s, graceful restart off (baseline)", args: tunedArgs, hold: 3 * time.Second},
}

// linkWait bounds how long a link repetition waits for the routes to leave the cut path.
const linkWait = 20 * time.Second

type linkRound struct {
	tor       string
	stuck     int           // FRR BFD re-set-ups needed before this repetition (settle)
	converged time.Duration // cut -> both ends route around it (0: not within linkWait)
	st        [2]lab.FlowStats
}

func linkPart(b *testing.B) {
	reps := envInt("AGENTBENCH_FAILOVER_REPS", 5)
	type result struct {
		s      foSetting
		rounds []linkRound
		load   [2]string
	}
	var results []result
	for _, s := range linkSettings {
		if !selected(s) {
			continue
		}
		r := result{s: s}
		r.load[0] = loadavg()
		r.rounds = linkSetting(b, s, reps)
		r.load[1] = loadavg()
		results = append(results, r)
	}
	fmt.Printf("\n#### One of two ToR paths cut (%s BFD)\n\n", bfdImpl())
	fmt.Printf("%d repetitions per setting; a pod on node-2 sends a UDP echo every 10 ms to a pod on node-1, IPv4 and IPv6 at once; both nodes route each other's pod CIDRs through two FRR ToRs (ECMP, eBGP); the path between node-1 and the ToR carrying the probes is cut on the rack's bridge (carrier stays up)\n\n", reps)
	fmt.Println("| setting | probes lost by the flow across the cut: median / worst | longest gap (ms): median / worst | routes around the cut: median / worst (s) | vs baseline (loss) | IPv4 / IPv6 lost, every rep | FRR BFD sessions set up again to end a loop | load average start -> end |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |")
	// A flow is hashed onto one ToR each way; the one that crossed the cut lost the most.
	lost := func(x linkRound) float64 { return float64(max(x.st[0].Lost, x.st[1].Lost)) }
	var baseLoss float64
	for _, r := range results {
		if r.s.key == "tuned-nogr" {
			var l []float64
			for _, x := range r.rounds {
				l = append(l, lost(x))
			}
			baseLoss = median(l)
		}
	}
	for _, r := range results {
		var worst []float64
		var gaps, conv []time.Duration
		var each []string
		stuck := 0
		for _, x := range r.rounds {
			stuck += x.stuck
			worst = append(worst, lost(x))
			gaps = append(gaps, max(x.st[0].MaxGap, x.st[1].MaxGap))
			c := x.converged
			if c == 0 {
				c = linkWait
			}
			conv = append(conv, c)
			each = append(each, fmt.Sprintf("%d/%d", x.st[0].Lost, x.st[1].Lost))
		}
		vs := "-"
		if baseLoss > 0 {
			vs = fmt.Sprintf("%.3gx", median(worst)/baseLoss)
		}
		fmt.Printf("| %s | **%.0f** / %.0f | %s / %s | %s / %s | %s | %s | %d | %s -> %s |\n", r.s.name,
			median(worst), slices.Max(worst), ms(median(gaps)), ms(pct(gaps, 100)),
			sec(median(conv)), sec(pct(conv, 100)), vs, strings.Join(each, ", "), stuck, r.load[0], r.load[1])
		b.ReportMetric(median(worst), "link-"+r.s.key+"-lost")
	}
	fmt.Println()
}

func linkSetting(b *testing.B, s foSetting, reps int) []linkRound {
	sc := newScope(b)
	defer sc.close()
	l := lab.New(sc, lab.Options{AgentArgs: s.args})
	c := lab.InstallCRDs(sc, l)
	seg := l.AddSegment(sc, "rack-1")
	tors := []*lab.Router{
		l.AddRouter(sc, "tor-a", lab.RouterOptions{ASN: torASN, Host: 1, Segments: []*lab.Segment{seg}, BFD: s.bfd}),
		l.AddRouter(sc, "tor-b", lab.RouterOptions{ASN: torASN, Host: 2, Segments: []*lab.Segment{seg}, BFD: s.bfd}),
	}
	c.Configuration(config.BGPConfigurationSpec{NodeToNodeMesh: ptrTo(false)})
	for _, r := range tors {
		c.Peer(r.Name, config.BGPPeerSpec{PeerAddress: r.Addr4(seg).String(), PeerASN: torASN, BFD: s.peerBFD()})
	}
	var nodes []*lab.Node
	for i := 1; i <= 2; i++ {
		// The ToRs know the node before its agent dials them.
		n := l.AddNode(sc, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i, Segment: seg, NoAgent: true,
			Annotations: map[string]string{config.AnnotationASN: "65001"}})
		for _, r := range tors {
			nb := s.torNeighbor(n, 65001)
			nb.ASOverride, nb.NextHopSelf = true, true
			if err := r.AddNeighbor(nb); err != nil {
				b.Fatal(err)
			}
		}
		if err := n.Agent.Start(); err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	n1, n2 := nodes[0], nodes[1]
	// paths is the number of next hops of a's route to b's pod CIDRs (the smallest of the
	// two families).
	paths := func(a, o *lab.Node) (int, error) {
		least := 99
		for _, p := range o.PodCIDRs {
			r, err := a.Route(p)
			if err != nil {
				return 0, err
			}
			least = min(least, strings.Count(r, "via "))
		}
		return least, nil
	}
	ecmp := func() error {
		for _, pair := range [][2]*lab.Node{{n1, n2}, {n2, n1}} {
			if k, err := paths(pair[0], pair[1]); err != nil || k != 2 {
				return fmt.Errorf("%s: %d next hops to %s (%v)", pair[0].Name, k, pair[1].Name, err)
			}
		}
		if s.bfd {
			for _, r := range tors {
				if err := bfdUp(r, n1.IPv4, n2.IPv4); err != nil {
					return err
				}
			}
		}
		return nil
	}
	// settle waits for ECMP through both ToRs. Seen with both BFD implementations, at
	// set-up and after a cut path came back: FRR 8.4's BFD session with a node goes up and
	// down every 300 to 350 ms (FRR: "control detection time expired"), each time
	// resetting the BGP session it has just brought up (Cease/BFD Down). After 30 s of
	// that, FRR's BFD sessions are taken down and set up again (the neighbours' bfd lines
	// removed and put back; without BFD, FRR restarts), up to three times, and counted.
	restarts := 0
	settle := func(what string) {
		for try := 0; ; try++ {
			err := lab.Poll(context.Background(), 30*time.Second, 100*time.Millisecond, ecmp)
			if err == nil {
				return
			}
			if try == 3 {
				b.Fatalf("ECMP through both ToRs %s: %v", what, err)
			}
			fmt.Printf("link %s: no ECMP 30 s %s (%v): FRR's BFD sessions set up again\n", s.key, what, err)
			restarts++
			for _, r := range tors {
				if !s.bfd {
					if err := r.Stop(); err != nil {
						b.Fatal(err)
					}
					if err := r.Start(); err != nil {
						b.Fatal(err)
					}
					continue
				}
				for _, n := range nodes {
					if err := r.Configure(fmt.Sprintf("router bgp %d", torASN), "no neighbor "+n.IPv4.String()+" bfd"); err != nil {
						b.Fatal(err)
					}
					if err := r.SetNeighborBFD(s.torNeighbor(n, 65001)); err != nil {
						b.Fatal(err)
					}
				}
			}
		}
	}
	settle("at set-up")
	target, client := n1.AddPod(sc, "target"), n2.AddPod(sc, "client")

	var out []linkRound
	for r := range reps {
		before := restarts
		settle("after the path came back")
		time.Sleep(time.Second + time.Duration(r)*300*time.Millisecond)
		var flows [2]*lab.Flow
		for i, v6 := range []bool{false, true} {
			f, err := lab.StartFlow(client, target, v6, flowInterval)
			if err != nil {
				b.Fatal(err)
			}
			flows[i] = f
		}
		time.Sleep(500 * time.Millisecond)
		cut, err := busier(tors, seg)
		if err != nil {
			b.Fatal(err)
		}
		var other *lab.Router
		for _, t := range tors {
			if t != cut {
				other = t
			}
		}
		t0 := time.Now()
		if err := l.CutPath(n1, cut, true); err != nil {
			b.Fatal(err)
		}
		// Around the cut: node-1 routes node-2's CIDRs through the other ToR alone, and the
		// cut ToR no longer routes node-1's CIDRs to node-1.
		x := linkRound{tor: cut.Name, stuck: restarts - before}
		err = lab.Poll(context.Background(), linkWait, 10*time.Millisecond, func() error {
			for _, p := range n2.PodCIDRs {
				rt, err := n1.Route(p)
				if err != nil {
					return err
				}
				if strings.Count(rt, "via ") != 1 || !strings.Contains(rt, "via "+addrOf(p, other.Addr4(seg), other.Addr6(seg)).String()+" ") {
					return fmt.Errorf("node-1: %s: %q", p, rt)
				}
			}
			for _, p := range n1.PodCIDRs {
				rt, err := cut.KernelRoute(p)
				if err != nil {
					return err
				}
				if strings.Contains(rt, addrOf(p, n1.IPv4, n1.IPv6).String()) {
					return fmt.Errorf("%s: %s: %q", cut.Name, p, rt)
				}
			}
			return nil
		})
		if err == nil {
			x.converged = time.Since(t0)
		}
		time.Sleep(time.Second)
		for i, f := range flows {
			x.st[i] = f.Stop()
		}
		fmt.Printf("link %s, rep %d: cut node-1 - %s; around it after %v; IPv4 %v; IPv6 %v (load %s)\n", s.key, r+1, cut.Name,
			x.converged.Round(time.Millisecond), x.st[0], x.st[1], loadavg())
		if err := l.CutPath(n1, cut, false); err != nil {
			b.Fatal(err)
		}
		out = append(out, x)
	}
	return out
}

// busier is the ToR that forwarded the most packets (received on its rack interface) in
// half a second: the one the probes cross.
func busier(tors []*lab.Router, seg *lab.Segment) (*lab.Router, error) {
	count := func() ([]int64, error) {
		var out []int64
		for _, r := range tors {
			s, err := r.IPOutput("-s", "-o", "link", "show", lab.SegmentInterface(seg))
			if err != nil {
				return nil, err
			}
			// -o puts everything on one line: "... RX: bytes packets ... \    N M ..."
			i := strings.Index(s, "RX:")
			f := strings.Fields(strings.ReplaceAll(s[i:], "\\", " "))
			var nums []int64
			for _, w := range f {
				if v, err := strconv.ParseInt(w, 10, 64); err == nil {
					nums = append(nums, v)
				}
			}
			if len(nums) < 2 {
				return nil, fmt.Errorf("%s: counters in %q", r.Name, s)
			}
			out = append(out, nums[1])
		}
		return out, nil
	}
	a, err := count()
	if err != nil {
		return nil, err
	}
	time.Sleep(500 * time.Millisecond)
	z, err := count()
	if err != nil {
		return nil, err
	}
	best := 0
	for i := range tors {
		if z[i]-a[i] > z[best]-a[best] {
			best = i
		}
	}
	return tors[best], nil
}

func addrOf(p netip.Prefix, v4, v6 netip.Addr) netip.Addr {
	if p.Addr().Is6() {
		return v6
	}
	return v4
}

// --- 3. restarts ---------------------------------------------------------------------

var restartSettings = []foSetting{
	{key: "bfd-ccpf", name: "BFD 100ms x 3, FRR with check-control-plane-failure", args: defaultArgs, bfd: true, ccpf: true, hold: 9 * time.Second, restart: 120 * time.Second},
	{key: "bfd", name: "BFD 100ms x 3, FRR without check-control-plane-failure", args: defaultArgs, bfd: true, hold: 9 * time.Second, restart: 120 * time.Second},
	{key: "nobfd", name: "no BFD (baseline)", args: defaultArgs, hold: 9 * time.Second, restart: 120 * time.Second},
}

// restartCases are the ways the agent of the target node goes away and comes back.
var restartCases = []string{"sigterm", "upgrade", "sigkill"}

// restartRound is one restart: probes from the pod on the other node and from the host,
// IPv4 then IPv6.
type restartRound struct {
	st        [4]lab.FlowStats
	back      time.Duration // agent started -> sessions established again
	torDrops  int           // FRR's connectionsDropped for the node during the round
	torBFDDn  int           // bfdd's session-down count for the node during the round
	meshDrops int           // the other node's session with it not established at a poll
}

var flowNames = [4]string{"pod IPv4", "pod IPv6", "host IPv4", "host IPv6"}

func restartPart(b *testing.B) {
	reps := envInt("AGENTBENCH_RESTART_REPS", 3)
	type result struct {
		s      foSetting
		rounds map[string][]restartRound
		load   [2]string
	}
	var results []result
	for _, s := range restartSettings {
		if !selected(s) {
			continue
		}
		r := result{s: s}
		r.load[0] = loadavg()
		r.rounds = restartSetting(b, s, reps)
		r.load[1] = loadavg()
		results = append(results, r)
	}
	lostOf := func(rs []restartRound) (sum []float64, per [4][]float64) {
		for _, x := range rs {
			t := 0.0
			for i := range x.st {
				per[i] = append(per[i], float64(x.st[i].Lost))
				t += float64(x.st[i].Lost)
			}
			sum = append(sum, t)
		}
		return sum, per
	}
	base := map[string]float64{}
	for _, r := range results {
		if r.s.key == "nobfd" {
			for _, cs := range restartCases {
				sum, _ := lostOf(r.rounds[cs])
				base[cs] = median(sum)
			}
		}
	}
	fmt.Printf("\n#### Agent restarts with BFD (%s BFD)\n\n", bfdImpl())
	fmt.Printf("%d repetitions per case; node-2's agent restarts while a pod on node-1 and a host behind the ToR send a UDP echo every 10 ms to a pod on node-2, IPv4 and IPv6 (4 flows); agent defaults (graceful restart, 120 s); probes lost per flow: median (worst)\n\n", reps)
	fmt.Println("| setting | case | pod IPv4 | pod IPv6 | host IPv4 | host IPv6 | all 4: median | vs no BFD | FRR session drops / BFD downs | node-1 saw the session down | sessions back after start: median (s) | load average start -> end |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, r := range results {
		for _, cs := range restartCases {
			rs := r.rounds[cs]
			if len(rs) == 0 {
				continue
			}
			sum, per := lostOf(rs)
			cells := make([]string, 4)
			for i := range per {
				cells[i] = fmt.Sprintf("%.0f (%.0f)", median(per[i]), slices.Max(per[i]))
			}
			drops, downs, mesh := 0, 0, 0
			var back []time.Duration
			for _, x := range rs {
				drops, downs, mesh = drops+x.torDrops, downs+x.torBFDDn, mesh+min(x.meshDrops, 1)
				back = append(back, x.back)
			}
			vs := "-"
			if base[cs] > 0 {
				vs = fmt.Sprintf("%.3gx", median(sum)/base[cs])
			} else if r.s.key != "nobfd" && median(sum) == 0 {
				vs = "= (0)"
			}
			fmt.Printf("| %s | %s | %s | **%.0f** | %s | %d / %d | %d of %d | %s | %s -> %s |\n", r.s.name, cs, strings.Join(cells, " | "),
				median(sum), vs, drops, downs, mesh, len(rs), sec(median(back)), r.load[0], r.load[1])
			b.ReportMetric(median(sum), "restart-"+r.s.key+"-"+cs+"-lost")
		}
	}
	fmt.Println()
}

func restartSetting(b *testing.B, s foSetting, reps int) map[string][]restartRound {
	sc := newScope(b)
	defer sc.close()
	// A copy of the binaries of its own: the upgrade replaces the agent's.
	bin := copyBinaries(b, sc.TempDir())
	l := lab.New(sc, lab.Options{AgentArgs: s.args, BinDir: bin})
	c := lab.InstallCRDs(sc, l)
	fab := l.DefaultSegment()
	tor := l.AddRouter(sc, "tor", lab.RouterOptions{ASN: torASN, Segments: []*lab.Segment{fab}, BFD: s.bfd})
	torAddr := tor.Addr4(fab)
	c.Configuration(config.BGPConfigurationSpec{NodeToNodeMesh: ptrTo(true), MeshBFD: s.peerBFD()})
	c.Peer("tor", config.BGPPeerSpec{PeerAddress: torAddr.String(), PeerASN: torASN, BFD: s.peerBFD()})
	host := l.AddHost(sc, "client", tor)
	var nodes []*lab.Node
	for i := 1; i <= 2; i++ {
		n := l.AddNode(sc, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i})
		if err := tor.AddNeighbor(s.torNeighbor(n, config.DefaultASN)); err != nil {
			b.Fatal(err)
		}
		// The host's subnet is no pod CIDR: the nodes route it to the ToR statically.
		if err := n.IP(
			[]string{"route", "replace", host.PrefixV4.String(), "via", torAddr.String()},
			[]string{"-6", "route", "replace", host.PrefixV6.String(), "via", tor.Addr6(fab).String()},
		); err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	n1, n2 := nodes[0], nodes[1]
	for _, n := range nodes {
		ready(b, n)
	}
	meshed(b, nodes)
	up(b, s, nodes, tor, torAddr)
	torHasRoutes(b, tor, nodes...)
	src, target := n1.AddPod(sc, "client"), n2.AddPod(sc, "target")

	out := map[string][]restartRound{}
	for r := range reps {
		for _, cs := range restartCases {
			x := restartOnce(b, s, cs, r, l, tor, torAddr, host, nodes, src, target)
			fmt.Printf("restart %s %s, rep %d: back after %v; lost %d/%d/%d/%d (%s); FRR drops %d, BFD downs %d, node-1 saw it down: %v (load %s)\n",
				s.key, cs, r+1, x.back.Round(time.Millisecond), x.st[0].Lost, x.st[1].Lost, x.st[2].Lost, x.st[3].Lost,
				strings.Join(flowNames[:], "/"), x.torDrops, x.torBFDDn, x.meshDrops > 0, loadavg())
			out[cs] = append(out[cs], x)
		}
	}
	_ = n2
	return out
}

func restartOnce(b *testing.B, s foSetting, cs string, rep int, l *lab.Lab, tor *lab.Router, torAddr netip.Addr, host *lab.Host,
	nodes []*lab.Node, src, target *lab.Pod) restartRound {
	n1, n2 := nodes[0], nodes[1]
	meshed(b, nodes)
	up(b, s, nodes, tor, torAddr)
	torHasRoutes(b, tor, nodes...)
	drops0, downs0 := torCounters(b, tor, n2.IPv4)
	var flows [4]*lab.Flow
	for i := range flows {
		v6 := i%2 == 1
		var f *lab.Flow
		var err error
		if i < 2 {
			f, err = lab.StartFlow(src, target, v6, flowInterval)
		} else {
			f, err = lab.StartFlowFrom(host.NetNS, host.Addr(v6), target, flowInterval)
		}
		if err != nil {
			b.Fatal(err)
		}
		flows[i] = f
	}
	// node-1's view of its session with node-2, polled while the agent is away.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var meshDown int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			ns, err := n1.Neighbors()
			if err != nil {
				continue
			}
			for _, p := range ns {
				if p.Address == n2.IPv4.String() && p.State != "established" {
					meshDown++
				}
			}
		}
	}()
	time.Sleep(time.Second + time.Duration(rep)*300*time.Millisecond)
	var err error
	switch cs {
	case "sigterm":
		err = n2.Agent.Stop()
	case "upgrade":
		if err = n2.Agent.Stop(); err == nil {
			// A new build: a fresh copy of the binary (a new file, renamed over the old
			// one) and a changed flag.
			err = freshCopy(filepath.Join(l.BinDir(), "podroute-agent"))
			n2.Agent.SetArgs([]string{"--stale-timeout", fmt.Sprintf("%ds", 100+rep)})
			time.Sleep(2 * time.Second)
		}
	case "sigkill":
		if err = n2.Agent.Kill(); err == nil {
			time.Sleep(2 * time.Second)
		}
	}
	if err != nil {
		b.Fatalf("%s: %v", cs, err)
	}
	t0 := time.Now()
	if err := n2.Agent.Start(); err != nil {
		b.Fatal(err)
	}
	var x restartRound
	lab.Eventually(b, converge, "node-2 back", func() error {
		return n2.Established(n1.IPv4, torAddr)
	})
	x.back = time.Since(t0)
	meshed(b, nodes)
	torHasRoutes(b, tor, n2)
	time.Sleep(2 * time.Second)
	for i, f := range flows {
		x.st[i] = f.Stop()
	}
	close(stop)
	wg.Wait()
	x.meshDrops = meshDown
	drops1, downs1 := torCounters(b, tor, n2.IPv4)
	x.torDrops, x.torBFDDn = drops1-drops0, downs1-downs0
	return x
}

// torCounters is FRR's count of dropped sessions with a, and bfdd's of its BFD session
// going down (0 without BFD).
func torCounters(b *testing.B, tor *lab.Router, a netip.Addr) (drops, bfdDowns int) {
	b.Helper()
	nb, err := tor.NeighborJSON(a)
	if err != nil {
		b.Fatal(err)
	}
	if v, ok := nb["connectionsDropped"].(float64); ok {
		drops = int(v)
	}
	cs, err := tor.BFDCounters()
	if err != nil {
		// Without bfdd there are no counters.
		return drops, 0
	}
	return drops, cs[a.String()].SessionDown
}

// copyBinaries copies the lab's binaries (podroute, podroute-agent, podroutectl, and
// podroute-ipam, portmap when there) into dir.
func copyBinaries(b *testing.B, dir string) string {
	b.Helper()
	src := cniutil.BinDir()
	for _, name := range []string{"podroute", "podroute-agent", "podroutectl", "portmap"} {
		if err := copyFile(filepath.Join(src, name), filepath.Join(dir, name)); err != nil && name != "portmap" {
			b.Fatal(err)
		}
	}
	if err := os.Symlink("podroute", filepath.Join(dir, "podroute-ipam")); err != nil {
		b.Fatal(err)
	}
	return dir
}

// freshCopy replaces path with a new file of the same content, as installing a new build
// does (a new inode renamed over the old one).
func freshCopy(path string) error {
	tmp := path + ".new"
	if err := copyFile(path, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	return out.Close()
}
