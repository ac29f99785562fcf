package agent

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/services"
)

// fakeServices is a Service source whose objects the test sets.
type fakeServices struct {
	mu        sync.Mutex
	synced    bool
	gen       uint64
	snap      services.Snapshot
	snapshots int // Snapshot calls: each is a new decision
}

func (f *fakeServices) Run(context.Context)      {}
func (f *fakeServices) Changed() <-chan struct{} { return nil }
func (f *fakeServices) Synced() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.synced
}
func (f *fakeServices) Generation() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen
}
func (f *fakeServices) Snapshot() services.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snapshots++
	return f.snap
}
func (f *fakeServices) set(s services.Snapshot) {
	f.mu.Lock()
	f.snap, f.synced = s, true
	f.gen++
	f.mu.Unlock()
}

// fakeSettings is a BGP configuration the test sets.
type fakeSettings struct{ s config.Settings }

func (f *fakeSettings) Run(context.Context)       {}
func (f *fakeSettings) Changed() <-chan struct{}  { return nil }
func (f *fakeSettings) Snapshot() config.Settings { return f.s }

// lbService is a LoadBalancer Service at ip, Local or Cluster, with one ready endpoint on each
// of nodes.
func lbService(name string, ip netip.Addr, local bool, nodes ...string) (services.Service, services.Endpoints) {
	s := services.Service{
		Namespace: "default", Name: name, Type: corev1.ServiceTypeLoadBalancer, Advertise: true,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")}, LoadBalancerIPs: []netip.Addr{ip}, ExternalLocal: local,
	}
	e := services.Endpoints{Namespace: "default", Service: name}
	for _, n := range nodes {
		e.Endpoints = append(e.Endpoints, services.Endpoint{NodeName: n, Ready: true, Serving: true})
	}
	return s, e
}

