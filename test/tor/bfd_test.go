package tor_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/test/lab"
)

// TestBFD: BFD runs where it is asked for, at the defaults (300ms x 3): between the two
// nodes' speakers (BGPConfiguration spec.meshBFD) and with FRR's bfdd on the ToR (BGPPeer
// spec.bfd), and podroutectl shows it up. A BGPPeer whose spec.bfd podroute refuses keeps
// its session, without BFD, and its Valid condition names the field.
//
//	      [tor AS 65101, bfdd]
//	             │ fabric
//	═══════ 192.0.2.0/24 ═══════
//	     │                 │
//	  node-1  ─── mesh ─── node-2
func TestBFD(t *testing.T) {
	c, tor, torAddr, nodes := bfdLab(t, &config.BFDSpec{}, 0)

	for i, n := range nodes {
		want := map[string]string{torAddr.String(): "up", nodes[1-i].IPv4.String(): "up"}
		lab.Eventually(t, converge, n.Name+": BGP established and BFD up with the ToR and the other node", func() error {
			return bfdStates(n, want)
		})
	}
	lab.Eventually(t, converge, "tor: bfdd's sessions with both nodes up", func() error {
		peers, err := tor.BFDPeers()
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if s := peers[n.IPv4.String()]; s != "up" {
				return fmt.Errorf("bfdd: %s is %q (%v)", n.IPv4, s, peers)
			}
		}
		return nil
	})
	out, _ := nodes[0].Ctl("bgp", "neighbors")
	if !strings.Contains(string(out), "BFD") {
		t.Errorf("podroutectl bgp neighbors has no BFD column:\n%s", out)
	}
	bfd, _ := tor.Vtysh("show bfd peers brief")
	t.Logf("node-1: podroutectl bgp neighbors:\n%s\nFRR:\n%s", out, bfd)

	// Below podroute's floor: BFD goes, the session stays (or comes back) and the peer's
	// status says why.
	c.PatchPeer("tor", map[string]any{"bfd": map[string]any{"minTx": "10ms"}})
	for i, n := range nodes {
		want := map[string]string{torAddr.String(): "", nodes[1-i].IPv4.String(): "up"}
		lab.Eventually(t, converge, n.Name+": ToR session without BFD", func() error { return bfdStates(n, want) })
	}
	lab.Eventually(t, converge, "BGPPeer tor: Valid=False naming spec.bfd.minTx, Accepted=True", func() error {
		conds, err := c.PeerConditions("tor")
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, cd := range conds {
			got[cd.Type] = string(cd.Status) + " " + cd.Message
		}
		if v := got[config.ConditionValid]; !strings.HasPrefix(v, "False ") || !strings.Contains(v, "spec.bfd.minTx") || !strings.Contains(v, "without BFD") {
			return fmt.Errorf("Valid: %q", v)
		}
		if a := got[config.ConditionAccepted]; !strings.HasPrefix(a, "True ") {
			return fmt.Errorf("Accepted: %q", a)
		}
		return nil
	})
}

// bfdLab is a ToR running bfdd and two nodes in a mesh, with BFD at spec on the mesh and
// towards the ToR, and at interval x 3 on the ToR's side (bfdd's defaults when 0).
func bfdLab(t *testing.T, spec *config.BFDSpec, interval time.Duration) (*lab.CRDs, *lab.Router, netip.Addr, []*lab.Node) {
	l := lab.New(t, lab.Options{})
	c := lab.InstallCRDs(t, l)
	fab := l.DefaultSegment()
	tor := l.AddRouter(t, "tor", lab.RouterOptions{ASN: 65101, Segments: []*lab.Segment{fab}, BFD: true})
	torAddr := tor.Addr4(fab)
	c.Configuration(config.BGPConfigurationSpec{NodeToNodeMesh: ptr(true), MeshBFD: spec})
	c.Peer("tor", config.BGPPeerSpec{PeerAddress: torAddr.String(), PeerASN: 65101, BFD: spec})
	var nodes []*lab.Node
	for i := 1; i <= 2; i++ {
		n := l.AddNode(t, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i})
		nb := lab.Neighbor{Address: n.IPv4, ASN: config.DefaultASN, Description: n.Name, BFD: true}
		if interval > 0 {
			nb.BFDInterval, nb.BFDMultiplier = interval, 3
		}
		if err := tor.AddNeighbor(nb); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	return c, tor, torAddr, nodes
}

// bfdStates checks that n's sessions with the peers of want are established, each with the
// BFD state wanted ("" for none).
func bfdStates(n *lab.Node, want map[string]string) error {
	ns, err := n.Neighbors()
	if err != nil {
		return err
	}
	got := map[string]string{}
	for _, p := range ns {
		if _, ok := want[p.Address]; ok && p.State == "established" {
			got[p.Address] = p.BFD
		}
	}
	for a, w := range want {
		if s, ok := got[a]; !ok || s != w {
			return fmt.Errorf("%s: with %s: established %v, BFD %q, want %q (%+v)", n.Name, a, ok, s, w, ns)
		}
	}
	return nil
}

