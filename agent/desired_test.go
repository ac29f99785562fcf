package agent

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/labels"
	"time"

	"github.com/podroute/podroute/agentapi"
	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/config"
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
	if b.Neighbor.Families != bgp.IPv4|bgp.IPv6 {
		t.Fatalf("dual-stack cluster: peer b carries families %#x, want both", b.Neighbor.Families)
	}
	// A single-stack cluster's sessions carry its one family (Service CIDRs count too).
	cfg.ClusterCIDRs = cfg.ClusterCIDRs[:1]
	peers, _ = meshNeighbors(&cfg, me, testNodes())
	if got := peers[addr("192.0.2.2")].Neighbor.Families; got != bgp.IPv4 {
		t.Fatalf("IPv4-only cluster: peer b carries families %#x, want IPv4", got)
	}
	cfg.ServiceCIDRs = append(cfg.ServiceCIDRs, pfx("fd00:96::/108"))
	peers, _ = meshNeighbors(&cfg, me, testNodes())
	if got := peers[addr("192.0.2.2")].Neighbor.Families; got != bgp.IPv4|bgp.IPv6 {
		t.Fatalf("IPv6 Service CIDR: peer b carries families %#x, want both", got)
	}
}

func TestImportFilter(t *testing.T) {
	cfg := testConfig()
	nodes := testNodes()
	me, _ := findSelf(&cfg, nodes)
	f := filterFor(&cfg, me, nodes)
	if f.MaxLenIPv4 != 24 || f.MaxLenIPv6 != 64 {
		t.Fatalf("max lengths %d/%d, want the node CIDR sizes", f.MaxLenIPv4, f.MaxLenIPv6)
	}
	for _, want := range []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64"), pfx("10.96.0.0/12")} {
		if !slices.Contains(f.Deny, want) {
			t.Errorf("deny list %v lacks %v", f.Deny, want)
		}
	}
	// Node addresses outside the cluster CIDRs are refused by the cluster rule: listed,
	// they would change the shared part of the filter with every Node.
	for _, notWant := range []netip.Prefix{pfx("192.0.2.2/32"), pfx("2001:db8::3/128")} {
		if slices.Contains(f.Deny, notWant) {
			t.Errorf("deny list %v holds %v, outside the cluster CIDRs", f.Deny, notWant)
		}
	}
	// A node address inside a cluster CIDR is denied, with its /32.
	inside := append(testNodes(), cluster.Node{Name: "odd", PodCIDRs: []netip.Prefix{pfx("10.244.9.0/24")}, Addresses: []netip.Addr{addr("10.244.200.1")}})
	if f := filterFor(&cfg, me, inside); !slices.Contains(f.Deny, pfx("10.244.200.1/32")) {
		t.Errorf("deny list %v lacks the node address inside the cluster CIDR", f.Deny)
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
	f = filterFor(&cfg, me, nodes)
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
	got := routesFor(me, learned)
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
	bad.LeaseNamespace = "Podroute_System"
	err := bad.Validate()
	for _, flag := range []string{"--node-name", "--cluster-cidrs", "--asn", "--hold-time", "--router-id", "--lease-namespace"} {
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

// meshNeighbors and filterFor run the topology with the flags' defaults: the full mesh.
func meshNeighbors(cfg *Config, me self, nodes []cluster.Node) (map[netip.Addr]peerSpec, []string) {
	t := nodeTopology(cfg, config.Settings{Configuration: cfg.defaults()}, me, me.Node, nodes)
	return t.peers, t.problems
}

func filterFor(cfg *Config, me self, nodes []cluster.Node) bgp.ImportFilter {
	t := nodeTopology(cfg, config.Settings{Configuration: cfg.defaults()}, me, me.Node, nodes)
	return importFilter(cfg, me, nodes, t.origin)
}

func rrNodes() []cluster.Node {
	var nodes []cluster.Node
	for i := 1; i <= 6; i++ {
		n := cluster.Node{
			Name:      fmt.Sprintf("n%d", i),
			PodCIDRs:  []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)},
			Addresses: []netip.Addr{netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})},
			Labels:    map[string]string{"rack": "a"},
		}
		if i <= 2 {
			n.Labels["podroute.io/route-reflector"] = "true"
		}
		nodes = append(nodes, n)
	}
	return nodes
}

