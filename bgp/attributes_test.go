package bgp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
)

// serviceFilter accepts pod CIDRs and Service addresses alike, so a route missing on a
// receiver was not sent rather than refused.
var serviceFilter = ImportFilter{
	ClusterCIDRs: []netip.Prefix{pfx("10.0.0.0/8"), pfx("fd00::/8")},
	MaxLenIPv4:   32,
	MaxLenIPv6:   128,
}

func (s *speaker) asn() uint32 { return s.Router.(*router).cfg.ASN }

// peerAS peers a and b with each side's real AS (eBGP when they differ); modA and modB
// adjust a's neighbour b and b's neighbour a.
func peerAS(t *testing.T, a, b *speaker, modA, modB func(*Neighbor)) {
	t.Helper()
	na, nb := a.neighborOf(b), b.neighborOf(a)
	na.ASN, nb.ASN = b.asn(), a.asn()
	for _, m := range []struct {
		n   *Neighbor
		mod func(*Neighbor)
	}{{&na, modA}, {&nb, modB}} {
		if m.mod != nil {
			m.mod(m.n)
		}
	}
	if err := a.AddNeighbor(context.Background(), na); err != nil {
		t.Fatal(err)
	}
	if err := b.AddNeighbor(context.Background(), nb); err != nil {
		t.Fatal(err)
	}
}

func withKind(kind string) func(*Neighbor) { return func(n *Neighbor) { n.Kind = kind } }

// asPaths is every learned route of s: prefix to the best path's AS path.
func (s *speaker) asPaths(t *testing.T) map[netip.Prefix][]uint32 {
	t.Helper()
	rs, err := s.Routes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Prefix][]uint32{}
	for _, r := range rs {
		out[r.Prefix] = r.Paths[0].ASPath
	}
	return out
}

// expectPrefixes waits until s has learned exactly want, and the neighbour from has sent
// it exactly that many prefixes (Received counts before import policy).
func (s *speaker) expectPrefixes(t *testing.T, from netip.Addr, want ...netip.Prefix) {
	t.Helper()
	slices.SortFunc(want, comparePrefix)
	eventually(t, 15*time.Second, func() string {
		got := slices.SortedFunc(maps.Keys(s.asPaths(t)), comparePrefix)
		if !slices.Equal(got, want) {
			return fmt.Sprintf("%s learned %v, want %v", s.ip, got, want)
		}
		ns, err := s.Neighbors(context.Background(), true)
		if err != nil {
			return err.Error()
		}
		for _, n := range ns {
			if n.Address == from && n.Received != uint64(len(want)) {
				return fmt.Sprintf("%s received %d prefixes from %s, want %d", s.ip, n.Received, from, len(want))
			}
		}
		return ""
	})
}

// expectAdvertised waits until s counts, for each neighbour, the prefixes it sends it.
func (s *speaker) expectAdvertised(t *testing.T, want map[netip.Addr]uint64) {
	t.Helper()
	eventually(t, 10*time.Second, func() string {
		ns, err := s.Neighbors(context.Background(), true)
		if err != nil {
			return err.Error()
		}
		got := map[netip.Addr]uint64{}
		for _, n := range ns {
			got[n.Address] = n.Advertised
		}
		if !maps.Equal(got, want) {
			return fmt.Sprintf("%s advertises %v, want %v", s.ip, got, want)
		}
		return ""
	})
}