func TestServiceRoutes(t *testing.T) {
	nodes := meshNodes(3)
	r := newRig(t, nodes, newFakeTable(), false)
	svcs := &fakeServices{}
	r.a.services = svcs
	cfg := r.a.cfg.defaults()
	cfg.ServiceLoadBalancerIPs = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	cfg.Advertisements.LoadBalancerIPs = config.Attributes{Communities: []bgp.Community{bgp.NewCommunity(64512, 300)}, ASPathPrepend: 2}
	r.a.settings = &fakeSettings{config.Settings{Synced: true, Configuration: cfg}}
	r.a.cfg.KubeProxyMetricsAddress = DefaultKubeProxyMetricsAddress
	r.a.setKubeProxy(kubeProxyState{Mode: "iptables", key: "mode:iptables"})

	cluster1 := netip.MustParsePrefix("198.51.100.1/32")
	local2 := netip.MustParsePrefix("198.51.100.2/32")
	outside := netip.MustParsePrefix("203.0.113.9/32")
	web, webEP := lbService("web", cluster1.Addr(), false, "node-2")
	db, dbEP := lbService("db", local2.Addr(), true, "node-1")
	other, otherEP := lbService("other", outside.Addr(), false, "node-1") // not in the allow-list

	// Before the Services are listed nothing is decided, and the pod CIDRs go out as ever.
	snap := r.pass(t)
	fr := r.router()
	if snap.LastErr != nil || len(snap.ServiceRoutes) != 0 || len(fr.advertised) != 2 {
		t.Fatalf("before sync: err %v, service routes %v, advertised %v", snap.LastErr, snap.ServiceRoutes, fr.advertised)
	}

	svcs.set(services.Snapshot{Services: []services.Service{db, other, web}, Endpoints: []services.Endpoints{dbEP, otherEP, webEP}})
	snap = r.pass(t)
	for _, p := range []netip.Prefix{cluster1, local2} {
		a, ok := fr.advertised[p]
		if !ok {
			t.Fatalf("%s not advertised: %v", p, fr.advertised)
		}
		if !a.ExternalOnly || a.ASPathPrepend != 2 || !slices.Equal(a.Communities, []bgp.Community{bgp.NewCommunity(64512, 300)}) {
			t.Errorf("%s advertised with %+v: want external only, prepend 2, community 64512:300", p, a)
		}
	}
	if _, ok := fr.advertised[outside]; ok {
		t.Errorf("%s advertised, outside serviceLoadBalancerIPs", outside)
	}
	for _, p := range nodes[0].PodCIDRs {
		if a := fr.advertised[p]; a.ExternalOnly {
			t.Errorf("pod CIDR %s advertised external-only", p)
		}
	}
	if len(snap.ServiceRoutes) != 2 || snap.ServiceRoutes[0].Prefix != cluster1 || !slices.Equal(snap.ServiceRoutes[0].Services, []string{"default/web"}) {
		t.Errorf("snapshot service routes %v", snap.ServiceRoutes)
	}
	rs, _ := r.a.Routes()
	if len(rs.Services) != 2 || rs.Services[1].Prefix != "198.51.100.2/32" || rs.Services[1].Class != "loadBalancerIPs" || rs.Services[1].ASPathPrepend != 2 {
		t.Errorf("API service routes %+v", rs.Services)
	}

	// Nothing changed: no call to the speaker, no new decision.
	fr.resetCalls()
	decided := svcs.snapshots
	r.pass(t)
	if c := fr.resetCalls(); c["advertise"]+c["withdraw"] != 0 {
		t.Errorf("unchanged pass made %v", c)
	}
	if svcs.snapshots != decided {
		t.Errorf("unchanged pass decided again (%d snapshots, was %d)", svcs.snapshots, decided)
	}

	// The last local endpoint of the Local Service leaves this node: withdrawn, the
	// Cluster one stays.
	dbEP.Endpoints = []services.Endpoint{{NodeName: "node-3", Ready: true, Serving: true}}
	svcs.set(services.Snapshot{Services: []services.Service{db, other, web}, Endpoints: []services.Endpoints{dbEP, otherEP, webEP}})
	r.pass(t)
	if _, ok := fr.advertised[local2]; ok {
		t.Errorf("%s still advertised with no local endpoint", local2)
	}
	if _, ok := fr.advertised[cluster1]; !ok {
		t.Errorf("%s withdrawn", cluster1)
	}
	if c := fr.resetCalls(); c["withdraw"] != 1 || c["advertise"] != 0 {
		t.Errorf("one endpoint moving made %v, want one withdrawal", c)
	}

	// kube-proxy gone from this node: it serves no Service address, so it advertises none.
	r.a.setKubeProxy(kubeProxyState{key: "absent", Problem: "kube-proxy not found"})
	r.pass(t)
	if _, ok := fr.advertised[cluster1]; ok {
		t.Errorf("%s advertised without kube-proxy", cluster1)
	}
	for _, p := range nodes[0].PodCIDRs {
		if _, ok := fr.advertised[p]; !ok {
			t.Errorf("pod CIDR %s withdrawn with the Services", p)
		}
	}
	r.a.setKubeProxy(kubeProxyState{Mode: "nftables", key: "mode:nftables"})
	r.pass(t)
	if _, ok := fr.advertised[cluster1]; !ok {
		t.Errorf("%s not advertised again once kube-proxy is back", cluster1)
	}

	// A new speaker (identity change) gets every Service address again.
	cfg.ASN = 64600
	r.a.settings = &fakeSettings{config.Settings{Synced: true, Configuration: cfg, ConfigurationObject: &config.ObjectState{}}}
	r.pass(t)
	if len(r.routers) != 2 {
		t.Fatalf("%d speakers: want a new one for the new AS", len(r.routers))
	}
	if _, ok := r.router().advertised[cluster1]; !ok {
		t.Errorf("%s not advertised by the new speaker: %v", cluster1, r.router().advertised)
	}
}

// Each refusal is an Event once while it lasts, and again if it comes back.
func TestServiceEvents(t *testing.T) {
	rec := record.NewFakeRecorder(10)
	e := &serviceEvents{recorder: rec}
	ext := services.Refusal{Namespace: "shop", Name: "web", UID: "u1", Field: "spec.externalIPs", Message: "spec.externalIPs: 192.0.2.50 is outside ..."}
	ann := services.Refusal{Namespace: "shop", Name: "typo", UID: "u2", Field: "metadata.annotations[podroute.io/advertise]", Message: "metadata.annotations[podroute.io/advertise]: Invalid value"}
	drain := func() []string {
		var out []string
		for {
			select {
			case ev := <-rec.Events:
				out = append(out, ev)
			default:
				return out
			}
		}
	}
	e.report([]services.Refusal{ext, ann})
	got := drain()
	if !slices.Equal(got, []string{
		"Warning NotAdvertised spec.externalIPs: 192.0.2.50 is outside ...",
		"Warning InvalidAnnotation metadata.annotations[podroute.io/advertise]: Invalid value",
	}) {
		t.Errorf("events %q", got)
	}
	e.report([]services.Refusal{ext, ann})
	if got := drain(); len(got) != 0 {
		t.Errorf("said again while it lasts: %q", got)
	}
	e.report([]services.Refusal{ann})
	e.report([]services.Refusal{ext, ann})
	if got := drain(); len(got) != 1 || !strings.Contains(got[0], "192.0.2.50") {
		t.Errorf("a refusal back after clearing: %q", got)
	}
}
