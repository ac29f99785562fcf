package config

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/cluster"
)

func ptr[T any](v T) *T { return &v }

func validPeer() *BGPPeer {
	return &BGPPeer{
		ObjectMeta: metav1.ObjectMeta{Name: "tor-a", Generation: 1},
		Spec: BGPPeerSpec{
			PeerAddress:         "192.0.2.1",
			PeerASN:             65001,
			NodeSelector:        &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "a"}},
			HoldTime:            "9s",
			KeepaliveTime:       "3s",
			GracefulRestartTime: "1m",
			EBGPMultihop:        ptr[int64](2),
			Port:                ptr[int64](1790),
		},
	}
}

func TestPeerParse(t *testing.T) {
	cfg := DefaultConfiguration()
	p, errs := validPeer().Parse(cfg)
	if len(errs) != 0 {
		t.Fatalf("valid peer: %v", errs)
	}
	want := Peer{Name: "tor-a", Address: netip.MustParseAddr("192.0.2.1"), ASN: 65001, Port: 1790,
		HoldTime: 9 * time.Second, KeepaliveTime: 3 * time.Second, GracefulRestartTime: time.Minute, EBGPMultihopTTL: 2, ExportPodCIDRs: true}
	if p.Name != want.Name || p.Address != want.Address || p.ASN != want.ASN || p.Port != want.Port || p.HoldTime != want.HoldTime ||
		p.KeepaliveTime != want.KeepaliveTime || p.GracefulRestartTime != want.GracefulRestartTime || p.EBGPMultihopTTL != want.EBGPMultihopTTL ||
		p.ExportPodCIDRs != want.ExportPodCIDRs {
		t.Fatalf("parsed %+v, want %+v", p, want)
	}
	if p.NodeSelector.String() != "rack=a" {
		t.Errorf("selector %q", p.NodeSelector)
	}
	// Defaults: nil selector = every node, port 179, cluster export setting.
	bare := &BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: "x"}, Spec: BGPPeerSpec{PeerAddress: "2001:db8::1", PeerASN: 64512}}
	cfg.ExportPodCIDRs = false
	p, errs = bare.Parse(cfg)
	if len(errs) != 0 || !p.NodeSelector.Empty() || p.Port != 179 || p.ExportPodCIDRs {
		t.Fatalf("bare peer: %+v %v", p, errs)
	}
	bare.Spec.ExportPodCIDRs = ptr(true)
	if p, _ = bare.Parse(cfg); !p.ExportPodCIDRs {
		t.Errorf("spec.exportPodCIDRs does not override the cluster setting")
	}
}

func TestPeerValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*BGPPeerSpec)
		want   string
	}{
		{"asn0", func(s *BGPPeerSpec) { s.PeerASN = 0 }, "spec.peerASN: Invalid value: 0: must be 1..4294967295"},
		{"asnBig", func(s *BGPPeerSpec) { s.PeerASN = 1 << 32 }, "spec.peerASN: Invalid value: 4294967296: must be 1..4294967295"},
		{"asTrans", func(s *BGPPeerSpec) { s.PeerASN = 23456 }, "spec.peerASN: Invalid value: 23456: 23456 (AS_TRANS) is reserved"},
		{"noAddr", func(s *BGPPeerSpec) { s.PeerAddress = "" }, "spec.peerAddress: Required value"},
		{"badAddr", func(s *BGPPeerSpec) { s.PeerAddress = "192.0.2.300" }, `spec.peerAddress: Invalid value: "192.0.2.300": must be an IPv4 or IPv6 address`},
		{"linkLocal", func(s *BGPPeerSpec) { s.PeerAddress = "fe80::1" }, "link-local peers are not supported"},
		{"multicast", func(s *BGPPeerSpec) { s.PeerAddress = "239.0.0.1" }, "must be a unicast address"},
		{"mapped", func(s *BGPPeerSpec) { s.PeerAddress = "::ffff:192.0.2.1" }, "IPv4-mapped"},
		{"selector", func(s *BGPPeerSpec) {
			s.NodeSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "rack", Operator: "In"}}}
		}, "spec.nodeSelector: Invalid value"},
		{"hold", func(s *BGPPeerSpec) { s.HoldTime = "2s" }, `spec.holdTime: Invalid value: "2s": must be between 3s and 65535s`},
		{"holdFraction", func(s *BGPPeerSpec) { s.HoldTime = "9.5s" }, "spec.holdTime: Invalid value: \"9.5s\": must be a whole number of seconds"},
		{"holdSyntax", func(s *BGPPeerSpec) { s.HoldTime = "nine" }, "spec.holdTime: Invalid value: \"nine\": must be a duration"},
		{"keepalive", func(s *BGPPeerSpec) { s.KeepaliveTime = "9s" }, `spec.keepaliveTime: Invalid value: "9s": must be shorter than the hold time 9s`},
		{"keepaliveDefaultHold", func(s *BGPPeerSpec) { s.HoldTime = ""; s.KeepaliveTime = "90s" }, "must be shorter than the hold time 1m30s"},
		{"restart", func(s *BGPPeerSpec) { s.GracefulRestartTime = "4096s" }, "spec.gracefulRestartTime: Invalid value: \"4096s\": must be between 1s and 4095s"},
		{"ttl", func(s *BGPPeerSpec) { s.EBGPMultihop = ptr[int64](256) }, "spec.ebgpMultihop: Invalid value: 256: must be 1..255"},
		{"exclusive", func(s *BGPPeerSpec) { s.TTLSecurity = ptr[int64](1) }, "spec.ttlSecurity: Forbidden: ebgpMultihop and ttlSecurity are mutually exclusive"},
		{"port", func(s *BGPPeerSpec) { s.Port = ptr[int64](0) }, "spec.port: Invalid value: 0: must be 1..65535"},
		{"secretRef", func(s *BGPPeerSpec) { s.PasswordSecretRef = &SecretKeyRef{Namespace: "kube-system", Name: "tor"} }, "spec.passwordSecretRef.key: Required value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := validPeer()
			tc.mutate(&p.Spec)
			errs := p.Validate()
			if !strings.Contains(errs.ToAggregate().Error(), tc.want) {
				t.Fatalf("errors %v, want one containing %q", errs, tc.want)
			}
		})
	}
}

func TestPeerParseAgainstConfiguration(t *testing.T) {
	cfg := DefaultConfiguration()
	p := validPeer()
	p.Spec.RouteReflectorClient = true
	_, errs := p.Parse(cfg)
	if !strings.Contains(errs.ToAggregate().Error(), "spec.routeReflectorClient: Invalid value: true: only iBGP peers") {
		t.Errorf("eBGP route-reflector client: %v", errs)
	}
	p = validPeer()
	p.Spec.PeerASN = DefaultASN
	_, errs = p.Parse(cfg)
	if !strings.Contains(errs.ToAggregate().Error(), "spec.ebgpMultihop: Invalid value: 2: only applies to eBGP peers") {
		t.Errorf("iBGP multihop: %v", errs)
	}
	p.Spec.EBGPMultihop = nil
	p.Spec.RouteReflectorClient = true
	cfg.RouteReflectorClusterID = netip.MustParseAddr("10.0.0.1")
	peer, errs := p.Parse(cfg)
	if len(errs) != 0 {
		t.Fatalf("iBGP client: %v", errs)
	}
	if peer.RouteReflectorClusterID != cfg.RouteReflectorClusterID || !peer.RouteReflectorClient {
		t.Errorf("client peer %+v", peer)
	}
}