func rrSettings(cfg *Config) config.Settings {
	c := cfg.defaults()
	c.NodeToNodeMesh = false
	c.RouteReflectorNodeSelector = labels.SelectorFromSet(labels.Set{"podroute.io/route-reflector": "true"})
	c.RouteReflectorClusterID = addr("192.0.2.250")
	return config.Settings{Synced: true, Configuration: c}
}

func TestRouteReflectorTopology(t *testing.T) {
	cfg := testConfig()
	nodes := rrNodes()
	s := rrSettings(&cfg)
	sessions := 0
	for i := range nodes {
		cfg.NodeName = nodes[i].Name
		me, err := findSelf(&cfg, nodes)
		if err != nil {
			t.Fatal(err)
		}
		top := nodeTopology(&cfg, s, me, me.Node, nodes)
		sessions += len(top.peers)
		isRR := i < 2
		switch {
		case isRR:
			// A reflector peers with the other reflector (no origin rule) and takes the four
			// other nodes as clients, each limited to its own pod CIDR.
			if len(top.peers) != 5 {
				t.Fatalf("reflector %s has %d peers, want 5", me.Name, len(top.peers))
			}
			other := top.peers[nodes[1-i].Addresses[0]]
			if other.Neighbor.Kind != bgp.KindReflector || other.Neighbor.RouteReflectorClient {
				t.Errorf("reflector-reflector session %+v", other.Neighbor)
			}
			if _, restricted := top.origin[nodes[1-i].Addresses[0]]; restricted {
				t.Error("the other reflector relays every node's routes: it must not be origin-restricted")
			}
			c := top.peers[nodes[4].Addresses[0]]
			if !c.Neighbor.RouteReflectorClient || c.Neighbor.Kind != bgp.KindReflectorClient || c.Neighbor.RouteReflectorClusterID != addr("192.0.2.250") {
				t.Errorf("client session %+v", c.Neighbor)
			}
			if got := top.origin[nodes[4].Addresses[0]]; !slices.Equal(got, nodes[4].PodCIDRs) {
				t.Errorf("client origin %v, want %v", got, nodes[4].PodCIDRs)
			}
		default:
			// A client peers with the reflectors only.
			if len(top.peers) != 2 {
				t.Fatalf("client %s has %d peers, want the 2 reflectors", me.Name, len(top.peers))
			}
			for _, p := range top.peers {
				if p.Neighbor.Kind != bgp.KindReflector || p.Neighbor.RouteReflectorClient {
					t.Errorf("client's session %+v", p.Neighbor)
				}
			}
			if len(top.origin) != 0 {
				t.Errorf("a client must accept reflected routes, origin %v", top.origin)
			}
		}
	}
	// 2 reflectors x 5 + 4 clients x 2 session ends = 18, against 30 for a mesh of 6.
	if sessions != 18 {
		t.Fatalf("%d session ends, want 18", sessions)
	}

	// Mesh off and no reflector: node sessions vanish, only external peers remain.
	s.Configuration.RouteReflectorNodeSelector = labels.Nothing()
	cfg.NodeName = "n3"
	me, _ := findSelf(&cfg, nodes)
	if top := nodeTopology(&cfg, s, me, me.Node, nodes); len(top.peers) != 0 {
		t.Fatalf("mesh off without reflectors: %d node sessions", len(top.peers))
	}
}

