package cluster

import (
	"cmp"
	"context"
	"log/slog"
	"reflect"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/podroute/podroute/cni"
	"github.com/podroute/podroute/policy"
)

// PolicyWatcher keeps what NetworkPolicy enforcement reads (every NetworkPolicy, Namespace
// and Pod of the cluster) and signals when any of it changes. Input is its product.
type PolicyWatcher struct {
	log      *slog.Logger
	nodeName string
	pods     cache.SharedIndexInformer
	nss      cache.SharedIndexInformer
	nps      cache.SharedIndexInformer
	changed  chan struct{}
}

// NewPolicyWatcher prepares the informers; Run starts them. nodeName picks Input.Local: the
// pods bound to this node.
func NewPolicyWatcher(client kubernetes.Interface, nodeName string, log *slog.Logger) *PolicyWatcher {
	// One transform for the three informers: the cache holds only what policy reads, which
	// matters for pods, as every pod of the cluster is kept (peers can be anywhere).
	w := &PolicyWatcher{
		log:      log,
		nodeName: nodeName,
		pods:     NewInformer(client.CoreV1().Pods(metav1.NamespaceAll), &corev1.Pod{}, slimPolicyObject),
		nss:      NewInformer(client.CoreV1().Namespaces(), &corev1.Namespace{}, slimPolicyObject),
		nps:      NewInformer(client.NetworkingV1().NetworkPolicies(metav1.NamespaceAll), &networkingv1.NetworkPolicy{}, slimPolicyObject),
		changed:  make(chan struct{}, 1),
	}
	for resource, inf := range map[string]cache.SharedIndexInformer{"pods": w.pods, "namespaces": w.nss, "networkpolicies": w.nps} {
		_ = inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			w.log.Warn("watch failed; retrying", "resource", resource, "err", err)
		})
	}
	_, _ = w.nps.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { w.pokeFor("networkpolicy added", obj) },
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*networkingv1.NetworkPolicy)
			c, ok2 := cur.(*networkingv1.NetworkPolicy)
			if ok1 && ok2 && equality.Semantic.DeepEqual(o.Spec, c.Spec) {
				return
			}
			w.pokeFor("networkpolicy changed", cur)
		},
		DeleteFunc: func(obj any) { w.pokeFor("networkpolicy deleted", obj) },
	})
	// Without any NetworkPolicy nothing is enforced whatever pods and namespaces look like,
	// so their events wake the caller only while a policy exists; the first policy's own
	// event brings a pass that reads them all.
	_, _ = w.nss.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { w.pokeIfActive("namespace added", obj) },
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Namespace)
			c, ok2 := cur.(*corev1.Namespace)
			if ok1 && ok2 && equality.Semantic.DeepEqual(o.Labels, c.Labels) {
				return
			}
			w.pokeIfActive("namespace labels changed", cur)
		},
		DeleteFunc: func(obj any) { w.pokeIfActive("namespace deleted", obj) },
	})
	_, _ = w.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { w.pokeIfActive("pod added", obj) },
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Pod)
			c, ok2 := cur.(*corev1.Pod)
			// The kubelet rewrites a pod's status (conditions, container states) many times
			// in its life; only labels, node, ports, addresses and having finished matter.
			if ok1 && ok2 && reflect.DeepEqual(podView(o), podView(c)) {
				return
			}
			w.pokeIfActive("pod changed", cur)
		},
		DeleteFunc: func(obj any) { w.pokeIfActive("pod deleted", obj) },
	})
	return w
}

// Run runs the informers until ctx ends.
func (w *PolicyWatcher) Run(ctx context.Context) {
	RunInformers(ctx, w.pods, w.nss, w.nps)
}

// WaitForSync waits until every informer has its first full list, or ctx ends.
func (w *PolicyWatcher) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), w.pods.HasSynced, w.nss.HasSynced, w.nps.HasSynced)
}

// Synced reports whether every informer has its first full list. Input before that is a
// partial view, which must not be applied as a true one (see policy's doc).
func (w *PolicyWatcher) Synced() bool {
	return w.pods.HasSynced() && w.nss.HasSynced() && w.nps.HasSynced()
}

// Changed receives a value (coalesced) whenever something policy reads changed.
func (w *PolicyWatcher) Changed() <-chan struct{} { return w.changed }

// Active reports whether any NetworkPolicy exists, without building an Input.
func (w *PolicyWatcher) Active() bool { return len(w.nps.GetStore().ListKeys()) > 0 }

