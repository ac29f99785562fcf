package lbipam

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"sigs.k8s.io/yaml"

	"github.com/podroute/podroute/test/kube"
)

// BenchmarkAllocate1000 measures allocation end to end against a real API server: 1,000
// dual-stack (RequireDualStack) LoadBalancer Services created by 16 parallel creators
// (client without rate limit), one pool of an IPv4 /22 and an IPv6 /112, the controller
// running alone (no leader election) with podroute-lbipam's client limits (100 QPS, burst
// 200; LBIPAM_BENCH_QPS changes the 100, LBIPAM_BENCH_SERVICES the 1,000). The time runs from the first create until a watch has seen every Service with its
// two ingress addresses. Also counted: the controller's API requests (by verb and
// resource, through its transport) and its heap (HeapInuse after GC, against before it
// started).
//
// The baseline, in the same run once the controller has stopped, is what the API server
// costs without allocation: the same 1,000 Services created the same way in another
// namespace, timed until the watch has seen all of them.
func BenchmarkAllocate1000(b *testing.B) {
	const creators = 16
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("LBIPAM_BENCH_SERVICES")); err == nil && v > 0 {
		n = v
	}
	qps := 100 // podroute-lbipam's
	if v, err := strconv.Atoi(os.Getenv("LBIPAM_BENCH_QPS")); err == nil && v > 0 {
		qps = v
	}
	c := kube.Start(b, kube.Options{ServiceCIDR: "10.96.0.0/16,fd00:10:96::/108"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dyn := dynamic.NewForConfigOrDie(c.RestConfig)
	benchPoolCRD(ctx, b, dyn)
	u, err := (&LoadBalancerIPPool{ObjectMeta: metav1.ObjectMeta{Name: "main"},
		Spec: PoolSpec{Addresses: []string{"10.200.0.0/22", "2001:db8:1b::/112"}}}).ToUnstructured()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := dyn.Resource(PoolGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	fast := rest.CopyConfig(c.RestConfig)
	fast.QPS = -1 // no client-side limit: the creators go as fast as the API server lets them
	creatorCS := kubernetes.NewForConfigOrDie(fast)
	for _, ns := range []string{"bench", "baseline"} {
		if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}

	var alloc, created, base, baseCreated time.Duration
	var heapDelta int64
	var settled map[string]int
	for b.Loop() {
		// The controller's client as podroute-lbipam builds it, counting its requests.
		counter := &requestCounter{counts: map[string]int{}}
		ctlCfg := rest.CopyConfig(c.RestConfig)
		ctlCfg.QPS, ctlCfg.Burst = float32(qps), 2*qps
		ctlCfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return countingTransport{rt, counter} }
		ctl := NewController(kubernetes.NewForConfigOrDie(ctlCfg), dynamic.NewForConfigOrDie(ctlCfg),
			Options{Identity: "bench", Logger: kube.TestLogger(b, slog.LevelWarn, "lbipam")})

		seen, met := watchServices(ctx, b, c.Client, "bench", n, func(s *corev1.Service) bool { return len(s.Status.LoadBalancer.Ingress) == 2 })
		before := heapInUse()
		cctx, ccancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- ctl.Run(cctx) }()
		kube.Eventually(b, 30*time.Second, "controller synced", func() error {
			if !ctl.Synced() {
				return fmt.Errorf("caches not synced")
			}
			return nil
		})
		start := time.Now()
		created = createServices(ctx, b, creatorCS, "bench", n, creators)
		var end time.Time
		select {
		case end = <-seen:
		case <-time.After(time.Minute + time.Duration(n)*200*time.Millisecond):
			b.Fatalf("%d of %d Services seen with their addresses in time (%s); controller requests %v", met(), n, ingressCounts(ctx, c.Client, "bench"), counter.snapshot())
		}
		alloc = end.Sub(start)
		atAlloc := counter.snapshot()
		heapDelta = int64(heapInUse()) - int64(before)
		// The events the controller records go out after the status writes, on the same
		// rate limit: wait for its requests to stop.
		settled = counter.settle(3 * time.Second)
		ccancel()
		<-done
		checkDistinct(ctx, b, c.Client, "bench", n)
		b.Logf("requests by the time every Service had its addresses: %v", atAlloc)

		seenBase, _ := watchServices(ctx, b, c.Client, "baseline", n, func(*corev1.Service) bool { return true })
		startBase := time.Now()
		baseCreated = createServices(ctx, b, creatorCS, "baseline", n, creators)
		select {
		case end = <-seenBase:
		case <-time.After(5 * time.Minute):
			b.Fatal("the watch did not see every baseline Service within 5 minutes")
		}
		base = end.Sub(startBase)
	}
	total := 0
	for _, v := range settled {
		total += v
	}
	s := func(d time.Duration) float64 { return d.Seconds() }
	b.Logf("| measure | allocation | baseline (no controller) | ratio |")
	b.Logf("|---|---:|---:|---:|")
	b.Logf("| creates returned | %.2f s | %.2f s | %.2f |", s(created), s(baseCreated), s(created)/s(baseCreated))
	b.Logf("| every Service seen (allocation: with both addresses) | %.2f s | %.2f s | %.2f |", s(alloc), s(base), s(alloc)/s(base))
	b.Logf("controller requests until quiet: %d in all: %v", total, settled)
	b.Logf("controller heap in use: %+.1f MiB, %d bytes per Service", float64(heapDelta)/(1<<20), heapDelta/int64(n))
	b.ReportMetric(s(alloc), "alloc-s")
	b.ReportMetric(s(base), "baseline-s")
	b.ReportMetric(s(alloc)/s(base), "alloc/baseline")
	b.ReportMetric(float64(total), "controller-requests")
	b.ReportMetric(float64(settled["PUT services/status"]), "status-writes")
	b.ReportMetric(float64(heapDelta)/(1<<20), "controller-heap-MiB")
}