func TestExternalPeers(t *testing.T) {
	cfg := testConfig()
	nodes := rrNodes()
	cfg.NodeName = "n3"
	me, _ := findSelf(&cfg, nodes)
	s := config.Settings{Synced: true, Configuration: cfg.defaults(), Peers: []config.Peer{
		{Name: "tor-a", Address: addr("192.0.2.254"), ASN: 65101, NodeSelector: labels.SelectorFromSet(labels.Set{"rack": "a"}), ExportPodCIDRs: true},
		{Name: "tor-b", Address: addr("192.0.2.253"), ASN: 65102, NodeSelector: labels.SelectorFromSet(labels.Set{"rack": "b"}), ExportPodCIDRs: true},
		{Name: "quiet", Address: addr("192.0.2.252"), ASN: 64512, NodeSelector: labels.Everything(), ExportPodCIDRs: false},
		{Name: "clash", Address: addr("192.0.2.4"), ASN: 65000, NodeSelector: labels.Everything(), ExportPodCIDRs: true},
	}}
	top := nodeTopology(&cfg, s, me, me.Node, nodes)
	top.addExternal(&cfg, s, me, me.Node)
	tor := top.peers[addr("192.0.2.254")]
	if tor.Peer != "tor-a" || tor.Neighbor.Kind != bgp.KindExternal || tor.Neighbor.AllowOwnAS != 1 || tor.Neighbor.NoExport || tor.Neighbor.LocalAddress != me.V4 {
		t.Fatalf("ToR of rack a: %+v", tor)
	}
	if _, ok := top.peers[addr("192.0.2.253")]; ok {
		t.Fatal("rack b's ToR selected on a rack a node")
	}
	if q := top.peers[addr("192.0.2.252")]; !q.Neighbor.NoExport || q.Neighbor.AllowOwnAS != 0 {
		t.Fatalf("iBGP peer without export: %+v", q.Neighbor)
	}
	if c := top.peers[addr("192.0.2.4")]; c.Node != "n4" || c.Neighbor.Kind != bgp.KindMesh {
		t.Fatalf("a BGPPeer at a node's address replaced the node session: %+v", c)
	}
	if len(top.problems) != 1 || !strings.Contains(top.problems[0], "BGPPeer clash") {
		t.Fatalf("problems %v: want the clash named", top.problems)
	}
	if _, restricted := top.origin[addr("192.0.2.254")]; restricted {
		t.Fatal("a ToR carries other racks' routes: it must not be origin-restricted")
	}
}

func TestOverridesAndEffective(t *testing.T) {
	cfg := testConfig()
	nodes := testNodes()
	nodes[1].Annotations = map[string]string{"podroute.io/peering-address": "198.51.100.2"}
	nodes[0].Annotations = map[string]string{"podroute.io/router-id": "10.255.0.1", "podroute.io/asn": "65001"}
	got, problems := withOverrides(nodes)
	if len(problems) != 0 || got[1].Addresses[0] != addr("198.51.100.2") {
		t.Fatalf("peering address override: %v %v", got[1].Addresses, problems)
	}
	me, err := findSelf(&cfg, got)
	if err != nil || me.RouterID != addr("10.255.0.1") || me.ASN != 65001 {
		t.Fatalf("self with overrides: %+v %v", me, err)
	}
	// The router ID: --router-id, else the annotation, else the IPv4 address (also when given
	// by --node-ip), else one derived from the name for an IPv6-only node.
	flagged := cfg
	flagged.RouterID = addr("10.255.9.9")
	if me, _ := findSelf(&flagged, got); me.RouterID != flagged.RouterID {
		t.Errorf("--router-id %s: router ID %s", flagged.RouterID, me.RouterID)
	}
	v6only := cfg
	v6only.NodeName = "c"
	got[2].Annotations = map[string]string{"podroute.io/router-id": "10.255.0.3"}
	if me, _ := findSelf(&v6only, got); me.RouterID != addr("10.255.0.3") {
		t.Errorf("IPv6-only node with the annotation: router ID %s", me.RouterID)
	}
	got[2].Annotations = map[string]string{"podroute.io/router-id": "2001:db8::3"}
	if me, err := findSelf(&v6only, got); err == nil || !strings.Contains(err.Error(), "podroute.io/router-id") {
		t.Errorf("an IPv6 router-id annotation: %+v %v, want an error naming it", me, err)
	}
	peers, _ := meshNeighbors(&cfg, me, got)
	if _, ok := peers[addr("198.51.100.2")]; !ok {
		t.Fatalf("session to node b not on its peering address: %v", peers)
	}

	s := config.Settings{Configuration: cfg.defaults()}
	s.Configuration.ASN = 65123
	s.Configuration.ClusterCIDRs = []netip.Prefix{pfx("10.0.0.0/8")}
	if e := effective(&cfg, s); e.ASN != cfg.ASN || e.ClusterCIDRs[0] != pfx("10.0.0.0/8") {
		t.Fatalf("without a BGPConfiguration object the flags' AS stays: %+v", e)
	}
	s.ConfigurationObject = &config.ObjectState{Name: "default"}
	if e := effective(&cfg, s); e.ASN != 65123 {
		t.Fatalf("the BGPConfiguration's AS must win: %d", e.ASN)
	}
}