// Input returns a fresh snapshot for policy.Compile, every list sorted by namespace and name.
// Its slices are its own; labels maps and policies are the cache's, which Compile only reads.
// Local lists this node's pods as soon as they are bound (spec.nodeName), addresses or not,
// except pods on the host network (they have no veth) and pods that have finished (their
// sandbox and veth are gone).
func (w *PolicyWatcher) Input() *policy.Input {
	in := &policy.Input{}
	for _, o := range w.nps.GetStore().List() {
		if np, ok := o.(*networkingv1.NetworkPolicy); ok {
			in.Policies = append(in.Policies, np)
		}
	}
	slices.SortFunc(in.Policies, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	var nss []*corev1.Namespace
	for _, o := range w.nss.GetStore().List() {
		if ns, ok := o.(*corev1.Namespace); ok {
			nss = append(nss, ns)
		}
	}
	in.Namespaces = policy.NamespacesFromAPI(nss)
	for _, o := range w.pods.GetStore().List() {
		p, ok := o.(*corev1.Pod)
		if !ok {
			continue
		}
		pod := policy.PodFromAPI(p)
		in.Pods = append(in.Pods, pod)
		if p.Spec.NodeName == w.nodeName && w.nodeName != "" && !p.Spec.HostNetwork && !finished(p) {
			in.Local = append(in.Local, policy.LocalPod{Pod: pod, HostVeth: cni.HostVethName(p.Namespace, p.Name, "", "eth0")})
		}
	}
	slices.SortFunc(in.Pods, func(a, b policy.Pod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(in.Local, func(a, b policy.LocalPod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return in
}

func (w *PolicyWatcher) pokeIfActive(what string, obj any) {
	if w.Active() {
		w.pokeFor(what, obj)
	}
}

func (w *PolicyWatcher) pokeFor(what string, obj any) {
	if w.log.Enabled(context.Background(), slog.LevelDebug) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			w.log.Debug(what, "object", key)
		}
	}
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// podFacts is what a pod change must alter to matter to policy.
type podFacts struct {
	pod      policy.Pod
	node     string
	finished bool
}

func podView(p *corev1.Pod) podFacts {
	return podFacts{pod: policy.PodFromAPI(p), node: p.Spec.NodeName, finished: finished(p)}
}

func finished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// slimPolicyObject is the informers' transform: it keeps what policy reads and drops the
// rest (managed fields, annotations such as last-applied-configuration, owner references,
// volumes, images, conditions...) before the object reaches the cache. It builds a new
// object, so it is idempotent and never shares memory with the one decoded.
func slimPolicyObject(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return slimPod(o), nil
	case *corev1.Namespace:
		return &corev1.Namespace{ObjectMeta: slimMeta(&o.ObjectMeta)}, nil
	case *networkingv1.NetworkPolicy:
		return &networkingv1.NetworkPolicy{ObjectMeta: slimMeta(&o.ObjectMeta), Spec: o.Spec}, nil
	}
	return obj, nil
}

// slimMeta keeps identity and labels. The resource version stays for the informer's own
// bookkeeping; labels are what selectors match.
func slimMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:            m.Name,
		Namespace:       m.Namespace,
		UID:             m.UID,
		ResourceVersion: m.ResourceVersion,
		Labels:          m.Labels,
	}
}

// slimPod keeps labels, node, host network, named container ports, phase and addresses.
func slimPod(p *corev1.Pod) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: slimMeta(&p.ObjectMeta),
		Spec: corev1.PodSpec{
			NodeName:       p.Spec.NodeName,
			HostNetwork:    p.Spec.HostNetwork,
			InitContainers: namedPortsOnly(p.Spec.InitContainers),
			Containers:     namedPortsOnly(p.Spec.Containers),
		},
		Status: corev1.PodStatus{
			Phase:  p.Status.Phase,
			PodIP:  p.Status.PodIP,
			PodIPs: p.Status.PodIPs,
		},
	}
}

// namedPortsOnly keeps, of each container that has named ports, its name and those ports.
func namedPortsOnly(cs []corev1.Container) []corev1.Container {
	var out []corev1.Container
	for _, c := range cs {
		var ports []corev1.ContainerPort
		for _, p := range c.Ports {
			if p.Name != "" {
				ports = append(ports, corev1.ContainerPort{Name: p.Name, Protocol: p.Protocol, ContainerPort: p.ContainerPort})
			}
		}
		if len(ports) > 0 {
			out = append(out, corev1.Container{Name: c.Name, Ports: ports})
		}
	}
	return out
}
