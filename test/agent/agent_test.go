// Package agent_test runs podroute-agent on several nodes against a real kube-apiserver, with
// real BGP sessions across a shared L2 fabric, pods wired by the real CNI plugin, and checks
// what the agents do to the kernel and to traffic (see package test/lab for the set-up).
//
// One cluster is shared by the subtests to keep the suite short; each subtest starts from,
// and returns to, the converged three-node mesh.
package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/test/lab"
)

// converge bounds how long a routing change may take to reach every node's kernel.
const converge = 30 * time.Second

type cluster struct {
	lab   *lab.Lab
	nodes []*lab.Node
	pods  []*lab.Pod // pods[i] runs on nodes[i]
}

// TestAgents runs the mesh with BFD at 100 ms x 3, the tightest timers podroute accepts:
// restarts must lose nothing with it on, and a dead link is seen within the detection time.
func TestAgents(t *testing.T) {
	start := time.Now()
	l := lab.New(t, lab.Options{})
	lab.InstallCRDs(t, l).Configuration(config.BGPConfigurationSpec{MeshBFD: &config.BFDSpec{MinTx: "100ms", MinRx: "100ms"}})
	c := &cluster{lab: l}
	for i := 1; i <= 3; i++ {
		c.nodes = append(c.nodes, l.AddNode(t, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i}))
	}
	for _, n := range c.nodes {
		lab.Eventually(t, converge, n.Name+" ready", func() error { return ready(n) })
	}
	for _, n := range c.nodes {
		c.pods = append(c.pods, n.AddPod(t, "pod"))
	}
	c.waitMesh(t)
	t.Logf("three nodes ready, meshed and with a pod each in %v", time.Since(start).Round(time.Millisecond))

	t.Run("Mesh", c.testMesh)
	t.Run("HandDeletedRoute", c.testHandDeletedRoute)
	t.Run("HostileAnnouncements", c.testHostileAnnouncements)
	t.Run("SIGKILLRestart", func(t *testing.T) { c.testRestart(t, (*lab.Agent).Kill) })
	t.Run("SIGTERMRestart", func(t *testing.T) { c.testRestart(t, (*lab.Agent).Stop) })
	t.Run("UplinkFlap", c.testUplinkFlap)
	t.Run("NodeLifecycle", c.testNodeLifecycle)
	t.Run("Readiness", c.testReadiness)
}

// ready checks the agent's own view through podroutectl status.
func ready(n *lab.Node) error {
	st, err := n.Status()
	if err != nil {
		return err
	}
	if !st.Ready {
		return fmt.Errorf("%s not ready: %v", n.Name, st.NotReadyReasons)
	}
	return nil
}