func TestConfigurationParse(t *testing.T) {
	defaults := DefaultConfiguration()
	defaults.ASN = 65000
	defaults.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}

	// Absent fields keep the defaults (flags).
	cfg, errs := (&BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"}}).Parse(defaults)
	if len(errs) != 0 || cfg.ASN != 65000 || !cfg.NodeToNodeMesh || !cfg.ExportPodCIDRs || len(cfg.ClusterCIDRs) != 1 ||
		cfg.IsRouteReflector(map[string]string{"a": "b"}) {
		t.Fatalf("empty spec: %+v %v", cfg, errs)
	}

	c := &BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: BGPConfigurationSpec{
		ASNumber:                   ptr[int64](4200000000),
		NodeToNodeMesh:             ptr(false),
		RouteReflectorNodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"podroute.io/rr": "true"}},
		RouteReflectorClusterID:    "10.0.0.1",
		Communities:                []string{"64512:100", "0:65535"},
		ExportPodCIDRs:             ptr(false),
		ClusterCIDRs:               []string{"10.8.0.0/16", "fd00:8::/56"},
		ServiceCIDRs:               []string{"10.96.0.0/12"},
	}}
	cfg, errs = c.Parse(defaults)
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	if cfg.ASN != 4200000000 || cfg.NodeToNodeMesh || cfg.ExportPodCIDRs || cfg.RouteReflectorClusterID.String() != "10.0.0.1" ||
		!slices.Equal(cfg.Communities, []bgp.Community{bgp.NewCommunity(64512, 100), bgp.NewCommunity(0, 65535)}) ||
		len(cfg.ClusterCIDRs) != 2 || len(cfg.ServiceCIDRs) != 1 {
		t.Fatalf("parsed %+v", cfg)
	}
	if !cfg.IsRouteReflector(map[string]string{"podroute.io/rr": "true"}) || cfg.IsRouteReflector(nil) {
		t.Errorf("route reflector selector %v", cfg.RouteReflectorNodeSelector)
	}

	// Invalid fields are named and fall back to the defaults; valid ones still apply.
	c.Name = "other"
	c.Spec.ASNumber = ptr[int64](0)
	c.Spec.Communities = []string{"64512:100", "70000:1"}
	c.Spec.ClusterCIDRs = []string{"10.8.0.1/16"}
	c.Spec.RouteReflectorClusterID = "2001:db8::1"
	cfg, errs = c.Parse(defaults)
	got := errs.ToAggregate().Error()
	for _, want := range []string{
		`metadata.name: Invalid value: "other": must be "default"`,
		"spec.asNumber: Invalid value: 0: must be 1..4294967295",
		`spec.communities[1]: Invalid value: "70000:1"`,
		`spec.clusterCIDRs[0]: Invalid value: "10.8.0.1/16": has host bits set (did you mean 10.8.0.0/16?)`,
		`spec.routeReflectorClusterID: Invalid value: "2001:db8::1"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("errors %q lack %q", got, want)
		}
	}
	if cfg.ASN != 65000 || len(cfg.Communities) != 0 || cfg.ClusterCIDRs[0].String() != "10.244.0.0/16" || cfg.NodeToNodeMesh {
		t.Errorf("fallbacks: %+v", cfg)
	}

	// A Service list over pod addresses is refused whole: a /32 from it would draw a pod's
	// traffic at the rack to the nodes advertising the Service.
	pods := &BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: BGPConfigurationSpec{
		ClusterCIDRs:           []string{"10.244.0.0/16"},
		ServiceLoadBalancerIPs: []string{"203.0.113.0/24", "10.244.7.0/24"},
		ServiceExternalIPs:     []string{"10.0.0.0/8"},
		ServiceClusterIPs:      []string{"10.96.0.0/12"},
	}}
	cfg, errs = pods.Parse(defaults)
	got = errs.ToAggregate().Error()
	for _, want := range []string{
		`spec.serviceLoadBalancerIPs[1]: Invalid value: "10.244.7.0/24": overlaps the cluster's pod addresses 10.244.0.0/16 (clusterCIDRs)`,
		`spec.serviceExternalIPs[0]: Invalid value: "10.0.0.0/8": overlaps the cluster's pod addresses 10.244.0.0/16`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("errors %q lack %q", got, want)
		}
	}
	if len(errs) != 2 || len(cfg.ServiceLoadBalancerIPs) != 0 || len(cfg.ServiceExternalIPs) != 0 || len(cfg.ServiceClusterIPs) != 1 {
		t.Errorf("pod overlap: %d errors, lists %+v %+v %+v", len(errs), cfg.ServiceLoadBalancerIPs, cfg.ServiceExternalIPs, cfg.ServiceClusterIPs)
	}
}