// TestASPathPrepend: an external eBGP peer sees our AS once more than prepended, an
// external iBGP peer (a router of our AS outside the cluster) exactly as often; a change
// of prepend is one Advertise.
func TestASPathPrepend(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	a := startSpeaker(t, "127.0.11.1", port, nil)
	ebgp := startSpeaker(t, "127.0.11.2", port, func(c *Config) { c.ASN, c.ImportFilter = 65001, serviceFilter })
	ibgp := startSpeaker(t, "127.0.11.3", port, func(c *Config) { c.ImportFilter = serviceFilter })
	peerAS(t, a, ebgp, withKind(KindExternal), withKind(KindExternal))
	// GoBGP drops a path carrying its own AS unless allowed, iBGP or not. No loop check
	// holds our prepended path back from an iBGP peer: the policy prepends after it.
	peerAS(t, a, ibgp, withKind(KindExternal), func(n *Neighbor) { n.Kind, n.AllowOwnAS = KindExternal, MaxASPathPrepend })

	p := pfx("10.96.0.10/32")
	expect := func(prepend int) {
		t.Helper()
		eventually(t, 15*time.Second, func() string {
			for _, c := range []struct {
				s    *speaker
				want []uint32
			}{
				{ebgp, slices.Repeat([]uint32{testASN}, prepend+1)},
				{ibgp, slices.Repeat([]uint32{testASN}, prepend)},
			} {
				got, ok := c.s.asPaths(t)[p]
				if !ok {
					return fmt.Sprintf("%s has no route to %s", c.s.ip, p)
				}
				if !slices.Equal(got, c.want) {
					return fmt.Sprintf("%s sees AS path %v, want %v", c.s.ip, got, c.want)
				}
			}
			return ""
		})
	}
	if err := a.Advertise(ctx, p, Attributes{ASPathPrepend: 3, ExternalOnly: true}); err != nil {
		t.Fatal(err)
	}
	expect(3)
	if err := a.Advertise(ctx, p, Attributes{ASPathPrepend: MaxASPathPrepend, ExternalOnly: true}); err != nil {
		t.Fatal(err)
	}
	expect(MaxASPathPrepend)
	if err := a.Advertise(ctx, p, Attributes{ExternalOnly: true}); err != nil {
		t.Fatal(err)
	}
	expect(0)
	a.expectAdvertised(t, map[netip.Addr]uint64{ebgp.ip: 1, ibgp.ip: 1})

	var fe *FieldError
	err := a.Advertise(ctx, p, Attributes{ASPathPrepend: MaxASPathPrepend + 1})
	if !errors.As(err, &fe) || fe.Field != "Attributes.ASPathPrepend" {
		t.Fatalf("Advertise with prepend %d: %v, want a FieldError naming Attributes.ASPathPrepend", MaxASPathPrepend+1, err)
	}
	// The refused call changed nothing.
	expect(0)
}