// TestBFDRestart: with BFD at 100 ms x 3 on the mesh and towards an FRR ToR (without "bfd
// check-control-plane-failure", which would make FRR ignore every BFD failure of a node: see
// docs/peering.md), an agent that is killed (SIGKILL) or stopped (SIGTERM)
// and started again 2 s later keeps its node's pod routes on the ToR (in its kernel) and on
// the other node throughout, while a node that dies (switch port, agent and uplink gone at
// once) loses them within BFD's detection time rather than the hold time (9 s) plus the
// graceful-restart time (120 s).
func TestBFDRestart(t *testing.T) {
	_, tor, torAddr, nodes := bfdLab(t, &config.BFDSpec{MinTx: "100ms", MinRx: "100ms"}, 100*time.Millisecond)
	a, b := nodes[0], nodes[1]
	allUp := func(t *testing.T) {
		t.Helper()
		for i, n := range nodes {
			want := map[string]string{torAddr.String(): "up", nodes[1-i].IPv4.String(): "up"}
			lab.Eventually(t, converge, n.Name+": BGP and BFD up with the ToR and the other node", func() error { return bfdStates(n, want) })
		}
		lab.Eventually(t, converge, "tor: routes to both nodes' pod CIDRs", func() error {
			for _, n := range nodes {
				if err := torRoutes(tor, n); err != nil {
					return err
				}
			}
			return nil
		})
	}
	allUp(t)
	// No BGP session is reset for BFD while the sessions come up (FRR re-creates its BFD
	// session once BGP is up, which is not a failure), nor during the restarts below.
	offs := make([]int64, len(nodes))
	if r := bfdResets(tor, nodes, offs); r != "" {
		t.Errorf("BGP sessions reset for BFD while coming up:\n%s", r)
	}
	for i, n := range nodes {
		offs[i] = n.Agent.LogSize()
	}
	torResets := strings.Count(tor.Log(), "Cease/BFD Down")

	for _, tc := range []struct {
		name string
		stop func(*lab.Agent) error
	}{{"SIGKILL", (*lab.Agent).Kill}, {"SIGTERM", (*lab.Agent).Stop}} {
		t.Run(tc.name, func(t *testing.T) {
			allUp(t)
			stopWatch := watchRoutes(tor, a, b)
			off := b.Agent.LogSize()
			if err := tc.stop(a.Agent); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Second)
			if err := a.Agent.Start(); err != nil {
				t.Fatal(err)
			}
			allUp(t)
			polls, missing := stopWatch()
			t.Logf("%s restart of %s's agent: %d polls of the ToR's kernel and %s's routes, %d gaps", tc.name, a.Name, polls, b.Name, len(missing))
			if len(missing) > 0 {
				t.Errorf("routes to %s's pod CIDRs went missing during its agent's restart:\n%s", a.Name, strings.Join(missing, "\n"))
			}
			log := b.Agent.LogSince(off)
			want := "BFD down while the BGP session is not established"
			if tc.name == "SIGTERM" {
				want = "the peer took BFD down on purpose (AdminDown)"
			}
			if !strings.Contains(log, want) {
				t.Errorf("%s did not log %q:\n%s", b.Name, want, log)
			}
		})
	}

	t.Run("NodeDeath", func(t *testing.T) {
		allUp(t)
		if r := bfdResets(tor, nodes, offs); r != "" || strings.Count(tor.Log(), "Cease/BFD Down") != torResets {
			t.Errorf("BGP sessions reset for BFD during the restarts:\n%s", r)
		}
		for i, n := range nodes {
			offs[i] = n.Agent.LogSize()
		}
		torResets = strings.Count(tor.Log(), "Cease/BFD Down")
		t0 := time.Now()
		if err := a.FabricPort(false); err != nil {
			t.Fatal(err)
		}
		if err := a.Agent.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := a.Uplink(false); err != nil {
			t.Fatal(err)
		}
		var torGone, nodeGone time.Duration
		lab.Eventually(t, 15*time.Second, "the dead node's routes gone from the ToR's kernel and the other node", func() error {
			for _, p := range a.PodCIDRs {
				if r, err := tor.KernelRoute(p); err != nil || r != "" {
					return fmt.Errorf("tor: %s: %q %v", p, r, err)
				}
			}
			if torGone == 0 {
				torGone = time.Since(t0)
			}
			for _, p := range a.PodCIDRs {
				if err := b.NoRoute(p); err != nil {
					return err
				}
			}
			nodeGone = time.Since(t0)
			return nil
		})
		t.Logf("node death: routes gone from the ToR's kernel after %v, from %s after %v", torGone.Round(time.Millisecond), b.Name, nodeGone.Round(time.Millisecond))
		// 300 ms of detection; the bound leaves room for a loaded machine, and is far from
		// the 9 s hold time.
		if torGone > 2*time.Second || nodeGone > 2*time.Second {
			t.Errorf("the dead node's routes lingered: ToR %v, %s %v; want BFD's detection time", torGone, b.Name, nodeGone)
		}
	})

	// The node comes back, its agent crashes, and 1.5 s later the node dies: the other node
	// keeps the node's routes while the node's kernel answers (its restart), then drops the
	// paths it learned from the node once the node has been silent for 5 s, not after the
	// 120 s restart time. FRR keeps the node's routes as stale for the restart time (it has
	// no such rule) and goes on announcing them, so the other node's kernel still routes
	// there, through the path from the ToR.
	t.Run("DiesWhileRestarting", func(t *testing.T) {
		if err := a.FabricPort(true); err != nil {
			t.Fatal(err)
		}
		if err := a.Uplink(true); err != nil {
			t.Fatal(err)
		}
		if err := a.Agent.Start(); err != nil {
			t.Fatal(err)
		}
		allUp(t)
		if err := a.Agent.Kill(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond)
		fromA := func() ([]string, error) {
			rs, err := b.BGPRoutes()
			if err != nil {
				return nil, err
			}
			var out []string
			for _, r := range rs.Routes {
				for _, p := range a.PodCIDRs {
					if r.Prefix == p.String() && r.SourcePeer == a.IPv4.String() {
						out = append(out, r.Prefix)
					}
				}
			}
			return out, nil
		}
		if got, err := fromA(); err != nil || len(got) != len(a.PodCIDRs) {
			t.Fatalf("%s during %s's agent restart: best paths from %s %v (%v), want its pod CIDRs kept", b.Name, a.Name, a.IPv4, got, err)
		}
		t0 := time.Now()
		if err := a.FabricPort(false); err != nil {
			t.Fatal(err)
		}
		if err := a.Uplink(false); err != nil {
			t.Fatal(err)
		}
		lab.Eventually(t, 20*time.Second, b.Name+": no path from the dead node", func() error {
			got, err := fromA()
			if err == nil && len(got) > 0 {
				err = fmt.Errorf("best paths from %s: %v", a.IPv4, got)
			}
			return err
		})
		gone := time.Since(t0)
		r, _ := tor.KernelRoute(a.PodCIDRs[0])
		t.Logf("node died 1.5 s into its agent's restart: %s dropped its paths after %v; the ToR still routes %q", b.Name, gone.Round(time.Millisecond), r)
		if gone > 10*time.Second {
			t.Errorf("paths dropped %v after the node died, want about 5 s of silence", gone.Round(time.Millisecond))
		}
	})
}