func TestOverrides(t *testing.T) {
	n := cluster.Node{Name: "n1",
		Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("2001:db8::11")},
		Annotations: map[string]string{
			AnnotationASN:            "65010",
			AnnotationRouterID:       "10.255.0.1",
			AnnotationPeeringAddress: "2001:db8:1::1, 198.51.100.1",
		},
		Labels: map[string]string{AnnotationASN: "65099"},
	}
	o, errs := OverridesForNode(n)
	if len(errs) != 0 || o.ASN != 65010 || o.RouterID.String() != "10.255.0.1" ||
		!slices.Equal(o.PeeringAddresses, []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8:1::1")}) {
		t.Fatalf("overrides %+v %v", o, errs)
	}
	if asn, err := NodeASN(n, 64512); asn != 65010 || err != nil {
		t.Errorf("NodeASN %d %v (the annotation wins over the label)", asn, err)
	}
	if a, ok, err := NodePeeringAddress(n, true); a.String() != "2001:db8:1::1" || !ok || err != nil {
		t.Errorf("peering v6 %v %v %v", a, ok, err)
	}

	// A label works where the value fits one; without overrides the node's addresses apply.
	n.Annotations = nil
	if asn, err := NodeASN(n, 64512); asn != 65099 || err != nil {
		t.Errorf("NodeASN from label %d %v", asn, err)
	}
	if o, errs := OverridesForNode(n); o.RouterID.IsValid() || len(errs) != 0 {
		t.Errorf("router ID override %v %v without the annotation", o.RouterID, errs)
	}
	if a, ok, _ := NodePeeringAddress(n, true); a.String() != "2001:db8::11" || !ok {
		t.Errorf("peering v6 fallback %v", a)
	}

	// Bad values are named and ignored.
	n.Annotations = map[string]string{AnnotationASN: "0", AnnotationRouterID: "2001:db8::1", AnnotationPeeringAddress: "10.0.0.1,10.0.0.2"}
	o, errs = OverridesForNode(n)
	got := errs.ToAggregate().Error()
	for _, want := range []string{
		`metadata.annotations[podroute.io/asn]: Invalid value: "0"`,
		`metadata.annotations[podroute.io/router-id]: Invalid value: "2001:db8::1"`,
		`metadata.annotations[podroute.io/peering-address]: Invalid value: "10.0.0.1,10.0.0.2": at most one address per family`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("errors %q lack %q", got, want)
		}
	}
	if o.ASN != 0 || o.RouterID.IsValid() || o.PeeringAddresses != nil {
		t.Errorf("bad values used: %+v", o)
	}
	if asn, err := NodeASN(n, 64512); asn != 64512 || err == nil {
		t.Errorf("NodeASN with a bad annotation: %d %v", asn, err)
	}
}