// Without graceful restart no neighbour may carry a restart time: the speaker refuses those,
// which would leave the node with no session at all.
func TestGracefulRestartOff(t *testing.T) {
	cfg := testConfig()
	cfg.GracefulRestart, cfg.RestartTime = false, 120*time.Second
	nodes := rrNodes()
	cfg.NodeName = "n3"
	me, _ := findSelf(&cfg, nodes)
	s := config.Settings{Synced: true, Configuration: cfg.defaults(), Peers: []config.Peer{
		{Name: "tor", Address: addr("192.0.2.254"), ASN: 65101, NodeSelector: labels.Everything(), ExportPodCIDRs: true, GracefulRestartTime: 60 * time.Second},
	}}
	top := nodeTopology(&cfg, s, me, me.Node, nodes)
	top.addExternal(&cfg, s, me, me.Node)
	if len(top.peers) != len(nodes) {
		t.Fatalf("%d peers, want %d", len(top.peers), len(nodes))
	}
	for a, p := range top.peers {
		if p.Neighbor.GracefulRestart || p.Neighbor.RestartTime != 0 {
			t.Errorf("peer %s: graceful restart %v, restart time %s", a, p.Neighbor.GracefulRestart, p.Neighbor.RestartTime)
		}
		if err := p.Neighbor.Validate(); err != nil {
			t.Errorf("peer %s refused by the speaker: %v", a, err)
		}
	}
}

