package services

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/test/kube"
)

var eventually = kube.Eventually

func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

func TestWatcherAgainstAPIServer(t *testing.T) {
	c := kube.Start(t, kube.Options{ServiceCIDR: "10.96.0.0/16,fd00:10:96::/108"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := c.Client

	w := NewWatcher(cs, kube.TestLogger(t, slog.LevelInfo, ""))
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go w.Run(wctx)
	if !w.WaitForSync(ctx) || !w.Synced() {
		t.Fatal("not synced")
	}
	// The apiserver's own "kubernetes" Service is there from the start.
	if s := w.Snapshot(); !slices.ContainsFunc(s.Services, func(s Service) bool { return s.Key() == "default/kubernetes" }) {
		t.Fatalf("snapshot without default/kubernetes: %+v", s.Services)
	}

	drain(w.Changed())
	dual := corev1.IPFamilyPolicyPreferDualStack
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, IPFamilyPolicy: &dual,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			ExternalIPs:           []string{"198.51.100.10"},
			Selector:              map[string]string{"app": "web"},
			Ports:                 []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.Changed():
	case <-time.After(10 * time.Second):
		t.Fatal("no change signalled for a new Service")
	}
	// What a LoadBalancer implementation writes.
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.10"}, {IP: "2001:db8:1b::10"}}
	if _, err := cs.CoreV1().Services("default").UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	mkSlice := func(name string, af discoveryv1.AddressType, addr string, eps ...discoveryv1.Endpoint) {
		t.Helper()
		for i := range eps {
			eps[i].Addresses = []string{addr}
		}
		_, err := cs.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: af, Endpoints: eps,
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	mkSlice("web-v4", discoveryv1.AddressTypeIPv4, "10.244.1.5", discoveryv1.Endpoint{NodeName: ptr("n1"), Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}})
	mkSlice("web-v6", discoveryv1.AddressTypeIPv6, "fd00:10:244:1::5", discoveryv1.Endpoint{NodeName: ptr("n1"), Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}})

	in := func() Input {
		s := w.Snapshot()
		cfg := testConfig()
		return Input{Services: s.Services, Endpoints: s.Endpoints, Nodes: []cluster.Node{{Name: "n1"}, {Name: "n2"}}, KubeProxy: true, Config: cfg}
	}
	advertised := func(node string) []string {
		i := in()
		i.NodeName = node
		ads, problems := Desired(i)
		if len(problems) != 0 {
			t.Errorf("problems %q", problems)
		}
		var out []string
		for _, a := range ads {
			if a.Class != "clusterIPs" {
				out = append(out, a.String())
			}
		}
		return out
	}
	all := []string{"198.51.100.10/32 externalIPs [default/web]", "203.0.113.10/32 loadBalancerIPs [default/web]", "2001:db8:1b::10/128 loadBalancerIPs [default/web]"}
	eventually(t, 10*time.Second, "Service and both slices seen", func() error {
		if got := advertised("n1"); !slices.Equal(got, all) {
			return fmt.Errorf("n1 advertises %q", got)
		}
		return nil
	})
	if got := advertised("n2"); len(got) != 0 {
		t.Errorf("n2 (no local endpoint, policy Local) advertises %q", got)
	}
	snap := w.Snapshot()
	if i := slices.IndexFunc(snap.Services, func(s Service) bool { return s.Name == "web" }); i < 0 || len(svc.Spec.ClusterIPs) != 2 ||
		len(snap.Services[i].ClusterIPs) != 2 || snap.Services[i].ClusterIPs[1].String() != svc.Spec.ClusterIPs[1] {
		t.Errorf("dual-stack cluster IPs %+v, want %v", snap.Services, svc.Spec.ClusterIPs)
	}

	// A change advertisement does not read is not signalled.
	time.Sleep(200 * time.Millisecond)
	drain(w.Changed())
	cur, err := cs.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Labels = map[string]string{"team": "a"}
	if _, err := cs.CoreV1().Services("default").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.Changed():
		t.Error("a label change was signalled")
	case <-time.After(time.Second):
	}

	// The endpoint on n1 starts terminating while one on n2 is ready: both advertise while n1's
	// still serves (kube-proxy on n1 forwards to it), so the rack always has a route; once it
	// stops serving, n1 withdraws and n2 has taken over.
	es, err := cs.DiscoveryV1().EndpointSlices("default").Get(ctx, "web-v4", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	es.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(true), Terminating: ptr(true)}
	es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.244.2.5"}, NodeName: ptr("n2"), Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}})
	if _, err := cs.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.Changed():
	case <-time.After(10 * time.Second):
		t.Fatal("endpoint change not signalled")
	}
	eventually(t, 10*time.Second, "n2 joins n1 on IPv4", func() error {
		if got, want := advertised("n2"), all[:2]; !slices.Equal(got, want) {
			return fmt.Errorf("n2 advertises %q, want %q", got, want)
		}
		if got := advertised("n1"); !slices.Equal(got, all) {
			return fmt.Errorf("n1 advertises %q, want %q (its IPv4 endpoint is terminating but serving)", got, all)
		}
		return nil
	})
	es, err = cs.DiscoveryV1().EndpointSlices("default").Get(ctx, "web-v4", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	es.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(false), Terminating: ptr(true)}
	if _, err := cs.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Per family: n1 keeps its ready IPv6 endpoint, so it keeps the IPv6 address only.
	eventually(t, 10*time.Second, "n2 takes over IPv4", func() error {
		if got, want := advertised("n2"), all[:2]; !slices.Equal(got, want) {
			return fmt.Errorf("n2 advertises %q, want %q", got, want)
		}
		if got, want := advertised("n1"), all[2:]; !slices.Equal(got, want) {
			return fmt.Errorf("n1 advertises %q, want %q (its IPv4 endpoint no longer serves, n2's is ready)", got, want)
		}
		return nil
	})

	// Opt-out, then deletion: withdrawn everywhere.
	cur, err = cs.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Annotations = map[string]string{AnnotationAdvertise: "false"}
	if _, err := cs.CoreV1().Services("default").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "opt-out seen", func() error {
		if got := advertised("n2"); len(got) != 0 {
			return fmt.Errorf("n2 advertises %q", got)
		}
		return nil
	})
	if err := cs.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "deletion seen", func() error {
		if s := w.Snapshot(); slices.ContainsFunc(s.Services, func(s Service) bool { return s.Name == "web" }) {
			return fmt.Errorf("web still in the snapshot")
		}
		return nil
	})
}