func TestCheckNodes(t *testing.T) {
	cfg := DefaultConfiguration()
	mk := func(name, addr string, sel map[string]string) Peer {
		bp := &BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: BGPPeerSpec{PeerAddress: addr, PeerASN: 65001}}
		if sel != nil {
			bp.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: sel}
		}
		p, errs := bp.Parse(cfg)
		if len(errs) != 0 {
			t.Fatal(errs)
		}
		return p
	}
	nodes := []cluster.Node{
		{Name: "b1", Labels: map[string]string{"rack": "b"}, Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.21")}},
		{Name: "a1", Labels: map[string]string{"rack": "a"}, Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.11")}},
	}
	s := Settings{Configuration: cfg, Peers: []Peer{
		mk("all", "198.51.100.1", nil),
		mk("is-node", "192.0.2.21", nil),
		mk("tor-a", "10.0.0.1", map[string]string{"rack": "a"}),
		mk("tor-a-dup", "10.0.0.1", map[string]string{"rack": "a"}),
		mk("tor-b", "10.0.0.1", map[string]string{"rack": "b"}), // same address, other rack: fine
		mk("tor-c", "10.0.0.3", map[string]string{"rack": "c"}),
	}}
	checkNodes(&s, nodes)
	var names []string
	for _, p := range s.Peers {
		names = append(names, p.Name+"="+strings.Join(p.Nodes, ","))
	}
	if want := []string{"all=a1,b1", "tor-a=a1", "tor-b=b1", "tor-c="}; !slices.Equal(names, want) {
		t.Errorf("valid peers %v, want %v", names, want)
	}
	if len(s.InvalidPeers) != 2 {
		t.Fatalf("invalid peers %+v", s.InvalidPeers)
	}
	for _, ip := range s.InvalidPeers {
		msg := ip.Errors.ToAggregate().Error()
		switch ip.Name {
		case "is-node":
			if !strings.Contains(msg, `spec.peerAddress: Invalid value: "192.0.2.21": is the address of node b1`) {
				t.Errorf("is-node: %s", msg)
			}
		case "tor-a-dup":
			if !strings.Contains(msg, "spec.peerAddress") || !strings.Contains(msg, "BGPPeer tor-a already peers with this address from node a1") {
				t.Errorf("tor-a-dup: %s", msg)
			}
		default:
			t.Errorf("unexpected invalid peer %s: %s", ip.Name, msg)
		}
	}
	if got := s.PeersForNode(nodes[1]); len(got) != 2 || got[0].Name != "all" || got[1].Name != "tor-a" {
		t.Errorf("PeersForNode(a1) = %v", got)
	}
}

func TestParseCommunity(t *testing.T) {
	for in, ok := range map[string]bool{"1:2": true, "65535:65535": true, "0:0": true, "65536:1": false, "1": false, "a:b": false, "1:2:3": false, "-1:2": false} {
		if _, err := ParseCommunity(in); (err == nil) != ok {
			t.Errorf("ParseCommunity(%q) err=%v, want ok=%v", in, err, ok)
		}
	}
}

func TestConfigurationParseServices(t *testing.T) {
	defaults := DefaultConfiguration()
	c := &BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: BGPConfigurationSpec{
		ServiceClusterIPs:      []string{"10.96.0.0/12", "fd00:10:96::/108"},
		ServiceExternalIPs:     []string{"198.51.100.0/24"},
		ServiceLoadBalancerIPs: []string{"203.0.113.0/24", "2001:db8:1b::/64"},
		Advertisements: &AdvertisementsSpec{
			PodCIDRs:        &AdvertisementSpec{Communities: []string{"64512:100"}},
			ClusterIPs:      &AdvertisementSpec{Communities: []string{"64512:200"}},
			ExternalIPs:     &AdvertisementSpec{Communities: []string{"64512:300", "65535:65281"}, ASPathPrepend: ptr[int64](1)},
			LoadBalancerIPs: &AdvertisementSpec{Communities: []string{"64512:400"}, ASPathPrepend: ptr[int64](3)},
		},
	}}
	cfg, errs := c.Parse(defaults)
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	if !slices.Equal(cfg.ServiceClusterIPs, pfx("10.96.0.0/12", "fd00:10:96::/108")) ||
		!slices.Equal(cfg.ServiceExternalIPs, pfx("198.51.100.0/24")) ||
		!slices.Equal(cfg.ServiceLoadBalancerIPs, pfx("203.0.113.0/24", "2001:db8:1b::/64")) {
		t.Errorf("allow-lists %v %v %v", cfg.ServiceClusterIPs, cfg.ServiceExternalIPs, cfg.ServiceLoadBalancerIPs)
	}
	c1 := func(a, v uint16) []bgp.Community { return []bgp.Community{bgp.NewCommunity(a, v)} }
	if got := cfg.Advertisements.For(ClassPodCIDR); !slices.Equal(got.Communities, c1(64512, 100)) || got.ASPathPrepend != 0 {
		t.Errorf("pod CIDRs %+v", got)
	}
	// spec.advertisements.podCIDRs.communities is what the agent reads through Communities too.
	if !slices.Equal(cfg.Communities, c1(64512, 100)) {
		t.Errorf("Communities %v, want the pod CIDR class's", cfg.Communities)
	}
	if got := cfg.Advertisements.For(ClassClusterIP); !slices.Equal(got.Communities, c1(64512, 200)) {
		t.Errorf("cluster IPs %+v", got)
	}
	if got := cfg.Advertisements.For(ClassExternalIP); len(got.Communities) != 2 || got.ASPathPrepend != 1 {
		t.Errorf("external IPs %+v", got)
	}
	if got := cfg.Advertisements.For(ClassLoadBalancerIP); !slices.Equal(got.Communities, c1(64512, 400)) || got.ASPathPrepend != 3 {
		t.Errorf("LoadBalancer IPs %+v", got)
	}
	if got := cfg.Advertisements.For("other"); got.Communities != nil || got.ASPathPrepend != 0 {
		t.Errorf("unknown class %+v", got)
	}

	// The older spec.communities still sets the pod CIDRs' communities.
	old := &BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: BGPConfigurationSpec{Communities: []string{"64512:7"}}}
	cfg, errs = old.Parse(defaults)
	if len(errs) != 0 || !slices.Equal(cfg.Advertisements.PodCIDRs.Communities, c1(64512, 7)) || !slices.Equal(cfg.Communities, c1(64512, 7)) {
		t.Errorf("spec.communities: %+v %v", cfg.Advertisements, errs)
	}
	if len(cfg.ServiceClusterIPs)+len(cfg.ServiceExternalIPs)+len(cfg.ServiceLoadBalancerIPs) != 0 {
		t.Errorf("Service advertisement on by default: %+v", cfg)
	}

	// Errors name the field; a bad list advertises nothing rather than part of it.
	bad := &BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: BGPConfigurationSpec{
		Communities:            []string{"64512:7"},
		ServiceClusterIPs:      []string{"10.96.0.0/12", "10.97.0.1/16"},
		ServiceExternalIPs:     []string{"x"},
		ServiceLoadBalancerIPs: []string{"203.0.113.0/24"},
		Advertisements: &AdvertisementsSpec{
			PodCIDRs:        &AdvertisementSpec{Communities: []string{"64512:8"}},
			ExternalIPs:     &AdvertisementSpec{Communities: []string{"64512:300", "1:2:3"}},
			LoadBalancerIPs: &AdvertisementSpec{ASPathPrepend: ptr[int64](11)},
			ClusterIPs:      &AdvertisementSpec{ASPathPrepend: ptr[int64](-1)},
		},
	}}
	cfg, errs = bad.Parse(defaults)
	got := errs.ToAggregate().Error()
	for _, want := range []string{
		`spec.serviceClusterIPs[1]: Invalid value: "10.97.0.1/16": has host bits set (did you mean 10.97.0.0/16?)`,
		`spec.serviceExternalIPs[0]: Invalid value: "x": must be a CIDR`,
		`spec.advertisements.podCIDRs.communities: Forbidden: spec.communities already sets the pod CIDRs' communities`,
		`spec.advertisements.externalIPs.communities[1]: Invalid value: "1:2:3"`,
		`spec.advertisements.loadBalancerIPs.asPathPrepend: Invalid value: 11: must be 0..10`,
		`spec.advertisements.clusterIPs.asPathPrepend: Invalid value: -1: must be 0..10`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("errors %q lack %q", got, want)
		}
	}
	if len(cfg.ServiceClusterIPs) != 0 || len(cfg.ServiceExternalIPs) != 0 || len(cfg.ServiceLoadBalancerIPs) != 1 ||
		!slices.Equal(cfg.Communities, c1(64512, 7)) || len(cfg.Advertisements.ExternalIPs.Communities) != 0 ||
		cfg.Advertisements.LoadBalancerIPs.ASPathPrepend != 0 {
		t.Errorf("fallbacks: %+v", cfg)
	}
}