// Node sessions carry the BGPConfiguration's mesh BFD and BGPPeer sessions their own, each
// its own copy; none has BFD unless configured.
func TestBFDNeighbors(t *testing.T) {
	cfg := testConfig()
	nodes := rrNodes()
	cfg.NodeName = "n3"
	me, _ := findSelf(&cfg, nodes)
	torBFD := &bgp.BFDConfig{MinTx: 100 * time.Millisecond, MinRx: 100 * time.Millisecond, Multiplier: 3}
	s := config.Settings{Synced: true, Configuration: cfg.defaults(), Peers: []config.Peer{
		{Name: "tor", Address: addr("192.0.2.254"), ASN: 65101, NodeSelector: labels.Everything(), ExportPodCIDRs: true, BFD: torBFD},
		{Name: "plain", Address: addr("192.0.2.253"), ASN: 65102, NodeSelector: labels.Everything(), ExportPodCIDRs: true},
	}}
	build := func(s config.Settings) topology {
		top := nodeTopology(&cfg, s, me, me.Node, nodes)
		top.addExternal(&cfg, s, me, me.Node)
		return top
	}

	// Off by default: not on node sessions, only on the BGPPeer that asks.
	top := build(s)
	if len(top.problems) != 0 {
		t.Fatalf("problems %v", top.problems)
	}
	for a, p := range top.peers {
		switch {
		case p.Peer == "tor":
			if p.Neighbor.BFD == nil || *p.Neighbor.BFD != *torBFD || p.Neighbor.BFD == torBFD {
				t.Errorf("ToR's BFD %+v, want a copy of %+v", p.Neighbor.BFD, torBFD)
			}
		case p.Neighbor.BFD != nil:
			t.Errorf("%s (%s %s) has BFD %+v without asking", a, p.Neighbor.Kind, p.Peer, p.Neighbor.BFD)
		}
		if err := p.Neighbor.Validate(); err != nil {
			t.Errorf("%s refused by the speaker: %v", a, err)
		}
	}

	// spec.meshBFD: every node session, mesh or reflector, and no BGPPeer without its own.
	mesh := &bgp.BFDConfig{MinTx: 300 * time.Millisecond, MinRx: 300 * time.Millisecond, Multiplier: 3}
	for _, sc := range []struct {
		name string
		s    config.Settings
		kind string
	}{{"mesh", s, bgp.KindMesh}, {"reflectors", rrSettings(&cfg), bgp.KindReflector}} {
		sc.s.Peers = s.Peers
		sc.s.Configuration.MeshBFD = mesh
		top := build(sc.s)
		nodeSessions := 0
		for a, p := range top.peers {
			switch p.Peer {
			case "tor":
				if *p.Neighbor.BFD != *torBFD {
					t.Errorf("%s: the ToR's own BFD replaced by %+v", sc.name, p.Neighbor.BFD)
				}
			case "plain":
				if p.Neighbor.BFD != nil {
					t.Errorf("%s: the mesh BFD reached BGPPeer plain", sc.name)
				}
			default:
				nodeSessions++
				if p.Neighbor.Kind != sc.kind || p.Neighbor.BFD == nil || *p.Neighbor.BFD != *mesh || p.Neighbor.BFD == mesh {
					t.Errorf("%s: node session %s (%s) BFD %+v, want a copy of %+v", sc.name, a, p.Neighbor.Kind, p.Neighbor.BFD, mesh)
				}
			}
		}
		if nodeSessions == 0 {
			t.Errorf("%s: no node session", sc.name)
		}
	}

	// Timers the speaker would refuse (config refuses them first; these Settings skip it)
	// cost BFD, never the session, and are reported.
	bad := s
	bad.Configuration.MeshBFD = &bgp.BFDConfig{MinTx: time.Millisecond, MinRx: 100 * time.Millisecond, Multiplier: 3}
	bad.Peers = []config.Peer{{Name: "tor", Address: addr("192.0.2.254"), ASN: 65101, NodeSelector: labels.Everything(),
		TTLSecurityHops: 2, BFD: torBFD}}
	top = build(bad)
	if len(top.peers) != len(nodes) {
		t.Fatalf("%d sessions, want %d: a bad BFD cost a session", len(top.peers), len(nodes))
	}
	for a, p := range top.peers {
		if p.Neighbor.BFD != nil {
			t.Errorf("%s kept the bad BFD %+v", a, p.Neighbor.BFD)
		}
		if err := p.Neighbor.Validate(); err != nil {
			t.Errorf("%s refused by the speaker: %v", a, err)
		}
	}
	joined := strings.Join(top.problems, "\n")
	if len(top.problems) != len(nodes) || !strings.Contains(joined, "BGPPeer tor: BFD off for 192.0.2.254") ||
		!strings.Contains(joined, "Neighbor.BFD") || !strings.Contains(joined, "node n1: BFD off for 192.0.2.1") {
		t.Errorf("problems %q: want every session named", top.problems)
	}
}

// bfdRouter reports BFD up on every session that runs it, except at down (down after two
// flaps).
type bfdRouter struct {
	*fakeRouter
	down netip.Addr
}

func (r *bfdRouter) Sessions(ctx context.Context) ([]bgp.PeerState, error) {
	return r.Neighbors(ctx, false)
}

