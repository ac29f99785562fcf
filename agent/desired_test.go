package agent

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/routes"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func testNodes() []cluster.Node {
	return []cluster.Node{
		{Name: "a", PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}, Addresses: []netip.Addr{addr("192.0.2.1"), addr("2001:db8::1")}},
		{Name: "b", PodCIDRs: []netip.Prefix{pfx("10.244.2.0/24")}, Addresses: []netip.Addr{addr("192.0.2.2")}},
		{Name: "c", PodCIDRs: []netip.Prefix{pfx("fd00:10:244:3::/64")}, Addresses: []netip.Addr{addr("2001:db8::3")}},
		{Name: "d", Problem: "spec.podCIDRs is empty"},
	}
}

func testConfig() Config {
	return Config{NodeName: "a", ASN: DefaultASN, ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10:244::/56")},
		ServiceCIDRs: []netip.Prefix{pfx("10.96.0.0/12")}, GracefulRestart: true, HoldTime: 9 * time.Second, ResyncInterval: time.Second}
}

func TestFindSelf(t *testing.T) {
	cfg := testConfig()
	me, err := findSelf(&cfg, testNodes())
	if err != nil {
		t.Fatal(err)
	}
	if me.V4 != addr("192.0.2.1") || me.V6 != addr("2001:db8::1") || me.RouterID != me.V4 || me.ASN != DefaultASN || len(me.PodCIDRs) != 2 {
		t.Fatalf("self %+v", me)
	}
	cfg.NodeIPs = []netip.Addr{addr("198.51.100.7")}
	if me, _ = findSelf(&cfg, testNodes()); me.V4 != addr("198.51.100.7") || me.RouterID != me.V4 {
		t.Fatalf("--node-ip not applied: %+v", me)
	}
	cfg.NodeName = "c"
	if me, _ = findSelf(&cfg, testNodes()); !me.RouterID.Is4() || !me.RouterID.IsValid() {
		t.Fatalf("IPv6-only node needs an IPv4-shaped router ID, got %v", me.RouterID)
	}
	cfg.NodeName = "d"
	if _, err := findSelf(&cfg, testNodes()); err == nil || !strings.Contains(err.Error(), "podCIDRs is empty") {
		t.Fatalf("node without CIDR: %v", err)
	}
	cfg.NodeName = "zz"
	if _, err := findSelf(&cfg, testNodes()); err == nil || !strings.Contains(err.Error(), "--node-name") {
		t.Fatalf("missing node: %v", err)
	}
}

func TestMeshNeighbors(t *testing.T) {
	cfg := testConfig()
	me, _ := findSelf(&cfg, testNodes())
	peers, problems := meshNeighbors(&cfg, me, testNodes())
	if len(peers) != 2 {
		t.Fatalf("peers %v: want b over IPv4 and c over IPv6", peers)
	}
	b := peers[addr("192.0.2.2")]
	if b.Node != "b" || b.Neighbor.LocalAddress != me.V4 || b.Neighbor.ASN != DefaultASN || !b.Neighbor.GracefulRestart || b.Neighbor.Kind != bgp.KindMesh {
		t.Fatalf("peer b %+v", b)
	}
	if c := peers[addr("2001:db8::3")]; c.Node != "c" || c.Neighbor.LocalAddress != me.V6 {
		t.Fatalf("peer c %+v", c)
	}
	if len(problems) != 1 || !strings.Contains(problems[0], "node d") {
		t.Fatalf("problems %v: want node d named", problems)
	}
}

