// Package tor_test runs podroute against real top-of-rack routers: FRR (zebra and bgpd) in
// network namespaces of their own, on the lab's rack segments and on links between each
// other (see test/lab/frr.go for the topology helpers).
//
// TestFRRHarness and TestFRRMeshMember need nothing of podroute's peering configuration;
// the topology tests in topology_test.go configure external peers, route reflectors and
// the mesh through BGPPeer and BGPConfiguration objects.
package tor_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/podroute/podroute/agentapi"
	"github.com/podroute/podroute/test/lab"
)

// converge bounds how long a routing change may take to reach every kernel.
const converge = 30 * time.Second

var pfx = netip.MustParsePrefix

// TestFRRHarness checks the routers themselves, with a plain GoBGP speaker (the lab's rogue
// speaker) as the only other BGP implementation:
//
//	           [spine AS 65100]
//	  link1 (MD5) /          \ link2
//	[tor-a AS 65101]        [tor-b AS 65102]
//	          \   fabric segment   /
//	       [speaker AS 65201, GoBGP]  10.244.99.0/24, fd00:10:244:99::/64
//
// Each ToR has one IPv4 eBGP session with the speaker carrying both families; the spine
// has both paths and installs them as ECMP (as-path multipath-relax); MD5 passwords gate
// the spine's session with tor-a; a killed ToR drops out of the ECMP route and comes back
// when restarted.
func TestFRRHarness(t *testing.T) {
	l := lab.New(t, lab.Options{})
	fab := l.DefaultSegment()
	torA := l.AddRouter(t, "tor-a", lab.RouterOptions{ASN: 65101, Host: 1, Segments: []*lab.Segment{fab}})
	torB := l.AddRouter(t, "tor-b", lab.RouterOptions{ASN: 65102, Host: 2, Segments: []*lab.Segment{fab}})
	spine := l.AddRouter(t, "spine", lab.RouterOptions{ASN: 65100, MultipathRelax: true})
	const password = "rack-secret"
	linkA := l.PeerRouters(t, spine, torA, password)
	linkB := l.PeerRouters(t, spine, torB, "")

	announce := []netip.Prefix{pfx("10.244.99.0/24"), pfx("fd00:10:244:99::/64")}
	sp := l.StartRogue(t, lab.RogueOptions{
		Name: "speaker", Index: 99, ASN: 65201,
		ExtraPeers: []lab.RoguePeer{{Address: torA.Addr4(fab), ASN: torA.ASN}, {Address: torB.Addr4(fab), ASN: torB.ASN}},
		Announce:   announce,
	})
	// The speaker's peers are ASes of their own: configure each session's AS on both sides.
	for _, tor := range []*lab.Router{torA, torB} {
		if err := tor.AddNeighbor(lab.Neighbor{Address: sp.IPv4, ASN: 65201, Description: "speaker"}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("FRR configuration of tor-a:\n%s", torA.Config())

	t.Run("Sessions", func(t *testing.T) {
		for _, tor := range []*lab.Router{torA, torB} {
			lab.Eventually(t, converge, tor.Name+": session with the speaker", func() error { return tor.Established(sp.IPv4) })
		}
		lab.Eventually(t, converge, "spine sessions", func() error { return spine.Established(linkA.BIPv4, linkB.BIPv4) })
		s, err := torA.BGPSummaryJSON()
		if err != nil {
			t.Fatal(err)
		}
		for _, af := range []string{lab.IPv4Unicast, lab.IPv6Unicast} {
			ps := s[af].Peers[sp.IPv4.String()]
			if ps.PfxRcd != 1 || ps.RemoteAS != 65201 {
				t.Errorf("tor-a %s: peer %s over IPv4: %+v, want 1 prefix from AS 65201", af, sp.IPv4, ps)
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("RIBAndKernel", func(t *testing.T) {
		for _, p := range announce {
			want := []netip.Addr{sp.IPv4}
			if p.Addr().Is6() {
				want = []netip.Addr{sp.IPv6}
			}
			lab.Eventually(t, converge, "tor-a: "+p.String(), func() error {
				nhs, err := torA.BGPRoute(p)
				if err != nil {
					return err
				}
				if !slices.Equal(nhs, want) {
					return fmt.Errorf("next hops %v, want %v", nhs, want)
				}
				k, err := torA.KernelRoute(p)
				if err != nil {
					return err
				}
				if !containsAll(k, "proto bgp", "via "+want[0].String()) {
					return fmt.Errorf("kernel route %q, want proto bgp via %s", k, want[0])
				}
				return nil
			})
		}
	})

	ecmp := func(n int) func() error {
		return func() error {
			for _, p := range announce {
				nhs, err := spine.BGPRoute(p)
				if err != nil {
					return err
				}
				if len(nhs) != n {
					return fmt.Errorf("spine: %s next hops %v, want %d", p, nhs, n)
				}
				k, err := spine.KernelRoute(p)
				if err != nil {
					return err
				}
				if got := countSubstr(k, "nexthop via"); (n > 1 && got != n) || (n == 1 && got != 0) {
					return fmt.Errorf("spine: kernel route %q, want %d next hops", k, n)
				}
			}
			return nil
		}
	}
	t.Run("ECMP", func(t *testing.T) {
		lab.Eventually(t, converge, "two next hops on the spine", ecmp(2))
		k, _ := spine.KernelRoutes()
		t.Logf("spine kernel routes:\n%s", k)
	})

	t.Run("MD5", func(t *testing.T) {
		if err := spine.SetNeighborPassword(linkA.BIPv4, "wrong"); err != nil {
			t.Fatal(err)
		}
		lab.Eventually(t, converge, "session down with mismatched passwords", func() error { return spine.NotEstablished(linkA.BIPv4) })
		time.Sleep(4 * time.Second) // longer than the hold time: it stays down
		if err := spine.NotEstablished(linkA.BIPv4); err != nil {
			t.Fatal(err)
		}
		lab.Eventually(t, converge, "ECMP down to one path", ecmp(1))
		if err := spine.SetNeighborPassword(linkA.BIPv4, password); err != nil {
			t.Fatal(err)
		}
		lab.Eventually(t, converge, "session back with the right password", func() error { return spine.Established(linkA.BIPv4) })
		lab.Eventually(t, converge, "ECMP back", ecmp(2))
	})

	t.Run("KillAndRestart", func(t *testing.T) {
		if err := torB.Kill(); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		lab.Eventually(t, converge, "spine notices the dead ToR", func() error { return spine.NotEstablished(linkB.BIPv4) })
		lab.Eventually(t, converge, "one path left", ecmp(1))
		t.Logf("tor-b killed: its paths gone from the spine in %v", time.Since(t0).Round(time.Millisecond))
		if err := torB.Start(); err != nil {
			t.Fatal(err)
		}
		lab.Eventually(t, converge, "tor-b sessions back", func() error { return torB.Established(sp.IPv4, linkB.AIPv4) })
		lab.Eventually(t, converge, "ECMP back", ecmp(2))
		// A restart keeps live configuration changes: tor-b's neighbour added after its
		// first start is still there.
		if _, err := torB.NeighborJSON(sp.IPv4); err != nil {
			t.Error(err)
		}
	})
}

// TestFRRMeshMember puts an FRR router on the fabric as a member of the node mesh: a Node
// object with its address, so every agent peers with it (iBGP, the cluster AS, one IPv4
// session carrying both families). FRR learns every node's pod CIDRs, installs them, and
// what podroutectl says about each session matches what FRR says about the same one.
//
//	 fabric segment 192.0.2.0/24
//	─────┬────────────┬────────────┬─────
//	  node-1       node-2      tor (FRR, AS 64512, Node object "tor")
func TestFRRMeshMember(t *testing.T) {
	l := lab.New(t, lab.Options{})
	fab := l.DefaultSegment()
	nodes := []*lab.Node{
		l.AddNode(t, "node-1", lab.NodeOptions{Index: 1}),
		l.AddNode(t, "node-2", lab.NodeOptions{Index: 2}),
	}
	var nbs []lab.Neighbor
	for _, n := range nodes {
		nbs = append(nbs, lab.Neighbor{Address: n.IPv4, ASN: 64512, Description: n.Name})
	}
	tor := l.AddRouter(t, "tor", lab.RouterOptions{ASN: 64512, Host: 1, Segments: []*lab.Segment{fab}, Neighbors: nbs})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	torAddr4, torAddr6 := tor.Addr4(fab), tor.Addr6(fab)
	if _, err := l.Kube.CreateNode(ctx, "tor", []string{"10.244.98.0/24", "fd00:10:244:98::/64"}, []string{torAddr4.String(), torAddr6.String()}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = l.Kube.DeleteNode(ctx, "tor")
	})

	for _, n := range nodes {
		lab.Eventually(t, converge, n.Name+": session with FRR", func() error { return n.Established(torAddr4) })
	}
	var addrs []netip.Addr
	for _, n := range nodes {
		addrs = append(addrs, n.IPv4)
	}
	lab.Eventually(t, converge, "FRR: sessions with the nodes", func() error { return tor.Established(addrs...) })
	for _, n := range nodes {
		for _, p := range n.PodCIDRs {
			want := n.IPv4
			if p.Addr().Is6() {
				want = n.IPv6
			}
			lab.Eventually(t, converge, "FRR: "+p.String(), func() error {
				nhs, err := tor.BGPRoute(p)
				if err != nil {
					return err
				}
				if !slices.Equal(nhs, []netip.Addr{want}) {
					return fmt.Errorf("next hops %v, want %s", nhs, want)
				}
				k, err := tor.KernelRoute(p)
				if err != nil {
					return err
				}
				if !containsAll(k, "proto bgp", "via "+want.String()) {
					return fmt.Errorf("kernel route %q", k)
				}
				return nil
			})
		}
	}
	for _, n := range nodes {
		lab.Eventually(t, converge, n.Name+": podroutectl and FRR agree on the session", func() error { return agree(n, tor, torAddr4, false) })
	}
	// podroutectl's advertised count against the prefixes FRR received on the same session.
	t.Run("AdvertisedCount", func(t *testing.T) {
		for _, n := range nodes {
			if err := lab.Poll(context.Background(), 10*time.Second, 200*time.Millisecond, func() error { return agree(n, tor, torAddr4, true) }); err != nil {
				out, _ := n.Ctl("bgp", "neighbors")
				t.Errorf("%s: %v\npodroutectl bgp neighbors:\n%s", n.Name, err, out)
			}
		}
	})
	k, _ := tor.KernelRoutes()
	t.Logf("FRR kernel routes:\n%s", k)
	out, _ := nodes[0].Ctl("bgp", "neighbors")
	t.Logf("node-1: podroutectl bgp neighbors:\n%s", out)
}

// agree compares podroutectl's view of node n's session with router r (at peer, r's
// address) with FRR's view of the same session: established on both sides, the peer's AS,
// what FRR sent is what the node received and, with advertised, what the node advertised
// is what FRR received.
func agree(n *lab.Node, r *lab.Router, peer netip.Addr, advertised bool) error {
	list := n.Neighbors
	if advertised {
		list = n.NeighborsAdvertised
	}
	ns, err := list()
	if err != nil {
		return err
	}
	i := slices.IndexFunc(ns, func(x agentapi.Neighbor) bool { return x.Address == peer.String() })
	if i < 0 {
		return fmt.Errorf("%s: podroutectl lists no neighbor %s: %+v", n.Name, peer, ns)
	}
	mine := ns[i]
	s, err := r.BGPSummaryJSON()
	if err != nil {
		return err
	}
	var rcd, snt int
	for _, af := range []string{lab.IPv4Unicast, lab.IPv6Unicast} {
		ps, ok := s[af].Peers[n.IPv4.String()]
		if !ok {
			return fmt.Errorf("%s: FRR has no %s peer %s", r.Name, af, n.IPv4)
		}
		if ps.State != "Established" {
			return fmt.Errorf("%s: FRR %s session with %s is %s", r.Name, af, n.IPv4, ps.State)
		}
		rcd += ps.PfxRcd
		snt += ps.PfxSnt
	}
	if mine.State != "established" {
		return fmt.Errorf("%s: podroutectl says the session with %s is %q", n.Name, peer, mine.State)
	}
	if advertised && (mine.Advertised == nil || int(*mine.Advertised) != rcd) {
		return fmt.Errorf("%s advertised %v prefixes to %s, FRR received %d", n.Name, fmtCount(mine.Advertised), r.Name, rcd)
	}
	if !advertised && mine.Advertised != nil {
		return fmt.Errorf("%s: podroutectl counted advertised prefixes without --advertised", n.Name)
	}
	if int(mine.Received) != snt {
		return fmt.Errorf("%s received %d prefixes from %s, FRR sent %d", n.Name, mine.Received, r.Name, snt)
	}
	if mine.ASN != r.ASN {
		return fmt.Errorf("%s: podroutectl says %s is AS %d, FRR is AS %d", n.Name, peer, mine.ASN, r.ASN)
	}
	return nil
}

func containsAll(s string, subs ...string) bool {
	for _, x := range subs {
		if countSubstr(s, x) == 0 {
			return false
		}
	}
	return true
}

func countSubstr(s, sub string) int {
	n := 0
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			n++
		}
	}
	return n
}

// fmtCount prints an optional count.
func fmtCount(n *uint64) string {
	if n == nil {
		return "no count of"
	}
	return fmt.Sprint(*n)
}