// meshed reports an error until every node has a podroute route to every other node's pod
// CIDRs via that node's fabric address, and a blackhole for its own.
func meshed(nodes []*lab.Node) error {
	for _, n := range nodes {
		for _, p := range n.PodCIDRs {
			r, err := n.Route(p)
			if err != nil {
				return err
			}
			if !strings.HasPrefix(r, "blackhole "+p.String()) || !strings.Contains(r, "proto 201") {
				return fmt.Errorf("%s: own pod CIDR %s: route %q, want a proto 201 blackhole", n.Name, p, r)
			}
		}
		for _, o := range nodes {
			if o == n {
				continue
			}
			for _, p := range o.PodCIDRs {
				via := o.IPv4
				if p.Addr().Is6() {
					via = o.IPv6
				}
				if err := n.RouteVia(p, via); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (c *cluster) waitMesh(t *testing.T) {
	t.Helper()
	lab.Eventually(t, converge, "routes between the nodes", func() error { return meshed(c.nodes) })
}

func families() []bool { return []bool{false, true} }

func famName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// reach checks ping and TCP between every ordered pair of pods on different nodes.
func (c *cluster) reach(t *testing.T) {
	t.Helper()
	for i, a := range c.pods {
		for j, b := range c.pods {
			if i == j {
				continue
			}
			for _, v6 := range families() {
				dst := b.Addr(v6)
				if err := a.Ping(dst, 5*time.Second); err != nil {
					t.Errorf("%s ping %s/%s -> %s/%s: %v", famName(v6), a.Node.Name, a.Name, b.Node.Name, b.Name, err)
				}
				if err := a.TCP(b, dst, 5*time.Second); err != nil {
					t.Errorf("%s TCP %s/%s -> %s/%s: %v", famName(v6), a.Node.Name, a.Name, b.Node.Name, b.Name, err)
				}
			}
		}
	}
}

// 1. Three nodes: reachability, kernel routes, CNI config, BGP sessions.
func (c *cluster) testMesh(t *testing.T) {
	c.waitMesh(t)
	c.reach(t)

	for _, n := range c.nodes {
		// The conflist the agent wrote, the one the pods above were wired with, holds the
		// node's own pod CIDRs and nothing else.
		path, conf, err := n.ConfList()
		if err != nil {
			t.Fatal(err)
		}
		var cl struct {
			Plugins []struct {
				Type string `json:"type"`
				IPAM struct {
					Type   string `json:"type"`
					Ranges [][]struct {
						Subnet string `json:"subnet"`
					} `json:"ranges"`
				} `json:"ipam"`
			} `json:"plugins"`
		}
		if err := json.Unmarshal(conf, &cl); err != nil {
			t.Fatalf("%s: %s: %v", n.Name, path, err)
		}
		var subnets []string
		for _, p := range cl.Plugins {
			if p.Type != "podroute" {
				continue
			}
			for _, set := range p.IPAM.Ranges {
				for _, r := range set {
					subnets = append(subnets, r.Subnet)
				}
			}
		}
		var want []string
		for _, p := range n.PodCIDRs {
			want = append(want, p.String())
		}
		if !slices.Equal(subnets, want) {
			t.Errorf("%s: conflist %s ranges %v, want %v:\n%s", n.Name, path, subnets, want, conf)
		}

		// podroutectl: every other node is an established mesh peer.
		neighbors, err := n.Neighbors()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, p := range neighbors {
			if p.State != "established" || p.Kind != "mesh" {
				t.Errorf("%s: neighbor %s (%s): state %q kind %q, want established mesh", n.Name, p.Address, p.Node, p.State, p.Kind)
			}
			got[p.Address] = p.Node
			if p.Accepted != 2 {
				t.Errorf("%s: neighbor %s (%s): %d prefixes accepted, want its 2 pod CIDRs", n.Name, p.Address, p.Node, p.Accepted)
			}
		}
		for _, o := range c.nodes {
			if o != n && got[o.IPv4.String()] != o.Name {
				t.Errorf("%s: no neighbor %s for node %s in %v", n.Name, o.IPv4, o.Name, got)
			}
		}
		if len(got) != len(c.nodes)-1 {
			t.Errorf("%s: neighbors %v, want the %d other nodes", n.Name, got, len(c.nodes)-1)
		}
		st, err := n.Status()
		if err != nil {
			t.Fatal(err)
		}
		if !st.Ready || !st.BGPStarted || !st.CNIConfigWritten || !st.APIWatchHealthy || st.Routes.Learned != 4 || st.Routes.Failed != 0 {
			t.Errorf("%s: status %+v", n.Name, st)
		}
		ip, _ := n.PodRoutes()
		t.Logf("%s: ip route show proto 201:\n%s", n.Name, ip)
	}
}

// 4. A learned route deleted by hand comes back: the agent watches route deletions.
func (c *cluster) testHandDeletedRoute(t *testing.T) {
	c.waitMesh(t)
	n, o := c.nodes[0], c.nodes[1]
	for i, p := range o.PodCIDRs {
		via := o.IPv4
		if i == 1 {
			via = o.IPv6
		}
		args := []string{"route", "del", p.String()}
		if p.Addr().Is6() {
			args = append([]string{"-6"}, args...)
		}
		if err := n.IP(args); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		lab.Eventually(t, 10*time.Second, "route back after ip route del", func() error { return n.RouteVia(p, via) })
		t.Logf("%s: %s deleted by hand, back in %v", n.Name, p, time.Since(t0).Round(time.Millisecond))
	}
	c.waitMesh(t)
	c.reach(t)
}

// 5. A hostile mesh member: everything it announces is refused, by every node, and no
// node's kernel routes change.
func (c *cluster) testHostileAnnouncements(t *testing.T) {
	n1 := c.nodes[0]
	pfx := netip.MustParsePrefix
	t.Run("Refused", func(t *testing.T) {
		c.hostile(t, lab.RogueOptions{Announce: []netip.Prefix{
			pfx("0.0.0.0/0"), pfx("::/0"), // default routes
			pfx("198.51.100.0/24"), pfx("2001:db8:ffff::/48"), // outside the cluster CIDRs
			pfx("10.244.99.128/25"), pfx("fd00:10:244:99:8000::/65"), // longer than a node CIDR
			netip.PrefixFrom(n1.IPv4, 32), netip.PrefixFrom(n1.IPv6, 128), // a node's address
			pfx("10.244.0.0/16"), // the whole cluster, covering every node's CIDR
		}})
	})
	// A mesh peer may originate only its own Node's pod CIDRs: node-2's, announced by the
	// rogue, are refused by node-1 and node-3 (and by node-2 as its own). This rogue gets
	// an address of its own: the nodes' ARP entries for the previous rogue's address
	// still point at its deleted interface for up to a reachable time (~30s).
	t.Run("AnotherNodesPodCIDR", func(t *testing.T) {
		c.hostile(t, lab.RogueOptions{Name: "rogue-2", Index: 98, Announce: c.nodes[1].PodCIDRs})
	})
}

// hostile starts a rogue speaker, a Node object whose BGP speaker announces opts.Announce,
// and checks that every node refuses every one of them with the expected reason, and that
// no node's podroute or default routes change.
func (c *cluster) hostile(t *testing.T, opts lab.RogueOptions) {
	prefixes := opts.Announce
	c.waitMesh(t)
	before := map[string]string{}
	for _, n := range c.nodes {
		before[n.Name] = kernelSnapshot(t, n)
	}
	rogue := c.lab.StartRogue(t, opts)
	t0 := time.Now()
	for _, n := range c.nodes {
		lab.Eventually(t, converge, n.Name+": session with the rogue speaker", func() error { return n.Established(rogue.IPv4) })
	}
	// Every node records a refusal for every prefix.
	for _, n := range c.nodes {
		lab.Eventually(t, 10*time.Second, n.Name+": refusals", func() error {
			rs, err := n.BGPRoutes()
			if err != nil {
				return err
			}
			refused := map[string]string{}
			for _, f := range rs.Refused {
				if f.Peer == rogue.IPv4.String() {
					refused[f.Prefix] = f.Reason
				}
			}
			var missing []string
			for _, p := range prefixes {
				if refused[p.String()] == "" {
					missing = append(missing, p.String())
				}
			}
			if len(missing) > 0 {
				var kernel []string
				for _, p := range prefixes {
					if r, _ := n.Route(p); r != "" {
						kernel = append(kernel, r)
					}
				}
				return fmt.Errorf("not refused: %v; refused: %v; learned: %+v; kernel: %q", missing, refused, rs.Routes, kernel)
			}
			return nil
		})
	}
	t.Logf("rogue sessions up and all %d prefixes refused by every node %v after the rogue started", len(prefixes), time.Since(t0).Round(time.Millisecond))

	for _, n := range c.nodes {
		rs, err := n.BGPRoutes()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs.Routes {
			if r.SourcePeer == rogue.IPv4.String() || slices.Contains(r.NextHops, rogue.IPv4.String()) || slices.Contains(r.NextHops, rogue.IPv6.String()) {
				t.Errorf("%s: learned %s from the rogue speaker: %+v", n.Name, r.Prefix, r)
			}
		}
		for _, f := range rs.Refused {
			if f.Peer != rogue.IPv4.String() {
				continue
			}
			want := expectedReason(n, netip.MustParsePrefix(f.Prefix))
			if !strings.HasPrefix(f.Reason, want) {
				t.Errorf("%s: %s refused because %q, want %q...", n.Name, f.Prefix, f.Reason, want)
			}
			if n == c.nodes[0] {
				t.Logf("%s refuses %-26s %s", n.Name, f.Prefix, f.Reason)
			}
		}
	}
	// The kernels stay exactly as they were. A wrongly accepted path would be installed
	// within milliseconds of its arrival; watch for a while anyway.
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 3*time.Second, true, func(context.Context) (bool, error) {
		for _, n := range c.nodes {
			if got := kernelSnapshot(t, n); got != before[n.Name] {
				return false, fmt.Errorf("%s: kernel routes changed while the rogue speaker was up:\nbefore:\n%s\nafter:\n%s", n.Name, before[n.Name], got)
			}
		}
		return false, nil // keep watching until the time is up
	})
	if !wait.Interrupted(err) {
		t.Fatal(err)
	}
	c.reach(t)
}

// expectedReason is the refusal reason node n must give for the rogue's prefix p.
func expectedReason(n *lab.Node, p netip.Prefix) string {
	switch {
	case p.Bits() == 0:
		return "default route"
	case slices.Contains(n.PodCIDRs, p):
		return "overlaps denied prefix " + p.String()
	case p == netip.MustParsePrefix("10.244.0.0/16"):
		return "overlaps denied prefix"
	case !lab.DefaultClusterV4.Contains(p.Addr()) && !lab.DefaultClusterV6.Contains(p.Addr()):
		// Node addresses too: outside the cluster CIDRs, the cluster rule refuses them.
		return "outside cluster CIDRs"
	case (p.Addr().Is4() && p.Bits() > 24) || (p.Addr().Is6() && p.Bits() > 64):
		return "longer than node CIDR size"
	default:
		return "" // any reason will do
	}
}

// kernelSnapshot is what the hostile test compares: podroute's routes and the default
// routes, as ip prints them.
func kernelSnapshot(t *testing.T, n *lab.Node) string {
	t.Helper()
	r, err := n.PodRoutes()
	if err != nil {
		t.Fatal(err)
	}
	d, err := n.DefaultRoutes()
	if err != nil {
		t.Fatal(err)
	}
	return r + d
}

// bfdUp checks that n's BFD sessions with every other node are up.
func (c *cluster) bfdUp(n *lab.Node) error {
	ns, err := n.Neighbors()
	if err != nil {
		return err
	}
	up := 0
	for _, p := range ns {
		if p.BFD == "up" {
			up++
		}
	}
	if up != len(c.nodes)-1 {
		return fmt.Errorf("%s: %d BFD sessions up, want %d: %+v", n.Name, up, len(c.nodes)-1, ns)
	}
	return nil
}

// 3. Kill (SIGKILL) or stop (SIGTERM) the agent of a node in the middle of traffic, start
// it again 2 s later: not a packet is lost, the node's kernel routes stay in place
// throughout, and the restarted agent sweeps stale routes once its peers sent End-of-RIB.
// BFD runs on every session: its failure during the restart must not cost the routes.
func (c *cluster) testRestart(t *testing.T, stop func(*lab.Agent) error) {
	c.waitMesh(t)
	a, b := c.nodes[0], c.nodes[1]
	for _, n := range c.nodes {
		lab.Eventually(t, converge, n.Name+": BFD up with every other node", func() error { return c.bfdUp(n) })
	}
	podA, podB := c.pods[0], c.pods[1]

	// Watch the learned routes on both ends while the agent is away.
	type watch struct {
		node   *lab.Node
		routes []netip.Prefix
		via    []netip.Addr
	}
	watches := []watch{
		{a, b.PodCIDRs, []netip.Addr{b.IPv4, b.IPv6}},
		{a, c.nodes[2].PodCIDRs, []netip.Addr{c.nodes[2].IPv4, c.nodes[2].IPv6}},
		{b, a.PodCIDRs, []netip.Addr{a.IPv4, a.IPv6}},
	}
	stopWatch := make(chan struct{})
	var mu sync.Mutex
	var gaps []string
	polls := 0
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, w := range watches {
				for i, p := range w.routes {
					if err := w.node.RouteVia(p, w.via[i]); err != nil {
						mu.Lock()
						gaps = append(gaps, time.Now().Format("15:04:05.000")+" "+err.Error())
						mu.Unlock()
					}
				}
			}
			mu.Lock()
			polls++
			mu.Unlock()
			select {
			case <-stopWatch:
				return
			case <-tick.C:
			}
		}
	}()

	var flows []*lab.Flow
	for _, v6 := range families() {
		f, err := lab.StartFlow(podA, podB, v6, 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		flows = append(flows, f)
	}
	flowStart := time.Now()
	time.Sleep(2 * time.Second) // traffic before the crash

	off := a.Agent.LogSize()
	if err := stop(a.Agent); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	time.Sleep(2 * time.Second) // the agent is down
	if err := a.Agent.Start(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	var sweptAt time.Time
	lab.Eventually(t, converge, "stale sweep after the restart", func() error {
		log := a.Agent.LogSince(off)
		i := strings.Index(log, "BGP resynchronised after restart")
		if i < 0 {
			return fmt.Errorf("the agent has not logged a resynchronisation yet")
		}
		line, _, _ := strings.Cut(log[i:], "\n")
		if !strings.Contains(line, `"endOfRIB":true`) {
			return fmt.Errorf("swept without End-of-RIB: %s", line)
		}
		if sweptAt.IsZero() {
			sweptAt = time.Now()
		}
		return nil
	})
	log := a.Agent.LogSince(off)
	if !strings.Contains(log, "routes from a previous run found") {
		t.Errorf("the restarted agent did not find the previous run's routes:\n%s", log)
	}
	if rest := 15*time.Second - time.Since(flowStart); rest > 0 {
		time.Sleep(rest) // keep the flow going to 15 s
	}
	close(stopWatch)
	wg.Wait()
	for i, f := range flows {
		st := f.Stop()
		t.Logf("%s flow %s -> %s across the restart: %v", famName(i == 1), podA.Node.Name, podB.Node.Name, st)
		if st.Lost != 0 || st.SendErrors != 0 {
			t.Errorf("%s flow lost packets across the agent restart: %v", famName(i == 1), st)
		}
		if st.Received < 1000 {
			t.Errorf("%s flow: only %d echoes in 15 s", famName(i == 1), st.Received)
		}
	}
	t.Logf("killed at +%v, restarted %v later, stale routes swept %v after the restart; %d route polls, %d gaps",
		killed.Sub(flowStart).Round(time.Millisecond), restarted.Sub(killed).Round(time.Millisecond),
		sweptAt.Sub(restarted).Round(time.Millisecond), polls, len(gaps))
	if len(gaps) > 0 {
		t.Errorf("kernel routes went missing during the restart:\n%s", strings.Join(gaps, "\n"))
	}
	c.waitMesh(t)
	lab.Eventually(t, converge, a.Name+" sessions after restart", func() error { return a.Established(b.IPv4, c.nodes[2].IPv4) })
	lab.Eventually(t, converge, a.Name+": BFD back up", func() error { return c.bfdUp(a) })
}

// 6. A node's uplink flaps: once it is back, so are the routes, both ways, and traffic.
func (c *cluster) testUplinkFlap(t *testing.T) {
	c.waitMesh(t)
	n := c.nodes[2]
	others := []netip.Addr{c.nodes[0].IPv4, c.nodes[1].IPv4}
	sessionsDown := func() error {
		ns, err := n.Neighbors()
		if err != nil {
			return err
		}
		for _, p := range ns {
			if p.State == "established" {
				return fmt.Errorf("%s: session with %s still established", n.Name, p.Address)
			}
		}
		return nil
	}

	t.Run("AdminDown", func(t *testing.T) {
		// ip link set uplink down: the kernel flushes every route through the uplink at once,
		// the agent's learned routes included.
		if err := n.Uplink(false); err != nil {
			t.Fatal(err)
		}
		down := time.Now()
		lab.Eventually(t, 5*time.Second, "learned routes flushed with the link", func() error {
			for _, o := range c.nodes[:2] {
				for _, p := range o.PodCIDRs {
					if err := n.NoRoute(p); err != nil {
						return err
					}
				}
			}
			return nil
		})
		// Beyond the hold time: the sessions go down too.
		lab.Eventually(t, 15*time.Second, "sessions down", sessionsDown)
		t.Logf("%s: uplink down, sessions down after %v", n.Name, time.Since(down).Round(time.Millisecond))
		if err := n.Uplink(true); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		c.waitMesh(t)
		t.Logf("%s: uplink up, every route back on every node in %v", n.Name, time.Since(t0).Round(time.Millisecond))
		lab.Eventually(t, converge, "sessions back", func() error { return n.Established(others...) })
		t.Logf("%s: sessions re-established %v after link up", n.Name, time.Since(t0).Round(time.Millisecond))
		c.reach(t)
	})
	t.Run("CarrierLoss", func(t *testing.T) {
		// The switch port goes down: the node sees its uplink lose carrier, and its BGP
		// sessions time out.
		if err := n.FabricPort(false); err != nil {
			t.Fatal(err)
		}
		down := time.Now()
		lab.Eventually(t, 15*time.Second, "sessions down", sessionsDown)
		took := time.Since(down)
		t.Logf("%s: carrier lost, sessions down after %v", n.Name, took.Round(time.Millisecond))
		// BFD (300 ms detection) and not the 9 s hold time ends them; the bound leaves room
		// for a loaded machine and the 50 ms polls of Eventually.
		if took > 2*time.Second {
			t.Errorf("sessions went down %v after carrier loss: BFD should end them within its 300 ms detection time", took.Round(time.Millisecond))
		}
		if err := n.FabricPort(true); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		c.waitMesh(t)
		lab.Eventually(t, converge, "sessions back", func() error { return n.Established(others...) })
		t.Logf("%s: carrier back, sessions and routes in %v", n.Name, time.Since(t0).Round(time.Millisecond))
		c.reach(t)
	})
}

// 2. Node lifecycle: a new node joins the mesh everywhere; deleting its Node object removes
// its routes everywhere.
func (c *cluster) testNodeLifecycle(t *testing.T) {
	c.waitMesh(t)
	t0 := time.Now()
	n4 := c.lab.AddNode(t, "node-4", lab.NodeOptions{Index: 4})
	all := append(slices.Clone(c.nodes), n4)
	lab.Eventually(t, converge, "routes with node-4", func() error { return meshed(all) })
	t.Logf("node-4 (Node object + agent start) routed on every node in %v", time.Since(t0).Round(time.Millisecond))
	lab.Eventually(t, converge, "node-4 ready", func() error { return ready(n4) })
	pod4 := n4.AddPod(t, "pod")
	for _, v6 := range families() {
		if err := c.pods[0].Ping(pod4.Addr(v6), 5*time.Second); err != nil {
			t.Errorf("%s ping node-1 pod -> node-4 pod: %v", famName(v6), err)
		}
		if err := pod4.TCP(c.pods[1], c.pods[1].Addr(v6), 5*time.Second); err != nil {
			t.Errorf("%s TCP node-4 pod -> node-2 pod: %v", famName(v6), err)
		}
	}

	t1 := time.Now()
	if err := n4.DeleteNodeObject(); err != nil {
		t.Fatal(err)
	}
	lab.Eventually(t, converge, "node-4 routes gone", func() error {
		for _, n := range c.nodes {
			for _, p := range n4.PodCIDRs {
				if err := n.NoRoute(p); err != nil {
					return err
				}
			}
		}
		return nil
	})
	t.Logf("node-4 Node object deleted: its routes gone from every node in %v", time.Since(t1).Round(time.Millisecond))
	if err := n4.Remove(); err != nil {
		t.Error(err)
	}
	c.waitMesh(t)
}

// 7. Readiness follows the Node's pod CIDR, and no CNI config is written without one.
func (c *cluster) testReadiness(t *testing.T) {
	n := c.lab.AddNode(t, "node-5", lab.NodeOptions{Index: 5, NoPodCIDR: true})
	for _, get := range []func(string) (lab.Probe, error){n.ProbeSocket, n.ProbeHealthAddress} {
		lab.Eventually(t, converge, "not ready naming the pod CIDR", func() error {
			p, err := get("/readyz")
			if err != nil {
				return err
			}
			if p.Code != 503 || !strings.Contains(p.Body, "podCIDR") {
				return fmt.Errorf("/readyz: %d %s", p.Code, p.Body)
			}
			return nil
		})
	}
	p, _ := n.ProbeSocket("/readyz")
	t.Logf("node-5 without a pod CIDR: /readyz %d %s", p.Code, strings.TrimSpace(p.Body))
	st, err := n.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Ready || st.CNIConfigWritten || st.LastReconcile.IsZero() {
		t.Errorf("status without a pod CIDR: %+v", st)
	}
	if _, _, err := n.ConfList(); err == nil {
		t.Errorf("a CNI config was written for a node without a pod CIDR")
	}

	t0 := time.Now()
	if err := n.SetPodCIDRs(); err != nil {
		t.Fatal(err)
	}
	lab.Eventually(t, converge, "ready once the Node has a pod CIDR", func() error {
		p, err := n.ProbeSocket("/readyz")
		if err != nil {
			return err
		}
		if p.Code != 200 {
			return fmt.Errorf("/readyz: %d %s", p.Code, p.Body)
		}
		return nil
	})
	t.Logf("node-5 ready %v after its pod CIDRs were set", time.Since(t0).Round(time.Millisecond))
	if p, err := n.ProbeHealthAddress("/readyz"); err != nil || p.Code != 200 {
		t.Errorf("health address /readyz: %+v %v", p, err)
	}
	_, conf, err := n.ConfList()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range n.PodCIDRs {
		if !strings.Contains(string(conf), `"`+p.String()+`"`) {
			t.Errorf("conflist lacks %s:\n%s", p, conf)
		}
	}
	all := append(slices.Clone(c.nodes), n)
	lab.Eventually(t, converge, "node-5 in the mesh", func() error { return meshed(all) })
	if err := n.Remove(); err != nil {
		t.Error(err)
	}
}