// TestExternalOnly: external-only routes reach external neighbours (Kind external or
// unset) and never the cluster's nodes; a prefix moves between external-only and normal,
// and is withdrawn, with the counts following.
func TestExternalOnly(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	a := startSpeaker(t, "127.0.12.1", port, func(c *Config) { c.NextHopIPv6 = addr("fd00::12:1") })
	mesh := startSpeaker(t, "127.0.12.2", port, func(c *Config) { c.ImportFilter = serviceFilter })
	ext := startSpeaker(t, "127.0.12.3", port, func(c *Config) { c.ASN, c.ImportFilter = 65001, serviceFilter })
	unset := startSpeaker(t, "127.0.12.4", port, func(c *Config) { c.ASN, c.ImportFilter = 65002, serviceFilter })
	peerAS(t, a, mesh, nil, nil)
	peerAS(t, a, ext, withKind(KindExternal), withKind(KindExternal))
	peerAS(t, a, unset, withKind(""), withKind(""))

	pod := pfx("10.244.1.0/24")
	clusterIP := pfx("10.96.0.10/32")
	lbIP := pfx("10.96.0.11/32")
	pool := pfx("10.96.0.0/16") // external-only, holding a normal prefix:
	inPool := pfx("10.96.1.0/24")
	svc6 := pfx("fd00:96::10/128")
	// The first external-only prefix of each family rebuilds the policy, the others edit
	// its set in place.
	for _, p := range []netip.Prefix{clusterIP, lbIP, pool, svc6} {
		if err := a.Advertise(ctx, p, Attributes{ExternalOnly: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []netip.Prefix{pod, inPool} {
		if err := a.Advertise(ctx, p, Attributes{}); err != nil {
			t.Fatal(err)
		}
	}
	all := []netip.Prefix{pod, inPool, clusterIP, lbIP, pool, svc6}
	ext.expectPrefixes(t, a.ip, all...)
	unset.expectPrefixes(t, a.ip, all...)
	mesh.expectPrefixes(t, a.ip, pod, inPool)
	a.expectAdvertised(t, map[netip.Addr]uint64{mesh.ip: 2, ext.ip: 6, unset.ip: 6})

	// External-only to normal: the mesh gets it.
	if err := a.Advertise(ctx, clusterIP, Attributes{}); err != nil {
		t.Fatal(err)
	}
	mesh.expectPrefixes(t, a.ip, pod, inPool, clusterIP)
	a.expectAdvertised(t, map[netip.Addr]uint64{mesh.ip: 3, ext.ip: 6, unset.ip: 6})

	// And back: the mesh sees a withdrawal, the external neighbour keeps the route.
	if err := a.Advertise(ctx, clusterIP, Attributes{ExternalOnly: true}); err != nil {
		t.Fatal(err)
	}
	mesh.expectPrefixes(t, a.ip, pod, inPool)
	a.expectAdvertised(t, map[netip.Addr]uint64{mesh.ip: 2, ext.ip: 6, unset.ip: 6})
	ext.expectPrefixes(t, a.ip, all...)

	// A normal prefix becoming external-only alone in its family (the IPv4 set holds
	// others, the IPv6 one none) is withdrawn from the mesh too.
	pod6 := pfx("fd10:244:0:1::/64")
	if err := a.Advertise(ctx, pod6, Attributes{}); err != nil {
		t.Fatal(err)
	}
	if err := a.Withdraw(ctx, svc6); err != nil {
		t.Fatal(err)
	}
	mesh.expectPrefixes(t, a.ip, pod, inPool, pod6)
	if err := a.Advertise(ctx, pod6, Attributes{ExternalOnly: true}); err != nil {
		t.Fatal(err)
	}
	mesh.expectPrefixes(t, a.ip, pod, inPool)
	ext.expectPrefixes(t, a.ip, pod, inPool, clusterIP, lbIP, pool, pod6)

	// Withdrawing external-only routes, down to none of a family: gone everywhere, and
	// the mesh still gets nothing it should not.
	for _, p := range []netip.Prefix{lbIP, pool, pod6} {
		if err := a.Withdraw(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []*speaker{ext, unset} {
		s.expectPrefixes(t, a.ip, pod, inPool, clusterIP)
	}
	mesh.expectPrefixes(t, a.ip, pod, inPool)
	a.expectAdvertised(t, map[netip.Addr]uint64{mesh.ip: 2, ext.ip: 3, unset.ip: 3})
	if err := a.Withdraw(ctx, clusterIP); err != nil {
		t.Fatal(err)
	}
	ext.expectPrefixes(t, a.ip, pod, inPool)
	r := a.Router.(*router)
	r.mu.Lock()
	left := len(r.externalOnly[0]) + len(r.externalOnly[1])
	r.mu.Unlock()
	if left != 0 {
		t.Errorf("%d prefixes still listed as external-only after their withdrawal", left)
	}
	// Without external-only prefixes the export policy lists no internal neighbours.
	if err := a.Advertise(ctx, clusterIP, Attributes{}); err != nil {
		t.Fatal(err)
	}
	mesh.expectPrefixes(t, a.ip, pod, inPool, clusterIP)
}

// TestExternalOnlyNeighborKind: a neighbour's kind, not its AS, decides whether it gets
// external-only routes, as it is re-added or updated with another kind.
func TestExternalOnlyNeighborKind(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	a := startSpeaker(t, "127.0.13.1", port, nil)
	// An iBGP router outside the cluster (a ToR in the cluster's AS), later a node.
	b := startSpeaker(t, "127.0.13.2", port, func(c *Config) { c.ImportFilter = serviceFilter })
	peerAS(t, a, b, withKind(KindExternal), withKind(KindExternal))
	pod, svc := pfx("10.244.13.0/24"), pfx("10.96.13.1/32")
	if err := a.Advertise(ctx, pod, Attributes{}); err != nil {
		t.Fatal(err)
	}
	if err := a.Advertise(ctx, svc, Attributes{ExternalOnly: true}); err != nil {
		t.Fatal(err)
	}
	b.expectPrefixes(t, a.ip, pod, svc)

	// Removed and re-added as a mesh node: a new session without the Service address.
	if err := a.RemoveNeighbor(ctx, b.ip); err != nil {
		t.Fatal(err)
	}
	b.expectPrefixes(t, a.ip)
	n := a.neighborOf(b)
	if err := a.AddNeighbor(ctx, n); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, func() string { return a.established(t, b.ip) })
	b.expectPrefixes(t, a.ip, pod)
	a.expectAdvertised(t, map[netip.Addr]uint64{b.ip: 1})

	// Updated in place to another kind: the route follows. (GoBGP restarts the session,
	// the kind being its description.)
	for _, c := range []struct {
		kind string
		want []netip.Prefix
	}{
		{"", []netip.Prefix{pod, svc}},
		{KindReflectorClient, []netip.Prefix{pod}},
	} {
		n.Kind = c.kind
		if err := a.UpdateNeighbor(ctx, n); err != nil {
			t.Fatal(err)
		}
		b.expectPrefixes(t, a.ip, c.want...)
		a.expectAdvertised(t, map[netip.Addr]uint64{b.ip: uint64(len(c.want))})
	}
}

// TestExportPolicyExternalOnly checks the export statements and sets built for
// external-only prefixes.
func TestExportPolicyExternalOnly(t *testing.T) {
	var f ImportFilter
	statements := func(rules exportRules) ([]string, map[string][]string) {
		req := f.policies(rules)
		var names []string
		for _, s := range req.Policies[1].Statements {
			names = append(names, s.Name)
		}
		sets := map[string][]string{}
		for _, d := range req.DefinedSets {
			for _, p := range d.Prefixes {
				sets[d.Name] = append(sets[d.Name], fmt.Sprintf("%s %d..%d", p.IpPrefix, p.MaskLengthMin, p.MaskLengthMax))
			}
			sets[d.Name] = append(sets[d.Name], d.List...)
		}
		return names, sets
	}
	rules := exportRules{
		noReflect:    []netip.Addr{addr("192.0.2.2")},
		reflecting:   true,
		noExport:     []netip.Addr{addr("198.51.100.1")},
		internal:     []netip.Addr{addr("192.0.2.2"), addr("192.0.2.3")},
		externalOnly: [2][]netip.Prefix{{pfx("10.96.0.0/16"), pfx("10.96.0.10/32")}, nil},
	}
	names, sets := statements(rules)
	want := []string{"no-export", "external-only-" + setExternalOnly[0], "export-local", "learned-to-clients-only"}
	if !slices.Equal(names, want) {
		t.Errorf("export statements %v, want %v", names, want)
	}
	if got, want := sets[setExternalOnly[0]], []string{"10.96.0.0/16 16..16", "10.96.0.10/32 32..32"}; !slices.Equal(got, want) {
		t.Errorf("external-only set %v, want %v", got, want)
	}
	if got, want := sets[setInternal], []string{"192.0.2.2/32", "192.0.2.3/32"}; !slices.Equal(got, want) {
		t.Errorf("internal set %v, want %v", got, want)
	}
	if _, ok := sets[setExternalOnly[1]]; ok {
		t.Error("empty IPv6 external-only set defined")
	}
	// Without internal neighbours the set stays defined (to be edited in place) but no
	// statement uses it: an empty neighbour set would match every neighbour.
	rules.internal = nil
	names, sets = statements(rules)
	if want := []string{"no-export", "export-local", "learned-to-clients-only"}; !slices.Equal(names, want) {
		t.Errorf("export statements without internal neighbours %v, want %v", names, want)
	}
	if _, ok := sets[setExternalOnly[0]]; !ok {
		t.Error("external-only set not defined without internal neighbours")
	}
	if _, ok := sets[setInternal]; ok {
		t.Error("empty internal neighbour set defined")
	}
}

// expectASPaths waits until s has learned exactly the prefixes of want, each with that AS
// path (nil: an empty one).
func (s *speaker) expectASPaths(t *testing.T, want map[netip.Prefix][]uint32) {
	t.Helper()
	eventually(t, 15*time.Second, func() string {
		got := s.asPaths(t)
		if !maps.EqualFunc(got, want, slices.Equal) {
			return fmt.Sprintf("%s learned AS paths %v, want %v", s.ip, got, want)
		}
		return ""
	})
}

// TestASPathPrependExternalOnly: prepending applies towards external neighbours only. A
// mesh node gets our paths with an empty AS path (and keeps them, its loop detection
// seeing no AS of its own), while an eBGP peer sees our AS once more than prepended; a
// change of count reaches the eBGP peer, moving the prefix between the policy's sets in
// place or rebuilding it; external-only routes are prepended too.
func TestASPathPrependExternalOnly(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	a := startSpeaker(t, "127.0.14.1", port, func(c *Config) { c.NextHopIPv6 = addr("fd00::14:1") })
	mesh := startSpeaker(t, "127.0.14.2", port, func(c *Config) { c.ImportFilter = serviceFilter })
	ext := startSpeaker(t, "127.0.14.3", port, func(c *Config) { c.ASN, c.ImportFilter = 65001, serviceFilter })
	// The eBGP peer first: the prepend statements start without the internal neighbour
	// set, which the mesh node's arrival brings in.
	peerAS(t, a, ext, withKind(KindExternal), withKind(KindExternal))

	pod := pfx("10.244.1.0/24")
	pod6 := pfx("fd10:244:0:1::/64")
	svc := pfx("10.96.0.10/32")
	lb := pfx("10.96.0.11/32")
	ours := func(n int) []uint32 { return slices.Repeat([]uint32{testASN}, n) }
	advertise := func(p netip.Prefix, attrs Attributes) {
		t.Helper()
		if err := a.Advertise(ctx, p, attrs); err != nil {
			t.Fatal(err)
		}
	}
	advertise(pod, Attributes{ASPathPrepend: 2})
	advertise(pod6, Attributes{ASPathPrepend: 2})
	advertise(svc, Attributes{ASPathPrepend: 1, ExternalOnly: true})
	ext.expectASPaths(t, map[netip.Prefix][]uint32{pod: ours(3), pod6: ours(3), svc: ours(2)})

	peerAS(t, a, mesh, nil, nil)
	mesh.expectASPaths(t, map[netip.Prefix][]uint32{pod: nil, pod6: nil})
	mesh.expectPrefixes(t, a.ip, pod, pod6)

	// 2 -> 0 empties the IPv4 set of count 2 (a rebuild), 0 -> 4 starts that of 4
	// (another); the path itself never changes.
	advertise(pod, Attributes{})
	ext.expectASPaths(t, map[netip.Prefix][]uint32{pod: ours(1), pod6: ours(3), svc: ours(2)})
	advertise(pod, Attributes{ASPathPrepend: 4})
	ext.expectASPaths(t, map[netip.Prefix][]uint32{pod: ours(5), pod6: ours(3), svc: ours(2)})

	// A second prefix of count 4 joins its set in place; then pod moves from the set of 4
	// to that of 1, both keeping other prefixes: two edits in place.
	advertise(lb, Attributes{ASPathPrepend: 4, ExternalOnly: true})
	ext.expectASPaths(t, map[netip.Prefix][]uint32{pod: ours(5), pod6: ours(3), svc: ours(2), lb: ours(5)})
	advertise(pod, Attributes{ASPathPrepend: 1})
	ext.expectASPaths(t, map[netip.Prefix][]uint32{pod: ours(2), pod6: ours(3), svc: ours(2), lb: ours(5)})
	// A change of communities with one of count goes out as a new path.
	comm := NewCommunity(64512, 100)
	advertise(pod6, Attributes{ASPathPrepend: 3, Communities: []Community{comm}})
	ext.expectASPaths(t, map[netip.Prefix][]uint32{pod: ours(2), pod6: ours(4), svc: ours(2), lb: ours(5)})
	if r, _ := ext.route(t, pod6); !slices.Equal(r.Paths[0].Communities, []Community{comm}) {
		t.Errorf("%s carries communities %v, want %v", pod6, r.Paths[0].Communities, comm)
	}
	// Through all this the mesh node got every path unprepended, and no Service address.
	mesh.expectASPaths(t, map[netip.Prefix][]uint32{pod: nil, pod6: nil})
	mesh.expectPrefixes(t, a.ip, pod, pod6)
	a.expectAdvertised(t, map[netip.Addr]uint64{mesh.ip: 2, ext.ip: 4})

	// Withdrawn, the prefixes leave the policy's sets.
	for _, p := range []netip.Prefix{pod, pod6, svc, lb} {
		if err := a.Withdraw(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	ext.expectASPaths(t, map[netip.Prefix][]uint32{})
	mesh.expectASPaths(t, map[netip.Prefix][]uint32{})
	r := a.Router.(*router)
	r.mu.Lock()
	left := len(r.prepend[0]) + len(r.prepend[1])
	sizes := r.prependSizes
	r.mu.Unlock()
	if left != 0 || sizes != [2][MaxASPathPrepend + 1]int{} {
		t.Errorf("%d prefixes still prepended after their withdrawal (set sizes %v)", left, sizes)
	}
}

// TestExportPolicyPrepend checks the prepend statements: one per count and family with
// prefixes, after the external-only ones, for our own paths towards neighbours outside
// the internal set (any neighbour while there is none).
func TestExportPolicyPrepend(t *testing.T) {
	var f ImportFilter
	rules := exportRules{
		asn:          testASN,
		internal:     []netip.Addr{addr("192.0.2.2")},
		externalOnly: [2][]netip.Prefix{{pfx("10.96.0.10/32")}, nil},
	}
	rules.prepend[1][0] = []netip.Prefix{pfx("10.96.0.10/32"), pfx("10.244.1.0/24")}
	rules.prepend[3][1] = []netip.Prefix{pfx("fd10:244:0:1::/64")}
	for _, internal := range []bool{true, false} {
		if !internal {
			rules.internal = nil
		}
		req := f.policies(rules)
		var names []string
		stmts := map[string]*api.Statement{}
		for _, s := range req.Policies[1].Statements {
			names = append(names, s.Name)
			stmts[s.Name] = s
		}
		// Without clients, one statement rejects every learned path.
		want := []string{"prepend-podroute-prepend-1-v4", "prepend-podroute-prepend-3-v6", "export-local", "no-learned"}
		if internal {
			want = slices.Insert(want, 0, "external-only-"+setExternalOnly[0])
		}
		if !slices.Equal(names, want) {
			t.Errorf("internal %v: export statements %v, want %v", internal, names, want)
			continue
		}
		for _, c := range []struct {
			set     string
			repeat  uint32
			entries []string
		}{
			{"podroute-prepend-1-v4", 1, []string{"10.96.0.10/32 32..32", "10.244.1.0/24 24..24"}},
			{"podroute-prepend-3-v6", 3, []string{"fd10:244:0:1::/64 64..64"}},
		} {
			s := stmts["prepend-"+c.set]
			if s.Conditions.GetPrefixSet().GetName() != c.set || s.Conditions.GetRouteType() != api.Conditions_ROUTE_TYPE_LOCAL {
				t.Errorf("internal %v: %s conditions %v", internal, s.Name, s.Conditions)
			}
			ns := s.Conditions.GetNeighborSet()
			if internal && (ns.GetName() != setInternal || ns.GetType() != api.MatchSet_TYPE_INVERT) || !internal && ns != nil {
				t.Errorf("internal %v: %s neighbour condition %v", internal, s.Name, ns)
			}
			if p := s.Actions.GetAsPrepend(); p.GetAsn() != testASN || p.GetRepeat() != c.repeat || s.Actions.GetRouteAction() != api.RouteAction_ROUTE_ACTION_ACCEPT {
				t.Errorf("internal %v: %s actions %v", internal, s.Name, s.Actions)
			}
			var entries []string
			for _, d := range req.DefinedSets {
				if d.Name == c.set {
					for _, p := range d.Prefixes {
						entries = append(entries, fmt.Sprintf("%s %d..%d", p.IpPrefix, p.MaskLengthMin, p.MaskLengthMax))
					}
				}
			}
			if !slices.Equal(entries, c.entries) {
				t.Errorf("internal %v: set %s %v, want %v", internal, c.set, entries, c.entries)
			}
		}
	}
}
