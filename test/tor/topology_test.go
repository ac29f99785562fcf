package tor_test

// Topologies configured through podroute's BGPPeer and BGPConfiguration objects, with FRR
// as the top-of-rack routers.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/test/lab"
)

const (
	rackLabel       = "topology.podroute.io/rack"
	reflectorLabel  = "podroute.io/route-reflector"
	secretNamespace = lab.SecretNamespace
)

func ptr[T any](v T) *T { return &v }

func selector(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

// addr picks the address of p's family.
func addr(p netip.Prefix, v4, v6 netip.Addr) netip.Addr {
	if p.Addr().Is6() {
		return v6
	}
	return v4
}

// reach pings and connects over TCP between every ordered pair of pods, both families.
func reach(t *testing.T, pods []*lab.Pod) {
	t.Helper()
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			for _, v6 := range []bool{false, true} {
				if err := a.Ping(b.Addr(v6), 5*time.Second); err != nil {
					t.Errorf("ping %s/%s -> %s/%s %s: %v", a.Node.Name, a.Name, b.Node.Name, b.Name, b.Addr(v6), err)
				}
				if err := a.TCP(b, b.Addr(v6), 5*time.Second); err != nil {
					t.Errorf("TCP %s/%s -> %s/%s %s: %v", a.Node.Name, a.Name, b.Node.Name, b.Name, b.Addr(v6), err)
				}
			}
		}
	}
}

// torHas waits until router r has a selected, installed BGP route (and a kernel route,
// proto bgp) for every pod CIDR of nodes.
func torHas(t *testing.T, r *lab.Router, nodes ...*lab.Node) {
	t.Helper()
	for _, n := range nodes {
		for _, p := range n.PodCIDRs {
			lab.Eventually(t, converge, r.Name+": "+n.Name+"'s "+p.String(), func() error {
				if _, err := r.BGPRoute(p); err != nil {
					return err
				}
				k, err := r.KernelRoute(p)
				if err != nil {
					return err
				}
				if !strings.Contains(k, "proto bgp") {
					return fmt.Errorf("%s: kernel route %q, want proto bgp", r.Name, k)
				}
				return nil
			})
		}
	}
}

func neighborsOf(t *testing.T, n *lab.Node) map[string]string {
	t.Helper()
	ns, err := n.Neighbors()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range ns {
		out[p.Address] = p.Kind + "/" + p.State
	}
	return out
}

