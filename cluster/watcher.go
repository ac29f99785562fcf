package cluster

import (
	"context"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Watcher keeps the cluster's Nodes current and signals when they change.
type Watcher struct {
	log      *slog.Logger
	informer cache.SharedIndexInformer
	changed  chan struct{}

	mu        sync.Mutex
	healthy   bool
	lastError string
	since     time.Time
}

// NewWatcher prepares a Node informer; Run starts it.
func NewWatcher(client kubernetes.Interface, log *slog.Logger) *Watcher {
	w := &Watcher{log: log, changed: make(chan struct{}, 1), since: time.Now()}
	// List and watch are wrapped so the agent knows whether its view of the cluster is live:
	// readiness must not claim a working watch while the API server is unreachable.
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			o, err := client.CoreV1().Nodes().List(ctx, opts)
			w.observe("list nodes", err)
			return o, err
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			i, err := client.CoreV1().Nodes().Watch(ctx, opts)
			w.observe("watch nodes", err)
			return i, err
		},
	}
	w.informer = cache.NewSharedIndexInformer(lw, &corev1.Node{}, 0, cache.Indexers{})
	// Each agent caches every Node: keep only what routing reads, so a thousand Nodes cost
	// kilobytes each, not the tens a Node carries in images, conditions and managed fields.
	_ = w.informer.SetTransform(slimNode)
	_ = w.informer.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		w.observe("watch nodes", err)
	})
	_, _ = w.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { w.poke() },
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Node)
			c, ok2 := cur.(*corev1.Node)
			// Kubelet rewrites status every few seconds; only what routing reads matters.
			if ok1 && ok2 && sameForRouting(o, c) {
				return
			}
			w.poke()
		},
		DeleteFunc: func(any) { w.poke() },
	})
	return w
}

// Run runs the informer until ctx ends.
func (w *Watcher) Run(ctx context.Context) { w.informer.RunWithContext(ctx) }

// WaitForSync waits until the first full list has arrived.
func (w *Watcher) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), w.informer.HasSynced)
}

// Synced reports whether the first full list has arrived.
func (w *Watcher) Synced() bool { return w.informer.HasSynced() }

// Changed receives a value (coalesced) whenever a Node that matters to routing changed.
func (w *Watcher) Changed() <-chan struct{} { return w.changed }

// Nodes returns every Node, sorted by name.
func (w *Watcher) Nodes() []Node {
	objs := w.informer.GetStore().List()
	out := make([]Node, 0, len(objs))
	for _, o := range objs {
		if n, ok := o.(*corev1.Node); ok {
			out = append(out, FromObject(n))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Health says whether the watch is live and, if not, the last error.
func (w *Watcher) Health() (ok bool, lastError string, since time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.healthy && w.informer.HasSynced(), w.lastError, w.since
}

func (w *Watcher) observe(op string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ok := err == nil
	if ok != w.healthy {
		w.since = time.Now()
		if ok {
			w.log.Info("kubernetes API reachable again", "op", op)
		} else {
			w.log.Error("kubernetes API unreachable", "op", op, "err", err)
		}
	}
	w.healthy = ok
	if err != nil {
		w.lastError = op + ": " + err.Error()
	}
}

func (w *Watcher) poke() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// slimNode is the informer's transform: a new Node with only what FromObject and
// sameForRouting read (name, labels, podroute.io/ annotations, pod CIDRs, addresses). It
// builds a new object, so it is idempotent and never shares memory with the one decoded.
func slimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil // a tombstone (cache.DeletedFinalStateUnknown) passes as it is
	}
	out := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:            n.Name,
			UID:             n.UID,
			ResourceVersion: n.ResourceVersion,
			Labels:          n.Labels,
		},
		Spec:   corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
		Status: corev1.NodeStatus{Addresses: n.Status.Addresses},
	}
	for k, v := range n.Annotations {
		if strings.HasPrefix(k, AnnotationPrefix) {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	return out, nil
}

func sameForRouting(a, b *corev1.Node) bool {
	return equality.Semantic.DeepEqual(a.Spec.PodCIDRs, b.Spec.PodCIDRs) &&
		a.Spec.PodCIDR == b.Spec.PodCIDR &&
		equality.Semantic.DeepEqual(a.Status.Addresses, b.Status.Addresses) &&
		equality.Semantic.DeepEqual(a.Labels, b.Labels) &&
		equality.Semantic.DeepEqual(a.Annotations, b.Annotations)
}
