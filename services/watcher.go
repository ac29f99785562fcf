package services

import (
	"cmp"
	"context"
	"log/slog"
	"reflect"
	"slices"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/podroute/podroute/cluster"
)

// Watcher keeps the cluster's Services and EndpointSlices, reduced to what advertisement
// reads, and signals when they change.
type Watcher struct {
	log       *slog.Logger
	services  cache.SharedIndexInformer
	endpoints cache.SharedIndexInformer
	changed   chan struct{}
	// generation counts changes, so a reader can tell that nothing changed since it last
	// decided, without comparing the objects.
	generation atomic.Uint64
}

// NewWatcher prepares the informers; Run starts them.
func NewWatcher(client kubernetes.Interface, log *slog.Logger) *Watcher {
	if log == nil {
		log = slog.Default()
	}
	w := &Watcher{log: log, changed: make(chan struct{}, 1)}
	// Only the fields advertisement reads are kept: a cluster's Services and
	// EndpointSlices (addresses, ports, hints, owner references) are most of an
	// agent's memory otherwise, on every node.
	w.services = cluster.NewInformer(client.CoreV1().Services(metav1.NamespaceAll), &corev1.Service{}, trim)
	w.endpoints = cluster.NewInformer(client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll), &discoveryv1.EndpointSlice{}, trim)
	for _, inf := range []cache.SharedIndexInformer{w.services, w.endpoints} {
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { w.poke() },
			UpdateFunc: func(old, cur any) {
				// Trimmed objects that are equal differ only in what advertisement ignores
				// (the resourceVersion aside).
				if sameTrimmed(old, cur) {
					return
				}
				w.poke()
			},
			DeleteFunc: func(any) { w.poke() },
		})
	}
	return w
}

// Run runs the informers until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	go func() {
		if w.WaitForSync(ctx) {
			s := w.Snapshot()
			w.log.Info("Services and EndpointSlices synced", "services", len(s.Services), "endpointSlices", len(s.Endpoints))
		}
	}()
	cluster.RunInformers(ctx, w.services, w.endpoints)
}

// Synced reports whether the first full lists of both resources have arrived.
func (w *Watcher) Synced() bool { return w.services.HasSynced() && w.endpoints.HasSynced() }

// WaitForSync waits until Synced or ctx ends.
func (w *Watcher) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), w.services.HasSynced, w.endpoints.HasSynced)
}

// Changed receives a value (coalesced: capacity 1) whenever a Service or an EndpointSlice
// changed in a way advertisement reads.
func (w *Watcher) Changed() <-chan struct{} { return w.changed }

// Generation changes whenever Changed is signalled (before the signal is sent).
func (w *Watcher) Generation() uint64 { return w.generation.Load() }

// Snapshot is the Services and their endpoints, sorted by namespace/name.
type Snapshot struct {
	Services  []Service
	Endpoints []Endpoints
}

// Snapshot returns the current Services and endpoints.
func (w *Watcher) Snapshot() Snapshot {
	var s Snapshot
	for _, o := range w.services.GetStore().List() {
		if svc, ok := o.(*corev1.Service); ok {
			s.Services = append(s.Services, FromObject(svc))
		}
	}
	for _, o := range w.endpoints.GetStore().List() {
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

func (w *Watcher) poke() {
	w.generation.Add(1)
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// trim keeps what FromObject and EndpointsFromSlice read, plus what the informer's store
// needs (name, namespace, resourceVersion).
func trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Service:
		t := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: o.Namespace, UID: o.UID, ResourceVersion: o.ResourceVersion},
			Spec: corev1.ServiceSpec{
				Type: o.Spec.Type, ClusterIP: o.Spec.ClusterIP, ClusterIPs: o.Spec.ClusterIPs, ExternalIPs: o.Spec.ExternalIPs,
				ExternalTrafficPolicy: o.Spec.ExternalTrafficPolicy, InternalTrafficPolicy: o.Spec.InternalTrafficPolicy,
				HealthCheckNodePort: o.Spec.HealthCheckNodePort,
			},
		}
		for _, in := range o.Status.LoadBalancer.Ingress {
			t.Status.LoadBalancer.Ingress = append(t.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: in.IP, IPMode: in.IPMode})
		}
		if v, ok := o.Annotations[AnnotationAdvertise]; ok {
			t.Annotations = map[string]string{AnnotationAdvertise: v}
		}
		return t, nil
	case *discoveryv1.EndpointSlice:
		t := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: o.Name, Namespace: o.Namespace, UID: o.UID, ResourceVersion: o.ResourceVersion},
			AddressType: o.AddressType,
		}
		if v, ok := o.Labels[discoveryv1.LabelServiceName]; ok {
			t.Labels = map[string]string{discoveryv1.LabelServiceName: v}
		}
		for _, e := range o.Endpoints {
			t.Endpoints = append(t.Endpoints, discoveryv1.Endpoint{NodeName: e.NodeName, Conditions: e.Conditions})
		}
		return t, nil
	}
	return obj, nil
}

func sameTrimmed(old, cur any) bool {
	switch o := old.(type) {
	case *corev1.Service:
		c, ok := cur.(*corev1.Service)
		return ok && reflect.DeepEqual(FromObject(o), FromObject(c))
	case *discoveryv1.EndpointSlice:
		c, ok := cur.(*discoveryv1.EndpointSlice)
		if !ok {
			return false
		}
		a, okA := EndpointsFromSlice(o)
		b, okB := EndpointsFromSlice(c)
		return okA == okB && reflect.DeepEqual(a, b)
	}
	return false
}
