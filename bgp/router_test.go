package bgp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIBGPAdvertiseWithdraw(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	a := startSpeaker(t, "127.0.1.1", port, nil)
	b := startSpeaker(t, "127.0.1.2", port, nil)
	sub := b.Subscribe(ctx)
	// Graceful restart, as the agent runs it: End-of-RIB markers must not count as prefixes.
	peer(t, a, b, func(n *Neighbor) { n.GracefulRestart, n.RestartTime = true, 30*time.Second })
	eventually(t, 15*time.Second, func() string { return b.established(t, a.ip) })

	p := pfx("10.244.1.0/24")
	if err := a.Advertise(ctx, p, Attributes{Communities: []Community{NewCommunity(65000, 42)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string {
		r, ok := b.route(t, p)
		if !ok {
			return "route missing on B"
		}
		if !slices.Equal(r.NextHops, []netip.Addr{a.ip}) {
			return fmt.Sprintf("next hops %v, want [%s]", r.NextHops, a.ip)
		}
		if got := r.Paths[0]; got.SourcePeer != a.ip || !got.Best || !slices.Equal(got.Communities, []Community{NewCommunity(65000, 42)}) || got.LocalPref != 100 {
			return fmt.Sprintf("unexpected path %+v", got)
		}
		return ""
	})
	select {
	case <-sub:
	case <-time.After(5 * time.Second):
		t.Fatal("Subscribe did not fire for a new best path")
	}
	// A's own prefix is not a learned route on A.
	if _, ok := a.route(t, p); ok {
		t.Fatal("A reports its own advertisement as a learned route")
	}
	// A counts the one prefix it sends B (graceful restart is on: no End-of-RIB counted),
	// B the one it received.
	if ns, err := a.Neighbors(ctx, true); err != nil || len(ns) != 1 || ns[0].Advertised != 1 {
		t.Errorf("A's neighbors %+v, %v: want 1 prefix advertised to B", ns, err)
	}
	if ns, err := b.Neighbors(ctx, true); err != nil || len(ns) != 1 || ns[0].Received != 1 || ns[0].Accepted != 1 {
		t.Errorf("B's neighbors %+v, %v: want 1 prefix received and accepted from A", ns, err)
	}
	// Without the costly advertised counts, the others are still there.
	if ns, err := a.Neighbors(ctx, false); err != nil || len(ns) != 1 || ns[0].Advertised != 0 || ns[0].State != StateEstablished {
		t.Errorf("A's neighbors without advertised counts %+v, %v: want the session, and 0 advertised", ns, err)
	}
	if ns, err := b.Neighbors(ctx, false); err != nil || len(ns) != 1 || ns[0].Received != 1 || ns[0].Accepted != 1 {
		t.Errorf("B's neighbors without advertised counts %+v, %v: want 1 prefix received and accepted from A", ns, err)
	}
	// Drain, then expect a fresh signal for the withdrawal.
	select {
	case <-sub:
	default:
	}
	if err := a.Withdraw(ctx, p); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string {
		if _, ok := b.route(t, p); ok {
			return "route still on B after withdraw"
		}
		return ""
	})
	select {
	case <-sub:
	case <-time.After(5 * time.Second):
		t.Fatal("Subscribe did not fire for the withdrawal")
	}
	if err := a.Withdraw(ctx, p); err != nil {
		t.Fatalf("withdrawing twice: %v", err)
	}

	ns, err := b.Neighbors(ctx, true)
	if err != nil || len(ns) != 1 || ns[0].State != StateEstablished || ns[0].Since.IsZero() || ns[0].Kind != KindMesh {
		t.Fatalf("Neighbors() = %+v, %v", ns, err)
	}
	// Subscriptions close with their context.
	sctx, cancel := context.WithCancel(ctx)
	ch := b.Subscribe(sctx)
	cancel()
	eventually(t, 2*time.Second, func() string {
		select {
		case _, ok := <-ch:
			if !ok {
				return ""
			}
		default:
		}
		return "subscription not closed"
	})
}

func TestIPv6PrefixOverIPv4Session(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	nh := addr("fd00:10::1")
	a := startSpeaker(t, "127.0.2.1", port, func(c *Config) { c.NextHopIPv6 = nh })
	b := startSpeaker(t, "127.0.2.2", port, nil)
	peer(t, a, b, nil)
	p6 := pfx("fd10:244:0:1::/64")
	p4 := pfx("10.244.2.0/24")
	for _, p := range []netip.Prefix{p6, p4} {
		if err := a.Advertise(ctx, p, Attributes{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 15*time.Second, func() string {
		r6, ok := b.route(t, p6)
		if !ok {
			return "IPv6 route missing on B"
		}
		if !slices.Equal(r6.NextHops, []netip.Addr{nh}) {
			return fmt.Sprintf("IPv6 next hops %v, want [%s]", r6.NextHops, nh)
		}
		r4, ok := b.route(t, p4)
		if !ok {
			return "IPv4 route missing on B"
		}
		if !slices.Equal(r4.NextHops, []netip.Addr{a.ip}) {
			return fmt.Sprintf("IPv4 next hops %v, want [%s]", r4.NextHops, a.ip)
		}
		return ""
	})
}

// A session of one family carries that family only (a single-stack cluster's sessions:
// the speaker keeps no table for the other), and widening it later brings the other.
func TestSingleFamilySession(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	a := startSpeaker(t, "127.0.2.5", port, func(c *Config) { c.NextHopIPv6 = addr("fd00:10::5") })
	b := startSpeaker(t, "127.0.2.6", port, nil)
	peer(t, a, b, func(n *Neighbor) { n.Families = IPv4 })
	p6, p4 := pfx("fd10:244:0:5::/64"), pfx("10.244.5.0/24")
	for _, p := range []netip.Prefix{p6, p4} {
		if err := a.Advertise(ctx, p, Attributes{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 15*time.Second, func() string {
		if _, ok := b.route(t, p4); !ok {
			return "IPv4 route missing on B"
		}
		return ""
	})
	// A's UPDATEs for the IPv4 route are in; give an IPv6 one the same chance to be wrong.
	time.Sleep(500 * time.Millisecond)
	if _, ok := b.route(t, p6); ok {
		t.Fatal("an IPv4-only session carried an IPv6 route")
	}
	if ns, err := a.Neighbors(ctx, true); err != nil || len(ns) != 1 || ns[0].Advertised != 1 {
		t.Fatalf("A's neighbors %+v, %v: want 1 prefix advertised to B", ns, err)
	}
	for _, s := range []*speaker{a, b} {
		other := a
		if s == a {
			other = b
		}
		n := s.neighborOf(other)
		n.Families = IPv4 | IPv6
		if err := s.UpdateNeighbor(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 20*time.Second, func() string {
		for _, p := range []netip.Prefix{p4, p6} {
			if _, ok := b.route(t, p); !ok {
				return fmt.Sprintf("%s missing on B after both families were enabled", p)
			}
		}
		return ""
	})
}

func TestECMP(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	a := startSpeaker(t, "127.0.3.1", port, nil)
	b := startSpeaker(t, "127.0.3.2", port, nil)
	c := startSpeaker(t, "127.0.3.3", port, nil)
	peer(t, a, c, nil)
	peer(t, b, c, nil)
	anycast := pfx("10.244.99.0/24")
	for _, s := range []*speaker{a, b} {
		if err := s.Advertise(ctx, anycast, Attributes{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 15*time.Second, func() string {
		r, ok := c.route(t, anycast)
		if !ok {
			return "anycast route missing on C"
		}
		if !slices.Equal(r.NextHops, []netip.Addr{a.ip, b.ip}) {
			return fmt.Sprintf("next hops %v, want [%s %s]", r.NextHops, a.ip, b.ip)
		}
		if len(r.Paths) != 2 || !r.Paths[0].Best || r.Paths[1].Best {
			return fmt.Sprintf("paths %+v", r.Paths)
		}
		return ""
	})
	// One withdraws: a single next hop remains.
	if err := a.Withdraw(ctx, anycast); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string {
		r, ok := c.route(t, anycast)
		if !ok || !slices.Equal(r.NextHops, []netip.Addr{b.ip}) {
			return fmt.Sprintf("route %+v, want next hop %s only", r, b.ip)
		}
		return ""
	})
}

func TestImportPolicyRefusals(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	own := pfx("10.244.1.0/24")
	filter := clusterFilter
	filter.Deny = []netip.Prefix{own, pfx("10.96.0.0/12")}
	b := startSpeaker(t, "127.0.4.2", port, func(c *Config) { c.ImportFilter = filter })
	rogue := startSpeaker(t, "127.0.4.66", port, func(c *Config) { c.NextHopIPv6 = addr("fd00::66") })
	peer(t, rogue, b, nil)
	if err := b.Advertise(ctx, own, Attributes{}); err != nil {
		t.Fatal(err)
	}

	good := pfx("10.244.7.0/24")
	bad := map[netip.Prefix]string{
		pfx("0.0.0.0/0"):         ReasonDefaultRoute,
		pfx("::/0"):              ReasonDefaultRoute,
		pfx("192.168.0.0/24"):    ReasonOutsideCluster,
		pfx("10.244.5.128/25"):   ReasonTooLong,
		own:                      ReasonDenied,
		pfx("10.244.0.0/23"):     ReasonDenied, // contains our own CIDR
		pfx("fd10:244:0:1::/80"): ReasonTooLong,
	}
	announce := func(community uint16) {
		for p := range bad {
			if err := rogue.Advertise(ctx, p, Attributes{Communities: []Community{NewCommunity(666, community)}}); err != nil {
				t.Fatal(err)
			}
		}
		if err := rogue.Advertise(ctx, good, Attributes{Communities: []Community{NewCommunity(666, community)}}); err != nil {
			t.Fatal(err)
		}
	}
	announce(1)
	eventually(t, 15*time.Second, func() string {
		if _, ok := b.route(t, good); !ok {
			return "allowed route missing"
		}
		if got := len(b.Refusals()); got != len(bad) {
			return fmt.Sprintf("%d refusals, want %d: %+v", got, len(bad), b.Refusals())
		}
		return ""
	})
	rs, err := b.Routes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].Prefix != good {
		t.Fatalf("routes %+v, want only %s", rs, good)
	}
	for _, r := range b.Refusals() {
		want, ok := bad[r.Prefix]
		if !ok || !strings.HasPrefix(r.Reason, want) || r.Peer != rogue.ip || r.Count != 1 {
			t.Errorf("refusal %+v, want reason %q from %s", r, want, rogue.ip)
		}
	}

	// Re-announcements (new attributes) count, but each pair is logged once. The sender
	// coalesces updates still queued for a prefix into the last one, so each round is
	// awaited before the next.
	for round := uint64(2); round <= 3; round++ {
		announce(uint16(round))
		eventually(t, 10*time.Second, func() string {
			for _, r := range b.Refusals() {
				if r.Count < round {
					return fmt.Sprintf("refusal %s count %d, want %d", r.Prefix, r.Count, round)
				}
			}
			return ""
		})
	}
	for p := range bad {
		if n := b.logs.count("bgp: refused route", "prefix", p.String(), "peer", rogue.ip.String()); n != 1 {
			t.Errorf("refusal of %s logged %d times, want once", p, n)
		}
	}
	// GoBGP's own policy engine did the filtering: the rogue's paths are in adj-rib-in.
	ns, _ := b.Neighbors(ctx, true)
	if len(ns) != 1 || ns[0].Received != uint64(len(bad)+1) || ns[0].Accepted != 1 {
		t.Errorf("counters %+v, want received %d accepted 1", ns, len(bad)+1)
	}

	// Widen the filter live: the /25 becomes acceptable.
	filter.MaxLenIPv4 = 25
	if err := b.UpdateImportFilter(ctx, filter); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string {
		if _, ok := b.route(t, pfx("10.244.5.128/25")); !ok {
			return "/25 not accepted after filter update"
		}
		for _, r := range b.Refusals() {
			if r.Prefix == pfx("10.244.5.128/25") {
				return "/25 still listed as refused"
			}
		}
		return ""
	})
	// And narrow it again: the held path is refused without a new announcement.
	filter.MaxLenIPv4 = 24
	if err := b.UpdateImportFilter(ctx, filter); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string {
		if _, ok := b.route(t, pfx("10.244.5.128/25")); ok {
			return "/25 still installed after narrowing"
		}
		if len(b.Refusals()) != len(bad) {
			return fmt.Sprintf("refusals %+v", b.Refusals())
		}
		return ""
	})

	// A refused prefix the rogue withdraws is no longer a refusal; announced again, it is
	// refused and logged again.
	outside := pfx("192.168.0.0/24")
	refused := func(p netip.Prefix) bool {
		for _, r := range b.Refusals() {
			if r.Prefix == p {
				return true
			}
		}
		return false
	}
	if err := rogue.Withdraw(ctx, outside); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string {
		if refused(outside) || len(b.Refusals()) != len(bad)-1 {
			return fmt.Sprintf("refusals after the withdrawal of %s: %+v", outside, b.Refusals())
		}
		return ""
	})
	if err := rogue.Advertise(ctx, outside, Attributes{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string {
		if !refused(outside) {
			return fmt.Sprintf("%s not refused again: %+v", outside, b.Refusals())
		}
		return ""
	})
	if n := b.logs.count("bgp: refused route", "prefix", outside.String(), "peer", rogue.ip.String()); n != 2 {
		t.Errorf("refusal of %s logged %d times, want twice: once, and again after the withdrawal", outside, n)
	}

	// A removed neighbour's refusals go with it.
	if err := b.RemoveNeighbor(ctx, rogue.ip); err != nil {
		t.Fatal(err)
	}
	if rs := b.Refusals(); len(rs) != 0 {
		t.Errorf("refusals of a removed neighbour: %+v", rs)
	}
}

// TestPeerOriginValidation: a neighbor with a PeerPrefixes entry gets only its own
// prefixes accepted, while a neighbor without one gets the cluster rules; live changes
// re-evaluate what was already received.
func TestPeerOriginValidation(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	own := pfx("10.244.10.0/24")
	absent := addr("127.0.9.9") // a node without a session yet
	filter := clusterFilter
	filter.Deny = []netip.Prefix{own}
	nh6 := addr("fd00::91")
	filter.PeerPrefixes = map[netip.Addr][]netip.Prefix{
		addr("127.0.9.1"): {pfx("10.244.1.0/24"), pfx("fd10:244:0:1::/64")},
		absent:            {pfx("10.244.2.0/24")},
	}
	b := startSpeaker(t, "127.0.9.2", port, func(c *Config) { c.ImportFilter = filter })
	mesh := startSpeaker(t, "127.0.9.1", port, func(c *Config) { c.NextHopIPv6 = nh6 })
	ext := startSpeaker(t, "127.0.9.3", port, nil)
	peer(t, mesh, b, nil)
	peer(t, ext, b, func(n *Neighbor) { n.Kind = KindExternal })
	if err := b.Advertise(ctx, own, Attributes{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"10.244.1.0/24", "fd10:244:0:1::/64", "10.244.2.0/24", "10.244.3.0/24", "fd10:244:0:3::/64", "10.244.1.128/25"} {
		if err := mesh.Advertise(ctx, pfx(p), Attributes{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"10.244.2.0/24", "10.244.3.0/24"} {
		if err := ext.Advertise(ctx, pfx(p), Attributes{}); err != nil {
			t.Fatal(err)
		}
	}

	// expect waits until b's routes (prefix: next hops) and refusals from the mesh
	// peer (prefix: reason) are exactly as given.
	expect := func(routes map[string][]netip.Addr, refused map[netip.Addr]map[string]string) {
		t.Helper()
		eventually(t, 15*time.Second, func() string {
			rs, err := b.Routes(ctx)
			if err != nil {
				return err.Error()
			}
			got := map[string][]netip.Addr{}
			for _, r := range rs {
				got[r.Prefix.String()] = r.NextHops
			}
			if fmt.Sprint(got) != fmt.Sprint(routes) {
				return fmt.Sprintf("routes %v, want %v", got, routes)
			}
			gotRefused := map[netip.Addr]map[string]string{}
			for _, r := range b.Refusals() {
				if gotRefused[r.Peer] == nil {
					gotRefused[r.Peer] = map[string]string{}
				}
				gotRefused[r.Peer][r.Prefix.String()] = r.Reason
			}
			if fmt.Sprint(gotRefused) != fmt.Sprint(refused) {
				return fmt.Sprintf("refusals %v, want %v", gotRefused, refused)
			}
			return ""
		})
	}
	notPeers := ReasonNotPeersCIDR
	expect(map[string][]netip.Addr{
		"10.244.1.0/24":     {mesh.ip},
		"fd10:244:0:1::/64": {nh6},
		"10.244.2.0/24":     {ext.ip},
		"10.244.3.0/24":     {ext.ip},
	}, map[netip.Addr]map[string]string{mesh.ip: {
		"10.244.2.0/24":     notPeers + " (pod CIDR of peer 127.0.9.9)",
		"10.244.3.0/24":     notPeers,
		"fd10:244:0:3::/64": notPeers,
		"10.244.1.128/25":   ReasonTooLong + " /24",
	}})
	ns, err := b.Neighbors(ctx, true)
	if err != nil || len(ns) != 2 || ns[0].Accepted != 2 || ns[0].Received != 6 || ns[1].Accepted != 2 {
		t.Errorf("neighbors %+v, %v: want 2 of 6 accepted from %s, 2 from %s", ns, err, mesh.ip, ext.ip)
	}

	// A Node joining: an entry for a neighbour not configured yet re-judges no one.
	resets := func() uint64 { return b.Router.(*router).filterResets.Load() }
	before := resets()
	joined := maps.Clone(filter.PeerPrefixes)
	joined[netip.MustParseAddr("127.0.9.77")] = []netip.Prefix{pfx("10.244.77.0/24")}
	if err := b.UpdateImportFilter(ctx, ImportFilter{ClusterCIDRs: filter.ClusterCIDRs, MaxLenIPv4: filter.MaxLenIPv4,
		MaxLenIPv6: filter.MaxLenIPv6, Deny: filter.Deny, PeerPrefixes: joined}); err != nil {
		t.Fatal(err)
	}
	if n := resets() - before; n != 0 {
		t.Errorf("a new neighbour's entry re-judged %d configured neighbours, want none", n)
	}

	// The mesh peer's node gets another IPv4 CIDR: the old one is refused, the new one
	// accepted next to the external peer's path, without any new announcement. Only the
	// mesh peer is re-judged.
	filter.PeerPrefixes = map[netip.Addr][]netip.Prefix{
		mesh.ip: {pfx("10.244.3.0/24"), pfx("fd10:244:0:1::/64")},
		absent:  {pfx("10.244.2.0/24")},
	}
	before = resets()
	if err := b.UpdateImportFilter(ctx, filter); err != nil {
		t.Fatal(err)
	}
	if n := resets() - before; n != 1 {
		t.Errorf("a change of one neighbour's entry re-judged %d neighbours, want 1", n)
	}
	expect(map[string][]netip.Addr{
		"fd10:244:0:1::/64": {nh6},
		"10.244.2.0/24":     {ext.ip},
		"10.244.3.0/24":     {mesh.ip, ext.ip},
	}, map[netip.Addr]map[string]string{mesh.ip: {
		"10.244.1.0/24":     notPeers,
		"10.244.2.0/24":     notPeers + " (pod CIDR of peer 127.0.9.9)",
		"fd10:244:0:3::/64": notPeers,
		"10.244.1.128/25":   ReasonTooLong + " /24",
	}})

	// An empty entry accepts nothing from that neighbor.
	filter.PeerPrefixes[ext.ip] = nil
	if err := b.UpdateImportFilter(ctx, filter); err != nil {
		t.Fatal(err)
	}
	expect(map[string][]netip.Addr{
		"fd10:244:0:1::/64": {nh6},
		"10.244.3.0/24":     {mesh.ip},
	}, map[netip.Addr]map[string]string{
		mesh.ip: {
			"10.244.1.0/24":     notPeers,
			"10.244.2.0/24":     notPeers + " (pod CIDR of peer 127.0.9.9)",
			"fd10:244:0:3::/64": notPeers,
			"10.244.1.128/25":   ReasonTooLong + " /24",
		},
		ext.ip: {
			"10.244.2.0/24": notPeers + " (pod CIDR of peer 127.0.9.9)",
			"10.244.3.0/24": notPeers + " (pod CIDR of peer 127.0.9.1)",
		},
	})
	// Each refusal is logged once, whatever the re-evaluations.
	if n := b.logs.count("bgp: refused route", "prefix", "10.244.2.0/24", "peer", mesh.ip.String()); n != 1 {
		t.Errorf("refusal of 10.244.2.0/24 from %s logged %d times, want once", mesh.ip, n)
	}
}

func TestFilterPolicyMatchesClassifier(t *testing.T) {
	mesh, mesh6, empty, external := addr("192.0.2.2"), addr("2001:db8::3"), addr("192.0.2.4"), addr("198.51.100.1")
	f, err := ImportFilter{
		ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16"), pfx("10.0.0.0/8"), pfx("fd10::/48")},
		MaxLenIPv4:   24, MaxLenIPv6: 64,
		Deny: []netip.Prefix{pfx("10.96.0.0/12"), pfx("10.96.5.5/32"), pfx("10.244.3.0/24")},
		PeerPrefixes: map[netip.Addr][]netip.Prefix{
			// Mapped address and unmasked prefix are normalized; the /25 and the
			// outside prefix can never be accepted and are dropped.
			netip.AddrFrom16(mesh.As16()): {pfx("10.244.2.7/24"), pfx("fd10:0:0:2::/64"), pfx("10.244.9.0/25"), pfx("192.168.0.0/24")},
			mesh6:                         {pfx("fd10:0:0:3::/64")},
			empty:                         nil,
		},
	}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	// Nested entries are dropped so GoBGP's longest-match prefix sets stay exact.
	if !slices.Equal(f.ClusterCIDRs, []netip.Prefix{pfx("10.0.0.0/8"), pfx("fd10::/48")}) || len(f.Deny) != 2 {
		t.Fatalf("normalized %+v", f)
	}
	if got := f.PeerPrefixes[mesh]; !slices.Equal(got, []netip.Prefix{pfx("10.244.2.0/24"), pfx("fd10:0:0:2::/64")}) {
		t.Fatalf("normalized peer prefixes of %s: %v", mesh, got)
	}
	if got, ok := f.PeerPrefixes[empty]; !ok || got == nil || len(got) != 0 {
		t.Fatalf("peer without prefixes normalized to %v, %v; want a present empty entry", got, ok)
	}
	cases := []struct {
		peer   netip.Addr
		prefix string
		want   string
	}{
		{external, "10.244.7.0/24", ""},
		{external, "10.96.1.0/24", ReasonDenied},
		{external, "10.96.0.0/11", ReasonDenied},
		{external, "10.244.3.128/25", ReasonDenied},
		{external, "10.244.2.0/23", ReasonDenied},
		{external, "10.244.0.0/24", ""},
		{external, "10.244.7.0/25", ReasonTooLong},
		{external, "11.0.0.0/24", ReasonOutsideCluster},
		{external, "0.0.0.0/0", ReasonDefaultRoute},
		{external, "fd10:0:0:1::/64", ""},
		// Validated neighbors: their own prefixes only.
		{mesh, "10.244.2.0/24", ""},
		{mesh, "fd10:0:0:2::/64", ""},
		{mesh, "10.244.7.0/24", ReasonNotPeersCIDR},
		{mesh, "fd10:0:0:3::/64", ReasonNotPeersCIDR + " (pod CIDR of peer 2001:db8::3)"},
		{mesh, "10.244.2.0/25", ReasonTooLong},
		{mesh, "10.244.9.0/25", ReasonTooLong},
		{mesh, "192.168.0.0/24", ReasonOutsideCluster},
		{mesh, "10.244.4.0/23", ReasonNotPeersCIDR},
		{mesh, "10.244.3.0/24", ReasonDenied},
		{mesh, "0.0.0.0/0", ReasonDefaultRoute},
		{mesh6, "fd10:0:0:3::/64", ""},
		{mesh6, "10.244.2.0/24", ReasonNotPeersCIDR + " (pod CIDR of peer 192.0.2.2)"},
		{empty, "10.244.4.0/24", ReasonNotPeersCIDR},
		{netip.AddrFrom16(empty.As16()), "10.244.4.0/24", ReasonNotPeersCIDR},
	}
	for _, c := range cases {
		if got := f.classify(c.peer, pfx(c.prefix)); !strings.HasPrefix(got, c.want) || (c.want == "") != (got == "") {
			t.Errorf("classify(%s, %s) = %q, want %q", c.peer, c.prefix, got, c.want)
		}
	}

	// The import policy runs the same rules in the same order.
	req := f.policies(exportRules{})
	var names []string
	for _, s := range req.Policies[0].Statements {
		names = append(names, s.Name)
	}
	want := []string{
		"allow-local",
		"match-" + setDefault4, "match-" + setDefault6,
		"match-" + setDeny4,
		"origin-podroute-peer-192.0.2.2-v4", "origin-podroute-peer-192.0.2.2-v6",
		"origin-podroute-peer-2001:db8::3-v6",
		"match-" + setValidated,
		"match-" + setAllow4, "match-" + setAllow6,
	}
	if !slices.Equal(names, want) {
		t.Fatalf("import statements\n%v\nwant\n%v", names, want)
	}
	sets := map[string][]string{}
	for _, d := range req.DefinedSets {
		for _, p := range d.Prefixes {
			sets[d.Name] = append(sets[d.Name], fmt.Sprintf("%s %d..%d", p.IpPrefix, p.MaskLengthMin, p.MaskLengthMax))
		}
		sets[d.Name] = append(sets[d.Name], d.List...)
	}
	for name, want := range map[string][]string{
		"podroute-peer-192.0.2.2":      {"192.0.2.2/32"},
		"podroute-peer-192.0.2.2-v4":   {"10.244.2.0/24 24..24"},
		"podroute-peer-192.0.2.2-v6":   {"fd10:0:0:2::/64 64..64"},
		"podroute-peer-2001:db8::3-v6": {"fd10:0:0:3::/64 64..64"},
		setValidated:                   {"192.0.2.2/32", "192.0.2.4/32", "2001:db8::3/128"},
		"podroute-peer-192.0.2.4":      nil,
		"podroute-peer-2001:db8::3-v4": nil,
	} {
		if !slices.Equal(sets[name], want) {
			t.Errorf("defined set %s = %v, want %v", name, sets[name], want)
		}
	}
	// Without validated neighbors no neighbor set exists: an empty one matches everyone.
	plain := f
	plain.PeerPrefixes = nil
	for _, d := range plain.policies(exportRules{}).DefinedSets {
		if len(d.List) == 0 && len(d.Prefixes) == 0 {
			t.Errorf("empty defined set %s", d.Name)
		}
		if strings.HasPrefix(d.Name, setPeerPrefix) || d.Name == setValidated {
			t.Errorf("defined set %s without PeerPrefixes", d.Name)
		}
	}

	for _, bad := range []ImportFilter{
		{ClusterCIDRs: []netip.Prefix{pfx("10.0.0.0/16")}},
		{ClusterCIDRs: []netip.Prefix{pfx("10.0.0.0/16")}, MaxLenIPv4: 8},
		{ClusterCIDRs: []netip.Prefix{pfx("0.0.0.0/0")}, MaxLenIPv4: 24},
		{PeerPrefixes: map[netip.Addr][]netip.Prefix{{}: nil}},
		{PeerPrefixes: map[netip.Addr][]netip.Prefix{mesh: {{}}}},
	} {
		var fe *FieldError
		if _, err := bad.normalize(); !errors.As(err, &fe) {
			t.Errorf("normalize(%+v) = %v, want FieldError", bad, err)
		}
	}
}

func TestNeighborValidation(t *testing.T) {
	port := freePort(t)
	s := startSpeaker(t, "127.0.5.1", port, nil)
	good := Neighbor{Address: addr("127.0.5.2"), ASN: testASN}
	cases := []struct {
		field string
		mod   func(*Neighbor)
	}{
		{"Neighbor.Address", func(n *Neighbor) { n.Address = netip.Addr{} }},
		{"Neighbor.Address", func(n *Neighbor) { n.Address = addr("0.0.0.0") }},
		{"Neighbor.Address", func(n *Neighbor) { n.Address = addr("fe80::1%eth0") }},
		{"Neighbor.ASN", func(n *Neighbor) { n.ASN = 0 }},
		{"Neighbor.HoldTime", func(n *Neighbor) { n.HoldTime = 2 * time.Second }},
		{"Neighbor.HoldTime", func(n *Neighbor) { n.HoldTime = 3500 * time.Millisecond }},
		{"Neighbor.KeepaliveTime", func(n *Neighbor) { n.HoldTime = 3 * time.Second; n.KeepaliveTime = 3 * time.Second }},
		{"Neighbor.ConnectRetry", func(n *Neighbor) { n.ConnectRetry = -time.Second }},
		{"Neighbor.LocalAddress", func(n *Neighbor) { n.LocalAddress = addr("::1") }},
		{"Neighbor.TTLSecurityHops", func(n *Neighbor) { n.ASN = 65001; n.EBGPMultihopTTL = 2; n.TTLSecurityHops = 1 }},
		{"Neighbor.EBGPMultihopTTL", func(n *Neighbor) { n.EBGPMultihopTTL = 2 }},
		{"Neighbor.RestartTime", func(n *Neighbor) { n.GracefulRestart = true; n.RestartTime = 5000 * time.Second }},
		{"Neighbor.RestartTime", func(n *Neighbor) { n.RestartTime = 10 * time.Second }},
		{"Neighbor.RouteReflectorClient", func(n *Neighbor) { n.ASN = 65001; n.RouteReflectorClient = true }},
		{"Neighbor.RouteReflectorClusterID", func(n *Neighbor) { n.RouteReflectorClient = true; n.RouteReflectorClusterID = addr("::1") }},
		{"Neighbor.Password", func(n *Neighbor) { n.Password = strings.Repeat("x", 81) }},
		{"Neighbor.Kind", func(n *Neighbor) { n.Kind = "bogus" }},
		{"Neighbor.Families", func(n *Neighbor) { n.Families = 4 }},
		{"Neighbor.BFD.MinTx", func(n *Neighbor) {
			n.BFD = &BFDConfig{MinTx: 5 * time.Millisecond, MinRx: 50 * time.Millisecond, Multiplier: 3}
		}},
		{"Neighbor.BFD.MinRx", func(n *Neighbor) {
			n.BFD = &BFDConfig{MinTx: 50 * time.Millisecond, MinRx: 10*time.Millisecond + 1, Multiplier: 3}
		}},
		{"Neighbor.BFD.Multiplier", func(n *Neighbor) { n.BFD = &BFDConfig{MinTx: 50 * time.Millisecond, MinRx: 50 * time.Millisecond} }},
		{"Neighbor.BFD.Multiplier", func(n *Neighbor) {
			n.BFD = &BFDConfig{MinTx: 50 * time.Millisecond, MinRx: 50 * time.Millisecond, Multiplier: 256}
		}},
		{"Neighbor.BFD", func(n *Neighbor) {
			n.ASN, n.EBGPMultihopTTL = 65001, 2
			n.BFD = &BFDConfig{MinTx: 50 * time.Millisecond, MinRx: 50 * time.Millisecond, Multiplier: 3}
		}},
		{"Neighbor.BFD", func(n *Neighbor) {
			n.TTLSecurityHops = 2
			n.BFD = &BFDConfig{MinTx: 50 * time.Millisecond, MinRx: 50 * time.Millisecond, Multiplier: 3}
		}},
	}
	for _, c := range cases {
		n := good
		c.mod(&n)
		err := s.AddNeighbor(context.Background(), n)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field || !strings.Contains(err.Error(), c.field) {
			t.Errorf("AddNeighbor(%+v) = %v, want error naming %s", n, err, c.field)
		}
	}
	if err := s.AddNeighbor(context.Background(), good); err != nil {
		t.Fatalf("valid neighbor refused: %v", err)
	}
	if err := s.AddNeighbor(context.Background(), good); err == nil {
		t.Fatal("duplicate neighbor accepted")
	}
	if err := s.RemoveNeighbor(context.Background(), addr("127.0.5.99")); err == nil {
		t.Fatal("removing an unknown neighbor succeeded")
	}
	if _, err := New(Config{RouterID: addr("1.2.3.4")}); err == nil || !strings.Contains(err.Error(), "Config.ASN") {
		t.Fatalf("New without ASN: %v", err)
	}
	if _, err := New(Config{ASN: 1, RouterID: addr("::1")}); err == nil || !strings.Contains(err.Error(), "Config.RouterID") {
		t.Fatalf("New with IPv6 router ID: %v", err)
	}
}

func TestNeighborLifecycle(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	a := startSpeaker(t, "127.0.6.1", port, nil)
	b := startSpeaker(t, "127.0.6.2", port, nil)
	c := startSpeaker(t, "127.0.6.3", port, nil)
	withPassword := func(n *Neighbor) { n.Password = "podroute-md5" }
	if err := md5Supported(); err != nil {
		// The password must then be refused up front rather than keep the session down.
		n := a.neighborOf(b)
		withPassword(&n)
		var fe *FieldError
		if err := a.AddNeighbor(ctx, n); !errors.As(err, &fe) || fe.Field != "Neighbor.Password" {
			t.Fatalf("AddNeighbor with password on a kernel without TCP MD5: %v", err)
		}
		t.Logf("TCP MD5 unavailable (%v): peering without password", err)
		withPassword = func(*Neighbor) {}
	}
	peer(t, a, b, withPassword)
	p := pfx("10.244.6.0/24")
	if err := a.Advertise(ctx, p, Attributes{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, func() string {
		if msg := b.established(t, a.ip); msg != "" {
			return msg
		}
		if _, ok := b.route(t, p); !ok {
			return "route missing on B"
		}
		return ""
	})
	ns, err := b.Neighbors(ctx, true)
	if err != nil || len(ns) != 1 || ns[0].Password != "" {
		t.Fatalf("Neighbors() = %+v, %v (password must be blanked)", ns, err)
	}

	// Update in place: timers change without a reset.
	n := b.neighborOf(a)
	withPassword(&n)
	n.HoldTime = 6 * time.Second
	n.KeepaliveTime = 2 * time.Second
	if err := b.UpdateNeighbor(ctx, n); err != nil {
		t.Fatal(err)
	}
	ns, _ = b.Neighbors(ctx, true)
	if ns[0].HoldTime != 6*time.Second {
		t.Fatalf("updated neighbor %+v", ns[0])
	}
	if err := b.UpdateNeighbor(ctx, b.neighborOf(c)); err == nil {
		t.Fatal("updating an unknown neighbor succeeded")
	}

	// Add a third speaker live.
	peer(t, c, b, nil)
	eventually(t, 15*time.Second, func() string { return b.established(t, c.ip) })

	// Remove A: its route disappears from B at once.
	if err := b.RemoveNeighbor(ctx, a.ip); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string {
		if _, ok := b.route(t, p); ok {
			return "route of removed neighbor still present"
		}
		ns, _ := b.Neighbors(ctx, true)
		if len(ns) != 1 || ns[0].Address != c.ip {
			return fmt.Sprintf("neighbors %+v", ns)
		}
		return ""
	})
	if ok, err := b.Synced(ctx); err != nil || !ok {
		t.Fatalf("Synced() = %v, %v", ok, err)
	}
}

func TestStopWithdrawsRoutes(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	a := startSpeaker(t, "127.0.8.1", port, nil)
	b := startSpeaker(t, "127.0.8.2", port, nil)
	p := pfx("10.244.8.0/24")
	if err := a.Advertise(ctx, p, Attributes{}); err != nil {
		t.Fatal(err)
	}
	peer(t, a, b, func(n *Neighbor) { n.GracefulRestart = true; n.RestartTime = 60 * time.Second })
	eventually(t, 15*time.Second, func() string {
		if _, ok := b.route(t, p); !ok {
			return "route missing"
		}
		return ""
	})
	// A non-graceful stop flushes our routes at peers even with graceful restart.
	if err := a.Stop(false); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string {
		if _, ok := b.route(t, p); ok {
			return "route kept after a hard stop"
		}
		return ""
	})
	if err := a.Advertise(ctx, p, Attributes{}); err == nil {
		t.Fatal("Advertise after Stop succeeded")
	}
	if err := a.Stop(false); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}