// bfdResets lists the BGP session resets for BFD the nodes logged since offs, and the
// ToR's when offs are all zero (its log holds the whole run).
func bfdResets(tor *lab.Router, nodes []*lab.Node, offs []int64) string {
	var out []string
	for i, n := range nodes {
		for _, l := range strings.Split(n.Agent.LogSince(offs[i]), "\n") {
			if strings.Contains(l, "BFD down: BGP session reset") {
				out = append(out, n.Name+": "+l)
			}
		}
	}
	if slices.Equal(offs, make([]int64, len(offs))) {
		for _, l := range strings.Split(tor.Log(), "\n") {
			if strings.Contains(l, "Cease/BFD Down") {
				out = append(out, "tor: "+l)
			}
		}
	}
	return strings.Join(out, "\n")
}

// torRoutes checks the ToR's kernel routes n's pod CIDRs through n.
func torRoutes(tor *lab.Router, n *lab.Node) error {
	for _, p := range n.PodCIDRs {
		r, err := tor.KernelRoute(p)
		if err != nil {
			return err
		}
		via := n.IPv4
		if p.Addr().Is6() {
			via = n.IPv6
		}
		if !strings.Contains(r, via.String()) {
			return fmt.Errorf("tor: route to %s is %q, not via %s", p, r, via)
		}
	}
	return nil
}

// watchRoutes polls, every 20 ms until stopped, the ToR's kernel routes to a's pod CIDRs
// and b's; stop returns the number of polls and what was missing when.
func watchRoutes(tor *lab.Router, a, b *lab.Node) func() (int, []string) {
	done := make(chan struct{})
	var (
		polls   int
		missing []string
		wg      sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			at := time.Now().Format("15:04:05.000")
			if err := torRoutes(tor, a); err != nil {
				missing = append(missing, at+" "+err.Error())
			}
			for _, p := range a.PodCIDRs {
				via := a.IPv4
				if p.Addr().Is6() {
					via = a.IPv6
				}
				if err := b.RouteVia(p, via); err != nil {
					missing = append(missing, at+" "+err.Error())
				}
			}
			polls++
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() (int, []string) {
		close(done)
		wg.Wait()
		return polls, missing
	}
}