// 1. Per-rack eBGP (RFC 7938): each rack its own AS, nodes peer only with their ToR, no mesh.
//
//	                link (eBGP)
//	    [tor-1 AS 65101] ─────── [tor-2 AS 65102]
//	          │ seg1                    │ seg2
//	  ═══ 198.18.1.0/24 ═══     ═══ 198.18.2.0/24 ═══
//	     │            │            │            │
//	  r1-n1        r1-n2        r2-n1        r2-n2      rack 1: AS 65001, rack 2: AS 65002
//	10.244.1/24  10.244.2/24  10.244.3/24  10.244.4/24  (podroute.io/asn per node)
//
// The ToRs override the rack AS in what they send to their nodes (as-override), so nodes
// of one rack accept each other's routes through the ToR.
func TestPerRackEBGP(t *testing.T) {
	l := lab.New(t, lab.Options{})
	c := lab.InstallCRDs(t, l)
	seg1, seg2 := l.AddSegment(t, "rack-1"), l.AddSegment(t, "rack-2")
	tor1 := l.AddRouter(t, "tor-1", lab.RouterOptions{ASN: 65101, Segments: []*lab.Segment{seg1}})
	tor2 := l.AddRouter(t, "tor-2", lab.RouterOptions{ASN: 65102, Segments: []*lab.Segment{seg2}})
	link := l.PeerRouters(t, tor1, tor2, "")
	c.Configuration(config.BGPConfigurationSpec{NodeToNodeMesh: ptr(false)})
	racks := []struct {
		name string
		seg  *lab.Segment
		tor  *lab.Router
		asn  uint32
	}{{"r1", seg1, tor1, 65001}, {"r2", seg2, tor2, 65002}}
	for _, r := range racks {
		c.Peer("tor-"+r.name, config.BGPPeerSpec{
			PeerAddress: r.tor.Addr4(r.seg).String(), PeerASN: int64(r.tor.ASN),
			NodeSelector: selector(rackLabel, r.name),
		})
	}
	var nodes []*lab.Node
	var pods []*lab.Pod
	rackOf := map[*lab.Node]int{}
	for ri, r := range racks {
		for j := 1; j <= 2; j++ {
			idx := 2*ri + j
			n := l.AddNode(t, fmt.Sprintf("%s-n%d", r.name, j), lab.NodeOptions{
				Index: idx, Segment: r.seg,
				Labels:      map[string]string{rackLabel: r.name},
				Annotations: map[string]string{config.AnnotationASN: strconv.Itoa(int(r.asn))},
			})
			if err := r.tor.AddNeighbor(lab.Neighbor{Address: n.IPv4, ASN: r.asn, Description: n.Name, ASOverride: true}); err != nil {
				t.Fatal(err)
			}
			nodes = append(nodes, n)
			rackOf[n] = ri
		}
	}
	for _, n := range nodes {
		r := racks[rackOf[n]]
		lab.Eventually(t, converge, n.Name+": session with its ToR", func() error { return n.Established(r.tor.Addr4(r.seg)) })
		lab.Eventually(t, converge, n.Name+": ToR's view", func() error { return r.tor.Established(n.IPv4) })
	}
	for _, n := range nodes {
		// Mesh off: the ToR is the only neighbour.
		got := neighborsOf(t, n)
		r := racks[rackOf[n]]
		if len(got) != 1 || got[r.tor.Addr4(r.seg).String()] != "external/established" {
			t.Errorf("%s: neighbors %v, want only its ToR %s (external, established)", n.Name, got, r.tor.Addr4(r.seg))
		}
	}
	// Every pod CIDR is in both ToRs' RIBs and kernels.
	torHas(t, tor1, nodes...)
	torHas(t, tor2, nodes...)
	// Routes to the other rack's pod CIDRs come from the node's ToR, next hop the ToR.
	for _, n := range nodes {
		r := racks[rackOf[n]]
		for _, o := range nodes {
			if rackOf[o] == rackOf[n] {
				continue
			}
			for _, p := range o.PodCIDRs {
				via := addr(p, r.tor.Addr4(r.seg), r.tor.Addr6(r.seg))
				lab.Eventually(t, converge, n.Name+": route to "+p.String(), func() error { return n.RouteVia(p, via) })
			}
		}
	}
	for _, n := range nodes {
		pods = append(pods, n.AddPod(t, "pod"))
	}
	reach(t, pods)
	k, _ := tor1.KernelRoutes()
	t.Logf("tor-1 kernel routes:\n%s", k)
	_ = link
}