// createServices creates n LoadBalancer Services in ns with that many creators in parallel
// and returns how long it took.
func createServices(ctx context.Context, b *testing.B, cs kubernetes.Interface, ns string, n, creators int) time.Duration {
	b.Helper()
	dual := corev1.IPFamilyPolicyRequireDualStack
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, creators)
	for w := range creators {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += creators {
				name := fmt.Sprintf("svc-%04d", i)
				_, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: name},
					Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, IPFamilyPolicy: &dual,
						Selector: map[string]string{"app": name},
						Ports:    []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}},
				}, metav1.CreateOptions{})
				if err != nil {
					errs <- fmt.Errorf("create %s/%s: %w", ns, name, err)
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
	return time.Since(start)
}

// watchServices watches ns (a plain watch: no cache of its own, so the heap figures are
// the controller's) and sends the time at which n Services have met ok; met counts them.
func watchServices(ctx context.Context, b *testing.B, cs kubernetes.Interface, ns string, n int, ok func(*corev1.Service) bool) (_ <-chan time.Time, met func() int) {
	b.Helper()
	// From a list's resourceVersion, retrying: a watch without one can fail at once
	// ("Too large resource version") right after a write.
	l, err := cs.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	w, err := watchtools.NewRetryWatcherWithContext(ctx, l.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return cs.CoreV1().Services(ns).Watch(ctx, o)
		}})
	if err != nil {
		b.Fatal(err)
	}
	out := make(chan time.Time, 1)
	var mu sync.Mutex
	done := map[string]bool{}
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			s, isSvc := ev.Object.(*corev1.Service)
			if !isSvc || (ev.Type != watch.Added && ev.Type != watch.Modified) || !ok(s) {
				continue
			}
			mu.Lock()
			done[s.Name] = true
			all := len(done) == n
			mu.Unlock()
			if all {
				out <- time.Now()
				return
			}
		}
	}()
	return out, func() int { mu.Lock(); defer mu.Unlock(); return len(done) }
}

// ingressCounts tells how many Services of ns have how many ingress addresses.
func ingressCounts(ctx context.Context, cs kubernetes.Interface, ns string) string {
	l, err := cs.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	counts := map[int]int{}
	for _, s := range l.Items {
		counts[len(s.Status.LoadBalancer.Ingress)]++
	}
	return fmt.Sprintf("Services by number of addresses: %v", counts)
}

// checkDistinct fails unless the n Services of ns hold 2n distinct addresses.
func checkDistinct(ctx context.Context, b *testing.B, cs kubernetes.Interface, ns string, n int) {
	b.Helper()
	l, err := cs.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ips := map[string]string{}
	for _, s := range l.Items {
		for _, in := range s.Status.LoadBalancer.Ingress {
			if other, dup := ips[in.IP]; dup {
				b.Fatalf("%s handed to %s and %s", in.IP, other, s.Name)
			}
			ips[in.IP] = s.Name
		}
	}
	if len(l.Items) != n || len(ips) != 2*n {
		b.Fatalf("%d Services hold %d addresses, want %d and %d", len(l.Items), len(ips), n, 2*n)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func benchPoolCRD(ctx context.Context, b *testing.B, dyn dynamic.Interface) {
	b.Helper()
	data, err := os.ReadFile("../deploy/crds/podroute.io_loadbalancerippools.yaml")
	if err != nil {
		b.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		b.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := json.Unmarshal(js, &u.Object); err != nil {
		b.Fatal(err)
	}
	if _, err := dyn.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		b.Fatalf("create CRD: %v", err)
	}
	kube.Eventually(b, 30*time.Second, "LoadBalancerIPPool served", func() error {
		_, err := dyn.Resource(PoolGVR).List(ctx, metav1.ListOptions{})
		return err
	})
}

// requestCounter counts a client's requests as "VERB resource[/subresource]".
type requestCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

// countingTransport counts every request into c.
type countingTransport struct {
	next http.RoundTripper
	c    *requestCounter
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.c.count(r)
	return t.next.RoundTrip(r)
}

func (c *requestCounter) count(r *http.Request) {
	verb := r.Method
	if r.URL.Query().Get("watch") == "true" {
		verb = "WATCH"
	} else if r.Method == http.MethodGet && !strings.Contains(r.URL.Path, "/namespaces/") {
		verb = "LIST"
	}
	c.mu.Lock()
	c.counts[verb+" "+resourceOf(r.URL.Path)]++
	c.mu.Unlock()
}

// resourceOf is "services/status" for /api/v1/namespaces/ns/services/name/status.
func resourceOf(path string) string {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	start := 3 // /apis/group/version/...
	if len(segs) > 0 && segs[0] == "api" {
		start = 2
	}
	if len(segs) <= start {
		return path
	}
	rest := segs[start:]
	if len(rest) > 2 && rest[0] == "namespaces" {
		rest = rest[2:]
	}
	if len(rest) == 3 {
		return rest[0] + "/" + rest[2]
	}
	return rest[0]
}

func (c *requestCounter) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.counts))
	for k, v := range c.counts {
		out[k] = v
	}
	return out
}

func (c *requestCounter) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.counts {
		n += v
	}
	return n
}

// settle waits until no request was made for quiet, then returns the counts.
func (c *requestCounter) settle(quiet time.Duration) map[string]int {
	last, since := c.total(), time.Now()
	for time.Since(since) < quiet {
		time.Sleep(100 * time.Millisecond)
		if t := c.total(); t != last {
			last, since = t, time.Now()
		}
	}
	return c.snapshot()
}