// spec.bfd is off unless set; a bad one drops BFD, naming the field, and leaves the peer
// valid so its session still runs.
func TestPeerBFD(t *testing.T) {
	cfg := DefaultConfiguration()
	p := validPeer()
	p.Spec.EBGPMultihop = nil
	if peer, errs := p.Parse(cfg); len(errs) != 0 || peer.BFD != nil || peer.BFDErrors != nil {
		t.Fatalf("without spec.bfd: BFD %+v, errors %v %v", peer.BFD, errs, peer.BFDErrors)
	}

	p.Spec.BFD = &BFDSpec{MinTx: "100ms", MinRx: "250ms", Multiplier: ptr[int64](5)}
	peer, errs := p.Parse(cfg)
	if want := (bgp.BFDConfig{MinTx: 100 * time.Millisecond, MinRx: 250 * time.Millisecond, Multiplier: 5}); len(errs) != 0 || len(peer.BFDErrors) != 0 || peer.BFD == nil || *peer.BFD != want {
		t.Fatalf("BFD %+v, want %+v (errors %v %v)", peer.BFD, want, errs, peer.BFDErrors)
	}
	// What the speaker gets must be what it accepts.
	if err := (bgp.Neighbor{Address: peer.Address, ASN: peer.ASN, BFD: peer.BFD}).Validate(); err != nil {
		t.Fatalf("the speaker refuses the parsed timers: %v", err)
	}
	p.Spec.BFD = &BFDSpec{}
	if peer, _ = p.Parse(cfg); peer.BFD == nil || *peer.BFD != (bgp.BFDConfig{MinTx: DefaultBFDInterval, MinRx: DefaultBFDInterval, Multiplier: DefaultBFDMultiplier}) {
		t.Fatalf("bfd: {} gives %+v, want the defaults", peer.BFD)
	}

	for _, tc := range []struct {
		name   string
		mutate func(*BGPPeerSpec)
		want   string
	}{
		{"tooFast", func(s *BGPPeerSpec) { s.BFD.MinTx = "5ms" }, `spec.bfd.minTx: Invalid value: "5ms": must be at least 100ms`},
		{"belowFloor", func(s *BGPPeerSpec) { s.BFD.MinRx = "99ms" }, `spec.bfd.minRx: Invalid value: "99ms": must be at least 100ms`},
		{"tooSlow", func(s *BGPPeerSpec) { s.BFD.MinRx = "2h" }, `spec.bfd.minRx: Invalid value: "2h": must be at most 1h11m34.967295s`},
		{"syntax", func(s *BGPPeerSpec) { s.BFD.MinTx = "100" }, `spec.bfd.minTx: Invalid value: "100": must be a duration such as "300ms"`},
		{"nanoseconds", func(s *BGPPeerSpec) { s.BFD.MinTx = "100000001ns" }, "spec.bfd.minTx: Invalid value: \"100000001ns\": must be a whole number of microseconds"},
		{"multiplier0", func(s *BGPPeerSpec) { s.BFD.Multiplier = ptr[int64](0) }, "spec.bfd.multiplier: Invalid value: 0: must be 1..255"},
		{"multiplier256", func(s *BGPPeerSpec) { s.BFD.Multiplier = ptr[int64](256) }, "spec.bfd.multiplier: Invalid value: 256: must be 1..255"},
		{"multihop", func(s *BGPPeerSpec) { s.EBGPMultihop = ptr[int64](2) }, "spec.bfd: Forbidden: BFD is single-hop only (RFC 5881): not with spec.ebgpMultihop"},
		{"gtsm", func(s *BGPPeerSpec) { s.TTLSecurity = ptr[int64](2) }, "spec.bfd: Forbidden: BFD is single-hop only (RFC 5881): not with spec.ttlSecurity above 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := validPeer()
			p.Spec.EBGPMultihop = nil
			p.Spec.BFD = &BFDSpec{MinTx: "100ms", MinRx: "100ms", Multiplier: ptr[int64](3)}
			tc.mutate(&p.Spec)
			peer, errs := p.Parse(cfg)
			if len(errs) != 0 {
				t.Fatalf("a bad spec.bfd made the peer invalid: %v", errs)
			}
			if peer.BFD != nil {
				t.Errorf("BFD %+v kept", peer.BFD)
			}
			if !strings.Contains(peer.BFDErrors.ToAggregate().Error(), tc.want) {
				t.Errorf("BFD errors %v, want one containing %q", peer.BFDErrors, tc.want)
			}
			if !strings.Contains(p.Validate().ToAggregate().Error(), tc.want) {
				t.Errorf("Validate %v lacks %q", p.Validate(), tc.want)
			}
		})
	}
	// GTSM with one hop is a directly connected peer: BFD is fine.
	p = validPeer()
	p.Spec.EBGPMultihop, p.Spec.TTLSecurity = nil, ptr[int64](1)
	p.Spec.BFD = &BFDSpec{}
	if peer, _ := p.Parse(cfg); peer.BFD == nil || peer.BFDErrors != nil {
		t.Errorf("ttlSecurity 1: BFD %+v, errors %v", peer.BFD, peer.BFDErrors)
	}
}