// 2. Two ToRs on one rack: every node has an ECMP route through both; pod traffic survives
// one ToR dying.
//
//	[tor-a AS 65101 .1]   [tor-b AS 65101 .2]
//	         │ seg1              │
//	═════════════ 198.18.1.0/24 ═════════════
//	       │                        │
//	    node-1 (AS 65001)       node-2 (AS 65001)
//
// Both ToRs set themselves as next hop (next-hop-self) and override the rack AS.
func TestTwoToRsECMP(t *testing.T) {
	l := lab.New(t, lab.Options{})
	c := lab.InstallCRDs(t, l)
	seg := l.AddSegment(t, "rack-1")
	tors := []*lab.Router{
		l.AddRouter(t, "tor-a", lab.RouterOptions{ASN: 65101, Host: 1, Segments: []*lab.Segment{seg}}),
		l.AddRouter(t, "tor-b", lab.RouterOptions{ASN: 65101, Host: 2, Segments: []*lab.Segment{seg}}),
	}
	c.Configuration(config.BGPConfigurationSpec{NodeToNodeMesh: ptr(false)})
	for _, r := range tors {
		c.Peer(r.Name, config.BGPPeerSpec{PeerAddress: r.Addr4(seg).String(), PeerASN: int64(r.ASN)})
	}
	var nodes []*lab.Node
	for i := 1; i <= 2; i++ {
		n := l.AddNode(t, fmt.Sprintf("node-%d", i), lab.NodeOptions{
			Index: i, Segment: seg, Annotations: map[string]string{config.AnnotationASN: "65001"},
		})
		for _, r := range tors {
			if err := r.AddNeighbor(lab.Neighbor{Address: n.IPv4, ASN: 65001, Description: n.Name, ASOverride: true, NextHopSelf: true}); err != nil {
				t.Fatal(err)
			}
		}
		nodes = append(nodes, n)
	}
	n1, n2 := nodes[0], nodes[1]
	ecmp := func(want ...*lab.Router) func() error {
		return func() error {
			for _, p := range n2.PodCIDRs {
				r, err := n1.Route(p)
				if err != nil {
					return err
				}
				for _, tor := range want {
					if !strings.Contains(r, "via "+addr(p, tor.Addr4(seg), tor.Addr6(seg)).String()+" ") {
						return fmt.Errorf("%s: route to %s is %q, want next hops %v", n1.Name, p, r, want)
					}
				}
				if got := strings.Count(r, "via "); got != len(want) {
					return fmt.Errorf("%s: route to %s is %q, want %d next hops", n1.Name, p, r, len(want))
				}
			}
			return nil
		}
	}
	lab.Eventually(t, converge, "ECMP through both ToRs", ecmp(tors...))
	pod1, pod2 := n1.AddPod(t, "pod"), n2.AddPod(t, "pod")
	reach(t, []*lab.Pod{pod1, pod2})

	var flows []*lab.Flow
	for _, v6 := range []bool{false, true} {
		f, err := lab.StartFlow(pod1, pod2, v6, 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		flows = append(flows, f)
	}
	time.Sleep(2 * time.Second)
	// tor-a dies: FRR killed and its rack port down (the box is gone, not just bgpd).
	if err := tors[0].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := tors[0].SegmentPort(seg, false); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	lab.Eventually(t, converge, "route through tor-b only", ecmp(tors[1]))
	t.Logf("tor-a dead: route through tor-b only after %v", time.Since(t0).Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	for i, f := range flows {
		st := f.Stop()
		t.Logf("flow %d across the ToR failure: %v", i, st)
		// At most a hold time (3s) of loss for the flows hashed onto tor-a, and traffic
		// flows again afterwards.
		if st.Received == 0 || st.MaxGap > 5*time.Second {
			t.Errorf("flow %d did not survive the ToR failure: %v", i, st)
		}
	}
	reach(t, []*lab.Pod{pod1, pod2})
}

// 3. MD5: the right password establishes, a wrong one does not and the agent says why.
//
//	 [tor AS 65101, password on every neighbour]
//	─────┬─────────── fabric ───────────┬─────
//	  node-1                         node-2
func TestMD5(t *testing.T) {
	l := lab.New(t, lab.Options{})
	c := lab.InstallCRDs(t, l)
	fab := l.DefaultSegment()
	const password = "s3cret-rack"
	tor := l.AddRouter(t, "tor", lab.RouterOptions{ASN: 65101, Segments: []*lab.Segment{fab}})
	ref := c.Secret("tor-md5", password)
	c.Peer("tor", config.BGPPeerSpec{PeerAddress: tor.Addr4(fab).String(), PeerASN: 65101, PasswordSecretRef: ref})
	n := l.AddNode(t, "node-1", lab.NodeOptions{Index: 1})
	if err := tor.AddNeighbor(lab.Neighbor{Address: n.IPv4, Description: n.Name, Password: password}); err != nil {
		t.Fatal(err)
	}
	torAddr := tor.Addr4(fab)
	lab.Eventually(t, converge, "session with the right password", func() error { return n.Established(torAddr) })
	lab.Eventually(t, converge, "FRR: session", func() error { return tor.Established(n.IPv4) })
	torHas(t, tor, n)

	t.Run("WrongPassword", func(t *testing.T) {
		c.Secret("tor-md5", "not-the-password")
		defer func() {
			c.Secret("tor-md5", password)
			lab.Eventually(t, converge, "session back with the right password", func() error { return n.Established(torAddr) })
		}()
		lab.Eventually(t, converge, "session down with the wrong password", func() error { return tor.NotEstablished(n.IPv4) })
		time.Sleep(5 * time.Second) // beyond the hold time: it stays down
		if err := tor.NotEstablished(n.IPv4); err != nil {
			t.Fatal(err)
		}
		lab.Eventually(t, converge, "the agent says why", func() error {
			ns, err := n.Neighbors()
			if err != nil {
				return err
			}
			for _, p := range ns {
				if p.Address == torAddr.String() {
					if p.State == "established" || p.LastError == "" {
						return fmt.Errorf("neighbor %+v: want not established with a last error", p)
					}
					t.Logf("%s: neighbor %s %s: %s", n.Name, p.Address, p.State, p.LastError)
					return nil
				}
			}
			return fmt.Errorf("no neighbor %s in %+v", torAddr, ns)
		})
	})

	t.Run("MissingSecret", func(t *testing.T) {
		c.Peer("tor-missing", config.BGPPeerSpec{
			PeerAddress: "192.0.2.9", PeerASN: 65109,
			PasswordSecretRef: &config.SecretKeyRef{Namespace: secretNamespace, Name: "absent", Key: "password"},
		})
		lab.Eventually(t, converge, "BGPPeer status names the Secret", func() error {
			conds, err := c.PeerConditions("tor-missing")
			if err != nil {
				return err
			}
			for _, cd := range conds {
				if cd.Type == config.ConditionValid && cd.Status == metav1.ConditionFalse && strings.Contains(cd.Message, "passwordSecretRef") {
					return nil
				}
			}
			return fmt.Errorf("conditions %+v", conds)
		})
		// The other peer stays up.
		if err := n.Established(torAddr); err != nil {
			t.Error(err)
		}
	})
}

// 4. A BGPPeer changed live takes effect without restarting any agent: hold time, then a
// second peer.
//
//	 [tor-1 AS 65101 .1]  [tor-2 AS 65102 .2]     (tor-2 added as a BGPPeer later)
//	─────┬────────── fabric ──────────
//	  node-1
func TestLivePeerChange(t *testing.T) {
	l := lab.New(t, lab.Options{})
	c := lab.InstallCRDs(t, l)
	fab := l.DefaultSegment()
	tor1 := l.AddRouter(t, "tor-1", lab.RouterOptions{ASN: 65101, Host: 1, Segments: []*lab.Segment{fab}})
	tor2 := l.AddRouter(t, "tor-2", lab.RouterOptions{ASN: 65102, Host: 2, Segments: []*lab.Segment{fab}})
	c.Peer("tor-1", config.BGPPeerSpec{PeerAddress: tor1.Addr4(fab).String(), PeerASN: 65101, HoldTime: "9s", KeepaliveTime: "3s"})
	n := l.AddNode(t, "node-1", lab.NodeOptions{Index: 1})
	for _, r := range []*lab.Router{tor1, tor2} {
		// FRR proposes 30s: the session's hold time is the agent's.
		if err := r.AddNeighbor(lab.Neighbor{Address: n.IPv4, Description: n.Name, HoldTime: 30}); err != nil {
			t.Fatal(err)
		}
	}
	pid := n.Agent.PID()
	holdTime := func(want float64) func() error {
		return func() error {
			nb, err := tor1.NeighborJSON(n.IPv4)
			if err != nil {
				return err
			}
			if nb["bgpState"] != "Established" {
				return fmt.Errorf("tor-1: session %v", nb["bgpState"])
			}
			if got, _ := nb["bgpTimerHoldTimeMsecs"].(float64); got != want {
				return fmt.Errorf("tor-1: negotiated hold time %v ms, want %v", got, want)
			}
			return nil
		}
	}
	lab.Eventually(t, converge, "hold time 9s", holdTime(9000))
	t.Run("HoldTime", func(t *testing.T) {
		c.PatchPeer("tor-1", map[string]any{"holdTime": "6s", "keepaliveTime": "2s"})
		lab.Eventually(t, converge, "hold time 6s", holdTime(6000))
	})
	t.Run("SecondPeer", func(t *testing.T) {
		c.Peer("tor-2", config.BGPPeerSpec{PeerAddress: tor2.Addr4(fab).String(), PeerASN: 65102})
		lab.Eventually(t, converge, "second peer", func() error { return n.Established(tor1.Addr4(fab), tor2.Addr4(fab)) })
		torHas(t, tor2, n)
	})
	if got := n.Agent.PID(); got != pid {
		t.Errorf("the agent restarted: pid %d, then %d", pid, got)
	}
	if log := n.Agent.Log(); strings.Count(log, "=== lab: start #") != 1 {
		t.Errorf("the agent was started more than once")
	}
}

// 5. Route reflectors: nodes labelled as reflectors reflect, the others peer only with them.
//
//	        node-1 (reflector)
//	      /   |   \
//	node-2 node-3 node-4          all on the fabric segment, iBGP AS 64512, no mesh
func TestRouteReflectors(t *testing.T) {
	l := lab.New(t, lab.Options{})
	c := lab.InstallCRDs(t, l)
	c.Configuration(config.BGPConfigurationSpec{
		NodeToNodeMesh:             ptr(false),
		RouteReflectorNodeSelector: selector(reflectorLabel, "true"),
	})
	var nodes []*lab.Node
	for i := 1; i <= 4; i++ {
		var labels map[string]string
		if i == 1 {
			labels = map[string]string{reflectorLabel: "true"}
		}
		nodes = append(nodes, l.AddNode(t, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i, Labels: labels}))
	}
	rr := nodes[0]
	for _, n := range nodes[1:] {
		lab.Eventually(t, converge, n.Name+": session with the reflector", func() error { return n.Established(rr.IPv4) })
	}
	sessions := 0
	for _, n := range nodes {
		got := neighborsOf(t, n)
		sessions += len(got)
		want := 1
		if n == rr {
			want = len(nodes) - 1
		}
		if len(got) != want {
			t.Errorf("%s: neighbors %v, want %d", n.Name, got, want)
		}
	}
	// Each client-reflector session counted at both ends: 2(n-1), linear in n.
	if sessions != 2*(len(nodes)-1) {
		t.Errorf("%d session ends, want %d", sessions, 2*(len(nodes)-1))
	}
	// Reflected routes keep their next hop: the originating node.
	for _, n := range nodes {
		for _, o := range nodes {
			if o == n {
				continue
			}
			for _, p := range o.PodCIDRs {
				lab.Eventually(t, converge, n.Name+": route to "+p.String(), func() error { return n.RouteVia(p, addr(p, o.IPv4, o.IPv6)) })
			}
		}
	}
	var pods []*lab.Pod
	for _, n := range nodes {
		pods = append(pods, n.AddPod(t, "pod"))
	}
	reach(t, pods)
}

// 6. Mesh plus ToR: the iBGP mesh stays, and every node also peers with the ToR, exporting
// its pod CIDRs. podroutectl's view of the ToR sessions matches FRR's.
//
//	        [tor AS 65101]
//	─────┬──────┬──────┬───── fabric
//	  node-1 node-2 node-3      (mesh between them, AS 64512)
func TestMeshPlusToR(t *testing.T) {
	l := lab.New(t, lab.Options{})
	c := lab.InstallCRDs(t, l)
	fab := l.DefaultSegment()
	tor := l.AddRouter(t, "tor", lab.RouterOptions{ASN: 65101, Segments: []*lab.Segment{fab}})
	c.Configuration(config.BGPConfigurationSpec{NodeToNodeMesh: ptr(true)})
	c.Peer("tor", config.BGPPeerSpec{PeerAddress: tor.Addr4(fab).String(), PeerASN: 65101, ExportPodCIDRs: ptr(true)})
	var nodes []*lab.Node
	for i := 1; i <= 3; i++ {
		n := l.AddNode(t, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i})
		if err := tor.AddNeighbor(lab.Neighbor{Address: n.IPv4, ASN: config.DefaultASN, Description: n.Name}); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	torAddr := tor.Addr4(fab)
	for _, n := range nodes {
		var peers []netip.Addr
		for _, o := range nodes {
			if o != n {
				peers = append(peers, o.IPv4)
			}
		}
		peers = append(peers, torAddr)
		lab.Eventually(t, converge, n.Name+": mesh and ToR sessions", func() error { return n.Established(peers...) })
	}
	torHas(t, tor, nodes...)
	for _, n := range nodes {
		for _, p := range n.PodCIDRs {
			// FRR's best path for a node's pod CIDR is the node's own announcement.
			nhs, err := tor.BGPRoute(p)
			if err != nil {
				t.Fatal(err)
			}
			if want := addr(p, n.IPv4, n.IPv6); !slices.Contains(nhs, want) {
				t.Errorf("tor: %s next hops %v, want %s", p, nhs, want)
			}
		}
		lab.Eventually(t, converge, n.Name+": podroutectl and FRR agree", func() error { return agree(n, tor, torAddr, false) })
		// Both sides update their prefix counters asynchronously: they must come to agree.
		if err := lab.Poll(context.Background(), 10*time.Second, 200*time.Millisecond, func() error { return agree(n, tor, torAddr, true) }); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
		ns, err := n.Neighbors()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ns {
			want := "mesh"
			if p.Address == torAddr.String() {
				want = "external"
			}
			if p.Kind != want || p.State != "established" {
				t.Errorf("%s: neighbor %s: kind %s state %s, want %s established", n.Name, p.Address, p.Kind, p.State, want)
			}
		}
	}
	// The mesh still carries the routes between nodes, next hop the node itself.
	for _, n := range nodes {
		for _, o := range nodes {
			if o == n {
				continue
			}
			for _, p := range o.PodCIDRs {
				lab.Eventually(t, converge, n.Name+": route to "+p.String(), func() error { return n.RouteVia(p, addr(p, o.IPv4, o.IPv6)) })
			}
		}
	}
	out, _ := nodes[0].Ctl("bgp", "neighbors")
	sum, _ := tor.Vtysh("show bgp summary")
	t.Logf("node-1: podroutectl bgp neighbors:\n%s\nFRR:\n%s", out, sum)
}

// TestLiveTopologyChange turns the mesh off and makes a node a route reflector on a running
// cluster: every agent follows without a restart, and pods keep reaching each other.
func TestLiveTopologyChange(t *testing.T) {
	l := lab.New(t, lab.Options{})
	c := lab.InstallCRDs(t, l)
	c.Configuration(config.BGPConfigurationSpec{NodeToNodeMesh: ptr(true)})
	var nodes []*lab.Node
	for i := 1; i <= 4; i++ {
		nodes = append(nodes, l.AddNode(t, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i}))
	}
	for _, n := range nodes {
		var peers []netip.Addr
		for _, o := range nodes {
			if o != n {
				peers = append(peers, o.IPv4)
			}
		}
		lab.Eventually(t, converge, n.Name+": full mesh", func() error { return n.Established(peers...) })
	}
	var pods []*lab.Pod
	for _, n := range nodes {
		pods = append(pods, n.AddPod(t, "pod"))
	}
	reach(t, pods)
	pids := map[string]int{}
	for _, n := range nodes {
		pids[n.Name] = n.Agent.PID()
	}

	// node-1 becomes the reflector, then the mesh goes off: the order an operator would use.
	rr := nodes[0]
	if err := rr.SetLabels(map[string]string{reflectorLabel: "true"}); err != nil {
		t.Fatal(err)
	}
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{
		"nodeToNodeMesh":             false,
		"routeReflectorNodeSelector": selector(reflectorLabel, "true"),
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Dyn.Resource(config.BGPConfigurationGVR).Patch(ctx, config.ConfigurationName, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch BGPConfiguration: %v", err)
	}
	// Clients keep only the reflector; the reflector keeps every client.
	for _, n := range nodes[1:] {
		lab.Eventually(t, converge, n.Name+": only the reflector left", func() error {
			got := neighborsOf(t, n)
			if len(got) != 1 || got[rr.IPv4.String()] != "reflector/established" {
				return fmt.Errorf("neighbors %v", got)
			}
			return nil
		})
	}
	lab.Eventually(t, converge, "reflector: every client established", func() error {
		got := neighborsOf(t, rr)
		if len(got) != len(nodes)-1 {
			return fmt.Errorf("neighbors %v", got)
		}
		for a, st := range got {
			if st != "rr-client/established" {
				return fmt.Errorf("%s %s", a, st)
			}
		}
		return nil
	})
	for _, n := range nodes {
		for _, o := range nodes {
			if o == n {
				continue
			}
			for _, p := range o.PodCIDRs {
				lab.Eventually(t, converge, n.Name+": route to "+p.String(), func() error { return n.RouteVia(p, addr(p, o.IPv4, o.IPv6)) })
			}
		}
	}
	reach(t, pods)
	for _, n := range nodes {
		if pid := n.Agent.PID(); pid != pids[n.Name] {
			t.Errorf("%s: agent restarted (pid %d -> %d); changes must apply live", n.Name, pids[n.Name], pid)
		}
	}
}