func TestImportFilter(t *testing.T) {
	cfg := testConfig()
	nodes := testNodes()
	me, _ := findSelf(&cfg, nodes)
	f := importFilter(&cfg, me, nodes)
	if f.MaxLenIPv4 != 24 || f.MaxLenIPv6 != 64 {
		t.Fatalf("max lengths %d/%d, want the node CIDR sizes", f.MaxLenIPv4, f.MaxLenIPv6)
	}
	for _, want := range []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64"), pfx("10.96.0.0/12"), pfx("192.0.2.2/32"), pfx("2001:db8::3/128")} {
		if !slices.Contains(f.Deny, want) {
			t.Errorf("deny list %v lacks %v", f.Deny, want)
		}
	}
	// Each mesh peer may originate its own Node's CIDRs only, keyed by session address.
	wantPeers := map[netip.Addr][]netip.Prefix{
		addr("192.0.2.2"):   {pfx("10.244.2.0/24")},
		addr("2001:db8::3"): {pfx("fd00:10:244:3::/64")},
	}
	if !reflect.DeepEqual(f.PeerPrefixes, wantPeers) {
		t.Fatalf("peer prefixes %v, want %v", f.PeerPrefixes, wantPeers)
	}

	// A dual-stack peer announces both families over its IPv4 session; a peer without
	// pod CIDRs yet gets an empty entry (nothing accepted), not none (cluster rules).
	nodes = append(nodes,
		cluster.Node{Name: "e", PodCIDRs: []netip.Prefix{pfx("10.244.5.0/24"), pfx("fd00:10:244:5::/64")}, Addresses: []netip.Addr{addr("192.0.2.5"), addr("2001:db8::5")}},
		cluster.Node{Name: "f", Problem: "spec.podCIDRs is empty", Addresses: []netip.Addr{addr("192.0.2.6")}},
	)
	f = importFilter(&cfg, me, nodes)
	if got := f.PeerPrefixes[addr("192.0.2.5")]; !slices.Equal(got, []netip.Prefix{pfx("10.244.5.0/24"), pfx("fd00:10:244:5::/64")}) {
		t.Errorf("dual-stack peer e: %v", got)
	}
	if _, ok := f.PeerPrefixes[addr("2001:db8::5")]; ok {
		t.Errorf("peer e keyed by its IPv6 address too, but its session runs over IPv4")
	}
	if got, ok := f.PeerPrefixes[addr("192.0.2.6")]; !ok || got == nil || len(got) != 0 {
		t.Errorf("peer f without CIDRs: %v, %v; want an empty entry", got, ok)
	}
	// The keys are exactly the mesh neighbors.
	mesh, _ := meshNeighbors(&cfg, me, nodes)
	for a := range mesh {
		if _, ok := f.PeerPrefixes[a]; !ok {
			t.Errorf("mesh neighbor %s has no origin entry", a)
		}
	}
	if len(mesh) != len(f.PeerPrefixes) {
		t.Errorf("%d origin entries for %d mesh neighbors", len(f.PeerPrefixes), len(mesh))
	}

	// The filter must be one the speaker accepts.
	r, err := bgp.New(bgp.Config{ASN: 64512, RouterID: addr("192.0.2.1"), ListenPort: -1, ImportFilter: f})
	if err != nil {
		t.Fatalf("speaker rejects the filter: %v", err)
	}
	_ = r
}

func TestKernelRoutes(t *testing.T) {
	cfg := testConfig()
	me, _ := findSelf(&cfg, testNodes())
	learned := []bgp.Route{
		{Prefix: pfx("10.244.2.0/24"), NextHops: []netip.Addr{addr("192.0.2.2"), addr("192.0.2.3")}},
		{Prefix: pfx("fd00:10:244:3::/64"), NextHops: []netip.Addr{addr("2001:db8::3")}},
		{Prefix: pfx("10.244.1.0/24"), NextHops: []netip.Addr{addr("192.0.2.9")}},   // own CIDR: never
		{Prefix: pfx("10.244.9.0/24"), NextHops: []netip.Addr{addr("192.0.2.1")}},   // via ourselves: never
		{Prefix: pfx("10.244.8.0/24"), NextHops: []netip.Addr{addr("2001:db8::8")}}, // family mismatch
	}
	got := kernelRoutes(me, learned)
	want := []routes.Route{
		{Prefix: pfx("10.244.1.0/24"), Blackhole: true},
		{Prefix: pfx("fd00:10:244:1::/64"), Blackhole: true},
		{Prefix: pfx("10.244.2.0/24"), NextHops: []routes.NextHop{{Gateway: addr("192.0.2.2")}, {Gateway: addr("192.0.2.3")}}},
		{Prefix: pfx("fd00:10:244:3::/64"), NextHops: []routes.NextHop{{Gateway: addr("2001:db8::3")}}},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i].String() {
			t.Errorf("route %d: got %v want %v", i, got[i], want[i])
		}
	}
	kept := keepStale(got[:2], []routes.Route{{Prefix: pfx("10.244.7.0/24"), NextHops: []routes.NextHop{{Gateway: addr("192.0.2.7")}}}, got[0]})
	if len(kept) != 3 || kept[2].Prefix != pfx("10.244.7.0/24") {
		t.Fatalf("keepStale: %v", kept)
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := testConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := cfg
	bad.NodeName, bad.ClusterCIDRs, bad.ASN, bad.HoldTime, bad.RouterID = "", nil, 0, time.Second, addr("2001:db8::1")
	err := bad.Validate()
	for _, flag := range []string{"--node-name", "--cluster-cidrs", "--asn", "--hold-time", "--router-id"} {
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("error %v does not name %s", err, flag)
		}
	}
}

func TestOverlaps(t *testing.T) {
	cfg := testConfig()
	nodes := testNodes()
	me, _ := findSelf(&cfg, nodes)
	if err := overlaps(me, nodes); err != nil {
		t.Fatalf("disjoint CIDRs reported: %v", err)
	}
	nodes[1].PodCIDRs = append(nodes[1].PodCIDRs, pfx("10.244.1.128/25"))
	err := overlaps(me, nodes)
	if err == nil || !strings.Contains(err.Error(), "node b") || !strings.Contains(err.Error(), "10.244.1.128/25") {
		t.Fatalf("overlap with node b not named: %v", err)
	}
}