// spec.meshBFD is off unless set; a bad one is named and leaves the default (off).
func TestConfigurationMeshBFD(t *testing.T) {
	c := &BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if cfg, _ := c.Parse(DefaultConfiguration()); cfg.MeshBFD != nil {
		t.Fatalf("mesh BFD %+v without spec.meshBFD", cfg.MeshBFD)
	}
	c.Spec.MeshBFD = &BFDSpec{MinTx: "200ms", Multiplier: ptr[int64](4)}
	cfg, errs := c.Parse(DefaultConfiguration())
	if want := (bgp.BFDConfig{MinTx: 200 * time.Millisecond, MinRx: DefaultBFDInterval, Multiplier: 4}); len(errs) != 0 || cfg.MeshBFD == nil || *cfg.MeshBFD != want {
		t.Fatalf("mesh BFD %+v, want %+v (%v)", cfg.MeshBFD, want, errs)
	}
	c.Spec.MeshBFD.MinRx = "10ms"
	c.Spec.NodeToNodeMesh = ptr(false)
	cfg, errs = c.Parse(DefaultConfiguration())
	if got := errs.ToAggregate().Error(); len(errs) != 1 || !strings.Contains(got, `spec.meshBFD.minRx: Invalid value: "10ms": must be at least 100ms`) {
		t.Errorf("errors %v", errs)
	}
	if cfg.MeshBFD != nil || cfg.NodeToNodeMesh {
		t.Errorf("a bad spec.meshBFD must leave BFD off and the other fields applied: %+v", cfg)
	}
}
