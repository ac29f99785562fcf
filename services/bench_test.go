package services

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podroute/podroute/cluster"
)

// BenchmarkDesired decides one node's advertisements for 5,000 LoadBalancer Services (half
// Local, dual-stack, 10 endpoints per family over 500 nodes). The baseline, timed in the
// same run, is reducing the same objects (what Watcher.Snapshot does before every call):
// the ratio says what deciding costs on top of reading.
func BenchmarkDesired(b *testing.B) {
	const nServices, nNodes, perSlice = 5000, 500, 10
	var svcs []*corev1.Service
	var slices []*discoveryv1.EndpointSlice
	nodes := make([]cluster.Node, nNodes)
	for i := range nodes {
		nodes[i] = cluster.Node{Name: fmt.Sprintf("n%03d", i)}
	}
	for i := range nServices {
		name := fmt.Sprintf("svc-%04d", i)
		etp := corev1.ServiceExternalTrafficPolicyCluster
		if i%2 == 1 {
			etp = corev1.ServiceExternalTrafficPolicyLocal
		}
		svcs = append(svcs, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: etp,
				ClusterIPs: []string{fmt.Sprintf("10.96.%d.%d", i/256, i%256), fmt.Sprintf("fd00:10:96::%x", i)}},
			Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{
				{IP: fmt.Sprintf("203.0.%d.%d", 100+i/256, i%256)}, {IP: fmt.Sprintf("2001:db8:1b::%x", i)}}}},
		})
		for _, af := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
			es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name + string(af),
				Labels: map[string]string{discoveryv1.LabelServiceName: name}}, AddressType: af}
			for j := range perSlice {
				es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{NodeName: &nodes[(i*7+j*13)%nNodes].Name, Conditions: discoveryv1.EndpointConditions{Ready: ptr(j != 0)}})
			}
			slices = append(slices, es)
		}
	}
	cfg := testConfig()
	cfg.ServiceLoadBalancerIPs = prefixes("203.0.96.0/19", "2001:db8:1b::/64")
	reduce := func() Input {
		in := Input{Nodes: nodes, NodeName: "n007", KubeProxy: true, Config: cfg}
		for _, s := range svcs {
			in.Services = append(in.Services, FromObject(s))
		}
		for _, es := range slices {
			if e, ok := EndpointsFromSlice(es); ok {
				in.Endpoints = append(in.Endpoints, e)
			}
		}
		return in
	}
	in := reduce()
	var reduceTime, desiredTime time.Duration
	var n int
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		_ = reduce()
		t1 := time.Now()
		ads, _ := Desired(in)
		desiredTime += time.Since(t1)
		reduceTime += t1.Sub(t0)
		n = len(ads)
	}
	b.ReportMetric(float64(desiredTime.Microseconds())/float64(b.N)/1000, "desired-ms/op")
	b.ReportMetric(float64(reduceTime.Microseconds())/float64(b.N)/1000, "baseline-reduce-ms/op")
	b.ReportMetric(float64(desiredTime)/float64(reduceTime), "desired/baseline")
	b.ReportMetric(float64(n), "prefixes")
}