func (r *bfdRouter) Neighbors(ctx context.Context, advertised bool) ([]bgp.PeerState, error) {
	states, err := r.fakeRouter.Neighbors(ctx, advertised)
	for i := range states {
		switch {
		case states[i].BFD == nil:
		case states[i].Address == r.down:
			states[i].BFDState, states[i].BFDFlaps = bgp.BFDStateDown, 2
		default:
			states[i].BFDState = bgp.BFDStateUp
		}
	}
	return states, err
}

// newBFDRig is a rig of three mesh nodes on BFD 300 ms x 3 and a ToR peer (with bfd, or
// nil), whose speakers report BFD down towards the third node.
func newBFDRig(t *testing.T, torBFD *bgp.BFDConfig) (r *rig, nodes []cluster.Node, tor netip.Addr, c config.Configuration) {
	nodes = meshNodes(3)
	r = newRig(t, nodes, newFakeTable(), false)
	tor = addr("198.51.100.1")
	r.a.speaker.newRouter = func(c bgp.Config) (bgp.Router, error) {
		fr := newFakeRouter(c)
		r.routers = append(r.routers, fr)
		return &bfdRouter{fakeRouter: fr, down: nodes[2].Addresses[0]}, nil
	}
	c = r.a.cfg.defaults()
	c.MeshBFD = &bgp.BFDConfig{MinTx: 300 * time.Millisecond, MinRx: 300 * time.Millisecond, Multiplier: 3}
	r.a.settings = &fakeSettings{config.Settings{Synced: true, Configuration: c, Peers: []config.Peer{
		{Name: "tor", Address: tor, ASN: 65101, NodeSelector: labels.Everything(), ExportPodCIDRs: true, BFD: torBFD},
	}}}
	return r, nodes, tor, c
}

// The agent hands the speaker the BFD timers of the settings and shows each session's BFD
// state through its API.
func TestBFDThroughThePass(t *testing.T) {
	r, nodes, tor, c := newBFDRig(t, &bgp.BFDConfig{MinTx: 100 * time.Millisecond, MinRx: 100 * time.Millisecond, Multiplier: 5})
	if snap := r.pass(t); snap.LastErr != nil {
		t.Fatalf("pass: %v", snap.LastErr)
	}
	fr := r.router()
	if len(fr.neighbors) != 3 {
		t.Fatalf("neighbours %v", fr.neighbors)
	}
	if b := fr.neighbors[tor].BFD; b == nil || b.MinTx != 100*time.Millisecond || b.Multiplier != 5 {
		t.Errorf("ToR BFD %+v", b)
	}
	for _, n := range nodes[1:] {
		if b := fr.neighbors[n.Addresses[0]].BFD; b == nil || *b != *c.MeshBFD {
			t.Errorf("node %s BFD %+v, want %+v", n.Name, b, c.MeshBFD)
		}
	}

	ns, err := r.a.Neighbors(false)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, n := range ns {
		got[n.Address] = n.BFD
	}
	want := map[string]string{tor.String(): "up", nodes[1].Addresses[0].String(): "up", nodes[2].Addresses[0].String(): "down"}
	if !maps.Equal(got, want) {
		t.Errorf("API BFD states %v, want %v", got, want)
	}

	// Turning the mesh BFD off reaches the speaker as an update of the node sessions.
	c.MeshBFD = nil
	r.a.settings = &fakeSettings{config.Settings{Synced: true, Configuration: c}}
	r.pass(t)
	for a, n := range fr.neighbors {
		if n.BFD != nil {
			t.Errorf("%s still has BFD %+v", a, n.BFD)
		}
	}
	if ns, _ = r.a.Neighbors(false); slices.ContainsFunc(ns, func(n agentapi.Neighbor) bool { return n.BFD != "" }) {
		t.Errorf("API shows BFD on sessions without it: %+v", ns)
	}
}
