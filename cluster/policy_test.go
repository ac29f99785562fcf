package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/podroute/podroute/cni"
	"github.com/podroute/podroute/policy"
	"github.com/podroute/podroute/test/kube"
)

const thisNode = "node-a"

// pokes records the watcher's debug line for each signal ("pod changed", object key), so a
// test can tell which events woke the caller: Changed alone coalesces them.
type pokes struct {
	mu  sync.Mutex
	all []string
}

func (p *pokes) Enabled(context.Context, slog.Level) bool { return true }
func (p *pokes) WithAttrs([]slog.Attr) slog.Handler       { return p }
func (p *pokes) WithGroup(string) slog.Handler            { return p }
func (p *pokes) Handle(_ context.Context, r slog.Record) error {
	line := r.Message
	r.Attrs(func(a slog.Attr) bool {
		line += " " + a.Key + "=" + a.Value.String()
		return true
	})
	p.mu.Lock()
	p.all = append(p.all, line)
	p.mu.Unlock()
	return nil
}

// since returns the lines recorded after the first n.
func (p *pokes) since(n int) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.all[n:])
}

func (p *pokes) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.all)
}

// waitLine waits until a line recorded after the first n contains want.
func (p *pokes) waitLine(t *testing.T, n int, want string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return slices.ContainsFunc(p.since(n), func(l string) bool { return strings.Contains(l, want) }), nil
	})
	if err != nil {
		t.Fatalf("no %q logged within 30s; logged: %q", want, p.since(n))
	}
}

func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		last = f()
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: not within 30s: %v", what, last)
	}
}

// drain empties Changed.
func drain(w *PolicyWatcher) {
	select {
	case <-w.Changed():
	default:
	}
}

// expectSignal waits for Changed.
func expectSignal(t *testing.T, w *PolicyWatcher, after string) {
	t.Helper()
	select {
	case <-w.Changed():
	case <-time.After(30 * time.Second):
		t.Fatalf("no Changed signal within 30s after %s", after)
	}
}

func findPod(pods []policy.Pod, ns, name string) *policy.Pod {
	for i := range pods {
		if pods[i].Namespace == ns && pods[i].Name == name {
			return &pods[i]
		}
	}
	return nil
}

func findLocal(pods []policy.LocalPod, ns, name string) *policy.LocalPod {
	for i := range pods {
		if pods[i].Namespace == ns && pods[i].Name == name {
			return &pods[i]
		}
	}
	return nil
}

func testPod(ns, name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name, Labels: labels,
			Annotations: map[string]string{"example.com/note": strings.Repeat("x", 512)},
		},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name: "web", Image: "registry.example/web:1",
				Env:   []corev1.EnvVar{{Name: "A", Value: "b"}},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {ContainerPort: 9090}},
			}, {
				Name: "sidecar", Image: "registry.example/sidecar:1",
			}},
		},
	}
}

