package services

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/test/kube"
)

// BenchmarkWatcher1000 measures what the agent holds for 1,000 LoadBalancer Services: a
// real API server with 1,000 dual-stack LoadBalancer Services (status written as a
// LoadBalancer implementation writes it: one IPv4 and one IPv6 ingress address) and their
// EndpointSlices as the EndpointSlice controller writes them (one per family, 3 endpoints
// each over 100 Nodes, ports, target references, owner reference, labels), then a
// services.Watcher synced against it: heap in use (after GC) against before it started,
// and the time of Snapshot plus Desired for one node.
//
// The baseline, in the same run, is the same with plain client-go informers on Services
// and EndpointSlices (no transform), reduced with FromObject and EndpointsFromSlice as
// Snapshot does: the ratio is what trimming saves.
func BenchmarkWatcher1000(b *testing.B) {
	const n, nNodes, perSlice = 1000, 100, 3
	c := kube.Start(b, kube.Options{ServiceCIDR: "10.96.0.0/16,fd00:10:96::/108"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	fast := rest.CopyConfig(c.RestConfig)
	fast.QPS = -1 // the objects are set up as fast as the API server takes them
	cs := kubernetes.NewForConfigOrDie(fast)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	nodes := make([]cluster.Node, nNodes)
	for i := range nodes {
		nodes[i] = cluster.Node{Name: fmt.Sprintf("node-%03d", i)}
	}
	setup := time.Now()
	parallel(b, 16, n, func(i int) error { return createServiceWithSlices(ctx, cs, i, nodes, perSlice) })
	b.Logf("1,000 Services, their status and 2,000 EndpointSlices written in %.1f s", time.Since(setup).Seconds())

	cfg := testConfig()
	cfg.ServiceLoadBalancerIPs = prefixes("10.200.0.0/22", "2001:db8:1b::/112")
	desired := func(s Snapshot) int {
		ads, problems := Desired(Input{Services: s.Services, Endpoints: s.Endpoints, Nodes: nodes, NodeName: "node-007", KubeProxy: true, Config: cfg})
		if len(problems) != 0 {
			b.Fatalf("problems: %v", problems)
		}
		return len(ads)
	}
	const reps = 20
	var trimmedHeap, plainHeap, trimmedLive, plainLive int64
	var trimmedTime, plainTime time.Duration
	var ads int
	for b.Loop() {
		// The podroute watcher.
		before, beforeLive := heap()
		w := NewWatcher(c.Client, slog.New(slog.NewTextHandler(io.Discard, nil)))
		wctx, wcancel := context.WithCancel(ctx)
		stopped := make(chan struct{})
		go func() { w.Run(wctx); close(stopped) }()
		if !w.WaitForSync(ctx) {
			b.Fatal("watcher not synced")
		}
		if s := w.Snapshot(); len(s.Services) != n+1 || len(s.Endpoints) != 2*n {
			b.Fatalf("watcher holds %d Services and %d endpoint sets, want %d and %d", len(s.Services), len(s.Endpoints), n+1, 2*n)
		}
		inUse, live := heap()
		trimmedHeap, trimmedLive = inUse-before, live-beforeLive
		start := time.Now()
		for range reps {
			ads = desired(w.Snapshot())
		}
		trimmedTime = time.Since(start) / reps
		wcancel()
		<-stopped
		w = nil

		// The baseline: the same two resources through plain informers.
		before, beforeLive = heap()
		factory := informers.NewSharedInformerFactory(c.Client, 0)
		svcs := factory.Core().V1().Services().Informer()
		eps := factory.Discovery().V1().EndpointSlices().Informer()
		pctx, pcancel := context.WithCancel(ctx)
		factory.Start(pctx.Done())
		if !cache.WaitForCacheSync(ctx.Done(), svcs.HasSynced, eps.HasSynced) {
			b.Fatal("plain informers not synced")
		}
		inUse, live = heap()
		plainHeap, plainLive = inUse-before, live-beforeLive
		start = time.Now()
		var plainAds int
		for range reps {
			plainAds = desired(plainSnapshot(svcs, eps))
		}
		plainTime = time.Since(start) / reps
		pcancel()
		factory.Shutdown()
		if plainAds != ads {
			b.Fatalf("plain informers give %d advertisements, the watcher %d", plainAds, ads)
		}
	}
	mib := func(v int64) float64 { return float64(v) / (1 << 20) }
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.Logf("| measure | services.Watcher (trimmed) | plain informers (baseline) | ratio |")
	b.Logf("|---|---:|---:|---:|")
	b.Logf("| heap in use after sync | %.2f MiB | %.2f MiB | %.2f |", mib(trimmedHeap), mib(plainHeap), float64(trimmedHeap)/float64(plainHeap))
	b.Logf("| per Service (with its 2 EndpointSlices) | %d B | %d B | |", trimmedHeap/n, plainHeap/n)
	b.Logf("| live bytes after sync (HeapAlloc) | %.2f MiB | %.2f MiB | %.2f |", mib(trimmedLive), mib(plainLive), float64(trimmedLive)/float64(plainLive))
	b.Logf("| Snapshot + Desired for one node (%d prefixes) | %.2f ms | %.2f ms | %.2f |", ads, ms(trimmedTime), ms(plainTime), float64(trimmedTime)/float64(plainTime))
	b.ReportMetric(mib(trimmedHeap), "watcher-heap-MiB")
	b.ReportMetric(mib(plainHeap), "baseline-heap-MiB")
	b.ReportMetric(float64(trimmedHeap)/float64(plainHeap), "heap/baseline")
	b.ReportMetric(float64(trimmedHeap)/n, "watcher-B/service")
	b.ReportMetric(mib(trimmedLive), "watcher-live-MiB")
	b.ReportMetric(mib(plainLive), "baseline-live-MiB")
	b.ReportMetric(ms(trimmedTime), "snapshot+desired-ms")
	b.ReportMetric(ms(plainTime), "baseline-snapshot+desired-ms")
	b.ReportMetric(float64(ads), "prefixes")
}

// plainSnapshot is Watcher.Snapshot over untrimmed informers.
func plainSnapshot(svcs, eps cache.SharedIndexInformer) Snapshot {
	var s Snapshot
	for _, o := range svcs.GetStore().List() {
		if svc, ok := o.(*corev1.Service); ok {
			s.Services = append(s.Services, FromObject(svc))
		}
	}
	for _, o := range eps.GetStore().List() {
		if es, ok := o.(*discoveryv1.EndpointSlice); ok {
			if e, ok := EndpointsFromSlice(es); ok {
				s.Endpoints = append(s.Endpoints, e)
			}
		}
	}
	slices.SortFunc(s.Services, func(a, b Service) int { return cmp.Compare(a.Key(), b.Key()) })
	slices.SortStableFunc(s.Endpoints, func(a, b Endpoints) int { return cmp.Compare(a.Key(), b.Key()) })
	return s
}

// createServiceWithSlices creates Service svc-i (LoadBalancer, dual-stack), writes its
// status, and creates its two EndpointSlices, with perSlice endpoints on nodes spread
// over nodes.
func createServiceWithSlices(ctx context.Context, cs kubernetes.Interface, i int, nodes []cluster.Node, perSlice int) error {
	name := fmt.Sprintf("svc-%04d", i)
	dual := corev1.IPFamilyPolicyRequireDualStack
	etp := corev1.ServiceExternalTrafficPolicyCluster
	if i%2 == 1 {
		etp = corev1.ServiceExternalTrafficPolicyLocal
	}
	svc, err := cs.CoreV1().Services("bench").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "bench"}},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, IPFamilyPolicy: &dual, ExternalTrafficPolicy: etp,
			Selector: map[string]string{"app.kubernetes.io/name": name},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP},
				{Name: "https", Port: 443, Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create Service %s: %w", name, err)
	}
	vip := corev1.LoadBalancerIPModeVIP
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
		{IP: fmt.Sprintf("10.200.%d.%d", i/256, i%256), IPMode: &vip},
		{IP: fmt.Sprintf("2001:db8:1b::%x", i), IPMode: &vip}}
	if _, err := cs.CoreV1().Services("bench").UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("status of Service %s: %w", name, err)
	}
	owner := metav1.OwnerReference{APIVersion: "v1", Kind: "Service", Name: name, UID: svc.UID, Controller: ptr(true), BlockOwnerDeletion: ptr(true)}
	for f, af := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
		es := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%s", name, []string{"v4", "v6"}[f]),
				Labels: map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io",
					"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "bench"},
				Annotations:     map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-03T10:00:00Z"},
				OwnerReferences: []metav1.OwnerReference{owner}},
			AddressType: af,
			Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr[int32](8080), Protocol: ptr(corev1.ProtocolTCP)},
				{Name: ptr("https"), Port: ptr[int32](8443), Protocol: ptr(corev1.ProtocolTCP)}},
		}
		for j := range perSlice {
			pod := fmt.Sprintf("%s-7d9f8c6b5-%05d", name, j)
			ip := fmt.Sprintf("10.244.%d.%d", (i*perSlice+j)/250, (i*perSlice+j)%250+1)
			if af == discoveryv1.AddressTypeIPv6 {
				ip = fmt.Sprintf("fd10:244::%x", i*perSlice+j+1)
			}
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{ip},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
				NodeName:   &nodes[(i*7+j*13)%len(nodes)].Name,
				Zone:       ptr("zone-a"),
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "bench", Name: pod, UID: types.UID(fmt.Sprintf("00000000-0000-0000-0000-%012d", i*perSlice+j))},
			})
		}
		if _, err := cs.DiscoveryV1().EndpointSlices("bench").Create(ctx, es, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create EndpointSlice %s: %w", es.Name, err)
		}
	}
	return nil
}

// parallel runs f(0..n-1) on workers goroutines and fails b on the first error.
func parallel(b *testing.B, workers, n int, f func(int) error) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// heap is the heap in use (spans) and the live bytes in it, after GC.
func heap() (inUse, live int64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse), int64(m.HeapAlloc)
}
