package bgp

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
)

// policyState is GoBGP's routing policy, put so that two policies deciding alike compare
// equal: every defined set with its entries sorted; per policy the statements in order,
// except the origin statements, which match one neighbour each and so decide alike in any
// order and in either import policy: they are listed apart, by name with their sets.
type policyState struct {
	sets       map[string][]string
	statements map[string][]string
	origins    []string
}

func readPolicy(t *testing.T, r *router) policyState {
	t.Helper()
	ctx := context.Background()
	st := policyState{sets: map[string][]string{}, statements: map[string][]string{}}
	for _, typ := range []api.DefinedType{api.DefinedType_DEFINED_TYPE_PREFIX, api.DefinedType_DEFINED_TYPE_NEIGHBOR} {
		err := r.srv.ListDefinedSet(ctx, &api.ListDefinedSetRequest{DefinedType: typ}, func(d *api.DefinedSet) {
			entries := slices.Clone(d.List)
			for _, p := range d.Prefixes {
				entries = append(entries, fmt.Sprintf("%s %d..%d", p.IpPrefix, p.MaskLengthMin, p.MaskLengthMax))
			}
			slices.Sort(entries)
			st.sets[d.Name] = entries
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	err := r.srv.ListPolicy(ctx, &api.ListPolicyRequest{}, func(p *api.Policy) {
		for _, s := range p.Statements {
			c := s.GetConditions()
			desc := fmt.Sprintf("%s neighbors=%s/%v prefixes=%s route=%v action=%v", s.Name,
				c.GetNeighborSet().GetName(), c.GetNeighborSet().GetType(), c.GetPrefixSet().GetName(),
				c.GetRouteType(), s.GetActions().GetRouteAction())
			if strings.HasPrefix(s.Name, "origin-") {
				st.origins = append(st.origins, desc)
			} else {
				st.statements[p.Name] = append(st.statements[p.Name], desc)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(st.origins)
	return st
}

// rebuilt is the policy r would hold had it been built anew from its current state; r's
// policy is rebuilt too.
func rebuilt(t *testing.T, r *router) policyState {
	t.Helper()
	r.opMu.Lock()
	err := r.applyPoliciesLocked(context.Background(), false)
	r.opMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	return readPolicy(t, r)
}

func diffPolicy(got, want policyState) string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(want.sets)) {
		if !slices.Equal(got.sets[name], want.sets[name]) {
			out = append(out, fmt.Sprintf("set %s = %v, want %v", name, got.sets[name], want.sets[name]))
		}
	}
	for name := range got.sets {
		if _, ok := want.sets[name]; !ok {
			out = append(out, fmt.Sprintf("set %s = %v, want none", name, got.sets[name]))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want.statements)) {
		if !slices.Equal(got.statements[name], want.statements[name]) {
			out = append(out, fmt.Sprintf("policy %s statements\n  %v\nwant\n  %v", name, got.statements[name], want.statements[name]))
		}
	}
	if !slices.Equal(got.origins, want.origins) {
		out = append(out, fmt.Sprintf("origin statements\n  %v\nwant\n  %v", got.origins, want.origins))
	}
	return strings.Join(out, "\n")
}

// Nodes joining, changing their pod CIDRs and leaving a route reflector edit its routing
// policy in place: no policy reset reaches the other neighbours (GoBGP's "call set policy",
// logged per peer when the whole policy is replaced), and after every step the policy
// decides as one built anew would (same sets, same statements; origin statements in
// whichever import policy).
func TestPolicyEditedInPlace(t *testing.T) {
	ctx := context.Background()
	s := startSpeaker(t, "127.0.62.1", 0, func(c *Config) { c.ListenPort, c.ListenAddresses = -1, nil })
	r := s.Router.(*router)
	f := clusterFilter
	f.Deny = []netip.Prefix{pfx("10.244.0.0/24")}
	f.PeerPrefixes = map[netip.Addr][]netip.Prefix{}
	node := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 63, 0, byte(i)}) }
	client := func(i int) Neighbor {
		return Neighbor{Address: node(i), ASN: testASN, Passive: true, RouteReflectorClient: true, Kind: KindReflectorClient}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	setFilter := func() {
		t.Helper()
		must(r.UpdateImportFilter(ctx, f))
	}
	resets := func() int { return s.logs.count("call set policy") }
	// check compares the policy with a rebuilt one; it rebuilds it, so each step starts
	// from a rebuilt policy and edits it in place.
	check := func(step string) {
		t.Helper()
		got := readPolicy(t, r)
		if d := diffPolicy(got, rebuilt(t, r)); d != "" {
			t.Errorf("%s: the policy edited in place differs from one built anew:\n%s", step, d)
		}
	}

	// The first client and entry build the policy: their sets did not exist.
	must(r.AddNeighbor(ctx, client(1)))
	f.PeerPrefixes[node(1)] = []netip.Prefix{pfx("10.244.1.0/24")}
	setFilter()
	check("first client")

	before := resets()
	for i := 2; i <= 5; i++ {
		must(r.AddNeighbor(ctx, client(i)))
		f.PeerPrefixes[node(i)] = []netip.Prefix{pfx(fmt.Sprintf("10.244.%d.0/24", i))}
		setFilter()
	}
	if n := resets() - before; n != 0 {
		t.Errorf("4 clients joining reset a peer's policy %d times, want none", n)
	}
	check("clients joined")

	steps := []struct {
		name   string
		change func()
	}{
		{"a node's IPv4 CIDR replaced", func() { f.PeerPrefixes[node(2)] = []netip.Prefix{pfx("10.244.22.0/24")} }},
		{"a node gains an IPv6 CIDR", func() {
			f.PeerPrefixes[node(3)] = []netip.Prefix{pfx("10.244.3.0/24"), pfx("fd10:244:0:3::/64")}
		}},
		{"a node keeps only its IPv6 CIDR", func() { f.PeerPrefixes[node(3)] = []netip.Prefix{pfx("fd10:244:0:3::/64")} }},
		{"a node gains a second IPv4 CIDR", func() {
			f.PeerPrefixes[node(4)] = []netip.Prefix{pfx("10.244.4.0/24"), pfx("10.244.44.0/24")}
		}},
		{"a node loses its CIDRs", func() { f.PeerPrefixes[node(5)] = nil }},
		{"a node's entry goes", func() { delete(f.PeerPrefixes, node(4)) }},
		{"an entry for a node without a session", func() { f.PeerPrefixes[node(9)] = []netip.Prefix{pfx("10.244.9.0/24")} }},
	}
	for _, st := range steps {
		before := resets()
		st.change()
		setFilter()
		if n := resets() - before; n != 0 {
			t.Errorf("%s: %d policy resets, want none", st.name, n)
		}
		check(st.name)
	}

	// Edits build on edits: several steps in place, then one comparison.
	f.PeerPrefixes[node(4)] = []netip.Prefix{pfx("10.244.4.0/24")}
	setFilter()
	f.PeerPrefixes[node(5)] = []netip.Prefix{pfx("10.244.5.0/24"), pfx("fd10:244:0:5::/64")}
	setFilter()
	delete(f.PeerPrefixes, node(1))
	setFilter()
	f.PeerPrefixes[node(3)] = []netip.Prefix{pfx("10.244.3.0/24")}
	setFilter()
	check("several edits")

	// The export policy names the neighbours that are not clients: the first of them (the
	// other reflector) creates its set. Then clients leaving, and one turning into a plain
	// neighbour, edit the sets in place.
	must(r.AddNeighbor(ctx, Neighbor{Address: node(10), ASN: testASN, Passive: true, Kind: KindReflector}))
	check("a non-client neighbour")
	before = resets()
	must(r.RemoveNeighbor(ctx, node(2)))
	plain := client(3)
	plain.RouteReflectorClient, plain.Kind = false, KindReflector
	must(r.UpdateNeighbor(ctx, plain))
	if n := resets() - before; n != 0 {
		t.Errorf("a client leaving and one changing: %d policy resets, want none", n)
	}
	check("clients left")
	for _, i := range []int{1, 4, 5} {
		must(r.RemoveNeighbor(ctx, node(i)))
	}
	check("last client left")
	for _, i := range []int{3, 10} {
		must(r.RemoveNeighbor(ctx, node(i)))
	}
	check("every neighbour left")
}

// A node's origin statement added in place (to the origins policy, evaluated first) judges
// its paths as a rebuilt policy would: its own pod CIDR accepted, the rest refused, and its
// paths refused or accepted again as its entry changes and goes.
func TestOriginAddedInPlaceJudgesPaths(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	f := clusterFilter
	// Another node's entry: the validated set exists, so the mesh peer's entry is an edit.
	f.PeerPrefixes = map[netip.Addr][]netip.Prefix{addr("127.0.64.9"): {pfx("10.244.9.0/24")}}
	b := startSpeaker(t, "127.0.64.2", port, func(c *Config) { c.ImportFilter = f })
	mesh := startSpeaker(t, "127.0.64.1", port, nil)
	peer(t, mesh, b, nil)
	for _, p := range []string{"10.244.1.0/24", "10.244.2.0/24", "fd10:244:0:1::/64"} {
		if err := mesh.Advertise(ctx, pfx(p), Attributes{}); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(step string, want ...string) {
		t.Helper()
		eventually(t, 15*time.Second, func() string {
			rs, err := b.Routes(ctx)
			if err != nil {
				return err.Error()
			}
			var got []string
			for _, r := range rs {
				got = append(got, r.Prefix.String())
			}
			if !slices.Equal(got, want) {
				return fmt.Sprintf("%s: routes %v, want %v", step, got, want)
			}
			return ""
		})
	}
	update := func() {
		t.Helper()
		before := b.logs.count("call set policy")
		if err := b.UpdateImportFilter(ctx, f); err != nil {
			t.Fatal(err)
		}
		if n := b.logs.count("call set policy") - before; n != 0 {
			t.Errorf("the filter update reset the peers' policy %d times: not edited in place", n)
		}
	}
	expect("no entry", "10.244.1.0/24", "10.244.2.0/24", "fd10:244:0:1::/64")

	f.PeerPrefixes[mesh.ip] = []netip.Prefix{pfx("10.244.1.0/24")}
	update()
	expect("entry with its IPv4 CIDR", "10.244.1.0/24")

	f.PeerPrefixes[mesh.ip] = []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd10:244:0:1::/64")}
	update()
	expect("and its IPv6 CIDR", "10.244.1.0/24", "fd10:244:0:1::/64")

	f.PeerPrefixes[mesh.ip] = []netip.Prefix{pfx("10.244.2.0/24")}
	update()
	expect("another IPv4 CIDR only", "10.244.2.0/24")

	f.PeerPrefixes[mesh.ip] = nil
	update()
	expect("empty entry")

	delete(f.PeerPrefixes, mesh.ip)
	update()
	expect("entry gone", "10.244.1.0/24", "10.244.2.0/24", "fd10:244:0:1::/64")
}