func createNamespace(ctx context.Context, t *testing.T, cs kubernetes.Interface, name string, labels map[string]string) {
	t.Helper()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Pods need their namespace's default ServiceAccount, which only the absent
	// controller-manager would make.
	if _, err := cs.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestPolicyWatcher runs the watcher against a real kube-apiserver: what Input holds as pods,
// namespaces and policies come and change, which changes signal, and what the cache keeps.
func TestPolicyWatcher(t *testing.T) {
	c := kube.Start(t, kube.Options{})
	cs := c.Client
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	createNamespace(ctx, t, cs, "shop", map[string]string{"team": "shop"})
	createNamespace(ctx, t, cs, "db", nil)
	// A pod that exists before the watcher starts: read by the first list.
	if _, err := cs.CoreV1().Pods("db").Create(ctx, testPod("db", "pg-0", "node-b", map[string]string{"app": "pg"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	rec := &pokes{}
	w := NewPolicyWatcher(cs, thisNode, slog.New(rec))
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go w.Run(wctx)
	sync, cancelSync := context.WithTimeout(ctx, 30*time.Second)
	defer cancelSync()
	if !w.WaitForSync(sync) || !w.Synced() {
		t.Fatal("informers did not sync within 30s")
	}

	t.Run("InitialList", func(t *testing.T) {
		in := w.Input()
		if w.Active() || len(in.Policies) != 0 {
			t.Errorf("Active %v with %d policies, want inactive and none", w.Active(), len(in.Policies))
		}
		if in.Namespaces["shop"]["team"] != "shop" || in.Namespaces["shop"]["kubernetes.io/metadata.name"] != "shop" {
			t.Errorf("namespace shop labels %v", in.Namespaces["shop"])
		}
		if _, ok := in.Namespaces["db"]; !ok {
			t.Errorf("namespaces %v lack db", in.Namespaces)
		}
		pg := findPod(in.Pods, "db", "pg-0")
		if pg == nil || pg.Labels["app"] != "pg" {
			t.Fatalf("pods %+v: want db/pg-0 labelled app=pg", in.Pods)
		}
		if !slices.Equal(pg.Ports, []policy.NamedPort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080}}) {
			t.Errorf("db/pg-0 named ports %+v, want http 8080/TCP only", pg.Ports)
		}
		if len(in.Local) != 0 {
			t.Errorf("Local %+v: db/pg-0 is bound to node-b, not %s", in.Local, thisNode)
		}
	})

	// No policy yet: pods and namespaces do not wake the caller (nothing is enforced), but
	// Input still sees them.
	t.Run("BoundPodIsLocalBeforeItHasAddresses", func(t *testing.T) {
		drain(w)
		n := rec.count()
		if _, err := cs.CoreV1().Pods("shop").Create(ctx, testPod("shop", "web-1", thisNode, map[string]string{"app": "web"}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var lp *policy.LocalPod
		eventually(t, "shop/web-1 in Local", func() error {
			if lp = findLocal(w.Input().Local, "shop", "web-1"); lp == nil {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		if want := cni.HostVethName("shop", "web-1", "", "eth0"); lp.HostVeth != want {
			t.Errorf("shop/web-1 host veth %q, want %q (the plugin's name for eth0)", lp.HostVeth, want)
		}
		if len(lp.IPs) != 0 || lp.Labels["app"] != "web" {
			t.Errorf("shop/web-1: %+v, want labels app=web and no addresses yet", lp.Pod)
		}
		if got := rec.since(n); len(got) != 0 {
			t.Errorf("signals without any NetworkPolicy: %q", got)
		}
		select {
		case <-w.Changed():
			t.Errorf("Changed signalled for a pod while no NetworkPolicy exists")
		default:
		}
	})

	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "shop", Name: "web-from-shop",
			Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("y", 1024)},
		},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "shop"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptr(intstr.FromString("http"))}},
			}},
		},
	}
	t.Run("PolicyAdded", func(t *testing.T) {
		drain(w)
		var err error
		if np, err = cs.NetworkingV1().NetworkPolicies("shop").Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		expectSignal(t, w, "a NetworkPolicy was created")
		eventually(t, "the policy in Input", func() error {
			in := w.Input()
			if !w.Active() || len(in.Policies) != 1 || in.Policies[0].Name != "web-from-shop" {
				return fmt.Errorf("Active %v, policies %d", w.Active(), len(in.Policies))
			}
			return nil
		})
		// The compiler reads it: shop/web-1 is policed on its veth.
		rs := policy.Compile(w.Input())
		if !rs.Active || len(rs.Problems) != 0 {
			t.Fatalf("compiled: active %v, problems %q", rs.Active, rs.Problems)
		}
	})

	t.Run("PodLabelled", func(t *testing.T) {
		drain(w)
		n := rec.count()
		patch := []byte(`{"metadata":{"labels":{"tier":"front"}}}`)
		if _, err := cs.CoreV1().Pods("shop").Patch(ctx, "web-1", "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		expectSignal(t, w, "a pod's labels changed")
		rec.waitLine(t, n, "object=shop/web-1")
		if lp := findLocal(w.Input().Local, "shop", "web-1"); lp == nil || lp.Labels["tier"] != "front" {
			t.Errorf("shop/web-1 after labelling: %+v", lp)
		}
	})

	// A status-only change (the kubelet's conditions) must not wake the caller. Signals
	// coalesce, so the test reads which events poked: a later change to another pod goes
	// through the same handler in order, so once it is logged the status change has been
	// handled too.
	t.Run("StatusOnlyChangeDoesNotSignal", func(t *testing.T) {
		n := rec.count()
		pod, err := cs.CoreV1().Pods("shop").Get(ctx, "web-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status.Conditions = append(pod.Status.Conditions, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()})
		pod.Status.Message = "scheduled by the test"
		updated, err := cs.CoreV1().Pods("shop").UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// The annotation-only change of a policy is not read either.
		patch := []byte(`{"metadata":{"annotations":{"example.com/owner":"team-shop"}}}`)
		if _, err := cs.NetworkingV1().NetworkPolicies("shop").Patch(ctx, "web-from-shop", "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the watcher saw the status change", func() error {
			o, ok, err := w.pods.GetStore().GetByKey("shop/web-1")
			if err != nil || !ok {
				return fmt.Errorf("shop/web-1 not cached (%v)", err)
			}
			if rv := o.(*corev1.Pod).ResourceVersion; rv != updated.ResourceVersion {
				return fmt.Errorf("cached resource version %s, want %s", rv, updated.ResourceVersion)
			}
			return nil
		})
		// Barrier: a change that does matter, to another pod and to another policy.
		if _, err := cs.CoreV1().Pods("db").Patch(ctx, "pg-0", "application/merge-patch+json", []byte(`{"metadata":{"labels":{"role":"primary"}}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		other := np.DeepCopy()
		other.ObjectMeta = metav1.ObjectMeta{Namespace: "shop", Name: "barrier"}
		if _, err := cs.NetworkingV1().NetworkPolicies("shop").Create(ctx, other, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		rec.waitLine(t, n, "object=db/pg-0")
		rec.waitLine(t, n, "object=shop/barrier")
		for _, l := range rec.since(n) {
			if strings.Contains(l, "object=shop/web-1") || strings.Contains(l, "object=shop/web-from-shop") {
				t.Errorf("signalled for a change policy does not read: %q", l)
			}
		}
		if err := cs.NetworkingV1().NetworkPolicies("shop").Delete(ctx, "barrier", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("PodGetsAddresses", func(t *testing.T) {
		drain(w)
		pod, err := cs.CoreV1().Pods("shop").Get(ctx, "web-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status.Phase = corev1.PodRunning
		pod.Status.PodIP = "10.244.1.7"
		pod.Status.PodIPs = []corev1.PodIP{{IP: "10.244.1.7"}, {IP: "fd00:10:244:1::7"}}
		if _, err := cs.CoreV1().Pods("shop").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		expectSignal(t, w, "a pod got addresses")
		want := []netip.Addr{netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("fd00:10:244:1::7")}
		eventually(t, "shop/web-1 with its addresses", func() error {
			in := w.Input()
			p, lp := findPod(in.Pods, "shop", "web-1"), findLocal(in.Local, "shop", "web-1")
			if p == nil || lp == nil || !slices.Equal(p.IPs, want) || !slices.Equal(lp.IPs, want) {
				return fmt.Errorf("pod %+v, local %+v", p, lp)
			}
			return nil
		})
	})

	t.Run("NamespaceLabelled", func(t *testing.T) {
		drain(w)
		if _, err := cs.CoreV1().Namespaces().Patch(ctx, "db", "application/merge-patch+json", []byte(`{"metadata":{"labels":{"team":"shop"}}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		expectSignal(t, w, "a namespace's labels changed")
		eventually(t, "db labelled team=shop in Input", func() error {
			if l := w.Input().Namespaces["db"]; l["team"] != "shop" {
				return fmt.Errorf("db labels %v", l)
			}
			return nil
		})
	})

	t.Run("HostNetworkAndFinishedPodsAreNotLocal", func(t *testing.T) {
		hn := testPod("shop", "agent", thisNode, nil)
		hn.Spec.HostNetwork = true
		if _, err := cs.CoreV1().Pods("shop").Create(ctx, hn, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		job, err := cs.CoreV1().Pods("shop").Create(ctx, testPod("shop", "job-1", thisNode, nil), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		job.Status.Phase = corev1.PodSucceeded
		job.Status.PodIPs = []corev1.PodIP{{IP: "10.244.1.9"}}
		if _, err := cs.CoreV1().Pods("shop").UpdateStatus(ctx, job, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "both pods seen, job-1 finished", func() error {
			in := w.Input()
			a, j := findPod(in.Pods, "shop", "agent"), findPod(in.Pods, "shop", "job-1")
			if a == nil || !a.HostNetwork || j == nil {
				return fmt.Errorf("agent %+v, job-1 %+v", a, j)
			}
			o, _, _ := w.pods.GetStore().GetByKey("shop/job-1")
			if p, ok := o.(*corev1.Pod); !ok || p.Status.Phase != corev1.PodSucceeded {
				return fmt.Errorf("job-1 not finished in the cache yet")
			}
			return nil
		})
		in := w.Input()
		if lp := findLocal(in.Local, "shop", "agent"); lp != nil {
			t.Errorf("host-network pod in Local: %+v", lp)
		}
		if lp := findLocal(in.Local, "shop", "job-1"); lp != nil {
			t.Errorf("finished pod in Local: %+v", lp)
		}
		if j := findPod(in.Pods, "shop", "job-1"); len(j.IPs) != 0 {
			t.Errorf("finished pod keeps addresses %v: they may be another pod's", j.IPs)
		}
	})

	t.Run("CacheIsLean", func(t *testing.T) {
		o, ok, err := w.pods.GetStore().GetByKey("shop/web-1")
		if err != nil || !ok {
			t.Fatalf("shop/web-1 not cached: %v", err)
		}
		p := o.(*corev1.Pod)
		full, err := cs.CoreV1().Pods("shop").Get(ctx, "web-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(full.ManagedFields) == 0 || len(full.Annotations) == 0 {
			t.Fatalf("the API object has no managedFields or annotations to drop: %+v", full.ObjectMeta)
		}
		if p.ManagedFields != nil || p.Annotations != nil || p.OwnerReferences != nil {
			t.Errorf("cached pod keeps managedFields %d, annotations %v, owners %v", len(p.ManagedFields), p.Annotations, p.OwnerReferences)
		}
		if len(p.Status.Conditions) != 0 || p.Status.Message != "" || p.Spec.ServiceAccountName != "" || len(p.Spec.Tolerations) != 0 {
			t.Errorf("cached pod keeps status or spec policy does not read: %+v", p)
		}
		want := []corev1.Container{{Name: "web", Ports: []corev1.ContainerPort{{Name: "http", Protocol: corev1.ProtocolTCP, ContainerPort: 8080}}}}
		if !equalContainers(p.Spec.Containers, want) {
			t.Errorf("cached containers %+v, want only web's named port", p.Spec.Containers)
		}
		if p.Spec.NodeName != thisNode || p.Labels["app"] != "web" || len(p.Status.PodIPs) != 2 || p.Status.Phase != corev1.PodRunning {
			t.Errorf("cached pod lost what policy reads: %+v", p)
		}

		o, ok, _ = w.nps.GetStore().GetByKey("shop/web-from-shop")
		if !ok {
			t.Fatal("policy not cached")
		}
		cp := o.(*networkingv1.NetworkPolicy)
		if cp.ManagedFields != nil || cp.Annotations != nil {
			t.Errorf("cached policy keeps managedFields %d, annotations %v", len(cp.ManagedFields), cp.Annotations)
		}
		if len(cp.Spec.Ingress) != 1 || cp.Spec.PodSelector.MatchLabels["app"] != "web" {
			t.Errorf("cached policy lost its spec: %+v", cp.Spec)
		}
		o, ok, _ = w.nss.GetStore().GetByKey("shop")
		if !ok {
			t.Fatal("namespace not cached")
		}
		ns := o.(*corev1.Namespace)
		if ns.ManagedFields != nil || ns.Annotations != nil || len(ns.Spec.Finalizers) != 0 || ns.Status.Phase != "" || ns.Labels["team"] != "shop" {
			t.Errorf("cached namespace %+v, want its name and labels only", ns)
		}
	})

	t.Run("PodDeleted", func(t *testing.T) {
		drain(w)
		if err := cs.CoreV1().Pods("shop").Delete(ctx, "web-1", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
			t.Fatal(err)
		}
		expectSignal(t, w, "a pod was deleted")
		eventually(t, "shop/web-1 gone", func() error {
			in := w.Input()
			if findPod(in.Pods, "shop", "web-1") != nil || findLocal(in.Local, "shop", "web-1") != nil {
				return fmt.Errorf("still there")
			}
			return nil
		})
	})

	t.Run("LastPolicyDeleted", func(t *testing.T) {
		drain(w)
		if err := cs.NetworkingV1().NetworkPolicies("shop").Delete(ctx, "web-from-shop", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		expectSignal(t, w, "the last NetworkPolicy was deleted")
		eventually(t, "inactive", func() error {
			if w.Active() {
				return fmt.Errorf("still active")
			}
			return nil
		})
		if rs := policy.Compile(w.Input()); rs.Active {
			t.Errorf("compiled active without any NetworkPolicy")
		}
	})
}

func equalContainers(a, b []corev1.Container) bool {
	return slices.EqualFunc(a, b, func(x, y corev1.Container) bool {
		return x.Name == y.Name && x.Image == y.Image && len(x.Env) == 0 && len(y.Env) == 0 && slices.Equal(x.Ports, y.Ports)
	})
}

func ptr[T any](v T) *T { return &v }
