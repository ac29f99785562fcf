package kube

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
)

const unprivilegedUser = "podroute-unprivileged"

func TestCluster(t *testing.T) {
	c := Start(t, Options{Users: []User{{Name: unprivilegedUser, Groups: []string{"podroute:testers"}}}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("Version", func(t *testing.T) {
		v, err := c.Client.Discovery().ServerVersion()
		if err != nil {
			t.Fatalf("server version: %v", err)
		}
		if v.GitVersion != KubeVersion {
			t.Fatalf("apiserver reports %s, want %s (stale binary? rerun hack/kube/build.sh)", v.GitVersion, KubeVersion)
		}
	})

	t.Run("Kubeconfig", func(t *testing.T) {
		cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
		if err != nil {
			t.Fatalf("load %s: %v", c.Kubeconfig, err)
		}
		if cfg.Insecure || len(cfg.CAData) == 0 {
			t.Fatalf("kubeconfig must verify TLS with the cluster CA (insecure=%v, %d bytes of CA)", cfg.Insecure, len(cfg.CAData))
		}
		review := whoAmI(ctx, t, cfg)
		if review.Username != AdminUser || !slices.Contains(review.Groups, "system:masters") {
			t.Fatalf("kubeconfig authenticates as %q %v, want %q in system:masters", review.Username, review.Groups, AdminUser)
		}
	})

	t.Run("NodeLifecycle", func(t *testing.T) {
		const name = "node-a"
		podCIDRs := []string{"10.244.1.0/24", "fd00:10:244:1::/64"}
		node, err := c.CreateNode(ctx, name, podCIDRs, []string{"192.0.2.11"}, map[string]string{"podroute.io/rack": "r1"})
		if err != nil {
			t.Fatal(err)
		}
		if node.Spec.PodCIDR != podCIDRs[0] || !slices.Equal(node.Spec.PodCIDRs, podCIDRs) {
			t.Fatalf("created node podCIDR=%q podCIDRs=%v, want %v", node.Spec.PodCIDR, node.Spec.PodCIDRs, podCIDRs)
		}

		list, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("list nodes: %v", err)
		}
		if len(list.Items) != 1 || list.Items[0].Name != name {
			t.Fatalf("listed %d nodes %v, want only %s", len(list.Items), nodeNames(list.Items), name)
		}
		got := list.Items[0]
		if !slices.Equal(got.Spec.PodCIDRs, podCIDRs) {
			t.Errorf("listed podCIDRs %v, want %v", got.Spec.PodCIDRs, podCIDRs)
		}
		if ip := internalIP(&got); ip != "192.0.2.11" {
			t.Errorf("listed InternalIP %q, want 192.0.2.11 (addresses %v)", ip, got.Status.Addresses)
		}
		if got.Labels["podroute.io/rack"] != "r1" || got.Labels[corev1.LabelHostname] != name {
			t.Errorf("listed labels %v", got.Labels)
		}

		// Informer: the initial list must contain the node, then an
		// update and the deletion must arrive as events.
		events := make(chan string, 16)
		factory := informers.NewSharedInformerFactory(c.Client, 0)
		inf := factory.Core().V1().Nodes().Informer()
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { events <- "add " + obj.(*corev1.Node).Name },
			UpdateFunc: func(_, obj any) {
				n := obj.(*corev1.Node)
				events <- "update " + n.Name + " rack=" + n.Labels["podroute.io/rack"]
			},
			DeleteFunc: func(obj any) {
				if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = tomb.Obj
				}
				events <- "delete " + obj.(*corev1.Node).Name
			},
		}); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		factory.Start(stop)
		// Shutdown waits for the informers, which only end once stop closes.
		defer func() {
			close(stop)
			factory.Shutdown()
		}()
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			t.Fatal("node informer did not sync")
		}
		expectEvent(t, events, "add "+name)

		node.Labels["podroute.io/rack"] = "r2"
		if _, err := c.Client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("update node: %v", err)
		}
		expectEvent(t, events, "update "+name+" rack=r2")

		if err := c.DeleteNode(ctx, name); err != nil {
			t.Fatal(err)
		}
		expectEvent(t, events, "delete "+name)
		if _, err := c.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("get deleted node: err=%v, want NotFound", err)
		}
		if err := c.DeleteNode(ctx, name); !apierrors.IsNotFound(err) {
			t.Fatalf("second delete: err=%v, want NotFound", err)
		}
	})

	t.Run("RBAC", func(t *testing.T) {
		u, err := c.User(unprivilegedUser)
		if err != nil {
			t.Fatal(err)
		}
		cfg := c.RestConfigFor(u.Token)
		// Authenticated (not 401) but granted nothing beyond discovery.
		review := whoAmI(ctx, t, cfg)
		if review.Username != unprivilegedUser || !slices.Contains(review.Groups, "podroute:testers") {
			t.Fatalf("token authenticates as %q %v, want %q in podroute:testers", review.Username, review.Groups, unprivilegedUser)
		}
		client := kubernetes.NewForConfigOrDie(cfg)
		_, err = client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Fatalf("unprivileged list nodes: err=%v, want 403 Forbidden", err)
		}
		_, err = client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "intruder"}}, metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) {
			t.Fatalf("unprivileged create node: err=%v, want 403 Forbidden", err)
		}

		bad := kubernetes.NewForConfigOrDie(c.RestConfigFor("not-a-token"))
		if _, err := bad.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
			t.Fatalf("unknown token list nodes: err=%v, want 401 Unauthorized", err)
		}
	})

	t.Run("DefaultServiceAccount", func(t *testing.T) {
		if _, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			t.Fatalf("default/default ServiceAccount: %v", err)
		}
	})

	if err := c.Running(); err != nil {
		t.Fatalf("control plane died during the test: %v", err)
	}
}

// TestClusterIPv6 checks the IPv6 service range and an apiserver listening
// on ::1, as dual-stack tests will use.
func TestClusterIPv6(t *testing.T) {
	if l, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Fatalf("IPv6 loopback unavailable (%v); podroute tests need IPv6 enabled", err)
	} else {
		l.Close()
	}
	c := Start(t, Options{IPv6: true, BindAddress: "::1"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if !strings.HasPrefix(c.URL, "https://[::1]:") {
		t.Errorf("URL %s, want https://[::1]:port", c.URL)
	}
	// The apiserver's bootstrap controller creates the service after /readyz, in its own time.
	var svc *corev1.Service
	if err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		var err error
		svc, err = c.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	}); err != nil {
		t.Fatalf("kubernetes service: %v", err)
	}
	if ip := net.ParseIP(svc.Spec.ClusterIP); ip == nil || ip.To4() != nil {
		t.Fatalf("kubernetes service ClusterIP %q, want IPv6 from %s", svc.Spec.ClusterIP, c.ServiceCIDR)
	}
	node, err := c.CreateNode(ctx, "node-v6", []string{"fd00:10:244:2::/64"}, []string{"2001:db8::12"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if internalIP(node) != "2001:db8::12" || node.Spec.PodCIDR != "fd00:10:244:2::/64" {
		t.Fatalf("node %+v / %+v", node.Spec, node.Status.Addresses)
	}
}

// TestStartFailsWithoutBinaries checks that a machine without the binaries
// fails loudly with the fix, instead of skipping.
func TestStartFailsWithoutBinaries(t *testing.T) {
	ft := &fatalRecorder{TB: t}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		Start(ft, Options{BinDir: t.TempDir()})
	}()
	wg.Wait()
	if !strings.Contains(ft.msg, "hack/kube/build.sh") {
		t.Fatalf("Start without binaries: fatal message %q, want a pointer to hack/kube/build.sh", ft.msg)
	}
}

// fatalRecorder captures Fatalf instead of failing the real test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = strings.TrimSpace(fmt.Sprintf(format, args...))
	runtime.Goexit()
}

func whoAmI(ctx context.Context, t *testing.T, cfg *rest.Config) authnv1.UserInfo {
	t.Helper()
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview: %v", err)
	}
	return r.Status.UserInfo
}

func expectEvent(t *testing.T, events <-chan string, want string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case got := <-events:
			if got == want {
				return
			}
			t.Logf("informer event %q (waiting for %q)", got, want)
		case <-timeout:
			t.Fatalf("no informer event %q within 30s", want)
		}
	}
}

func internalIP(n *corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}

func nodeNames(nodes []corev1.Node) []string {
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	return names
}

// TestControlPlane: the controller manager allocates node pod CIDRs and runs DaemonSets, the
// scheduler binds their pods, and kubectl applies manifests, as a podroute install needs.
func TestControlPlane(t *testing.T) {
	c := Start(t, Options{})
	c.StartControllerManager(t, ControllerManagerOptions{ClusterCIDRs: []string{"10.244.0.0/16"}})
	c.StartScheduler(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	node, err := c.CreateNode(ctx, "node-a", nil, []string{"192.0.2.11"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(node.Spec.PodCIDRs) != 0 {
		t.Fatalf("node created with pod CIDRs %v", node.Spec.PodCIDRs)
	}
	// Room for pods, as a kubelet would report it: the scheduler fits none on a node
	// without allocatable pods.
	room := corev1.ResourceList{corev1.ResourcePods: resource.MustParse("10")}
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Capacity, n.Status.Allocatable = room, room
		_, err = c.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	poll(ctx, t, "node-a gets a pod CIDR", func() error {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(n.Spec.PodCIDRs) != 1 || !strings.HasPrefix(n.Spec.PodCIDRs[0], "10.244.") || !strings.HasSuffix(n.Spec.PodCIDRs[0], "/24") {
			return fmt.Errorf("spec.podCIDRs %v", n.Spec.PodCIDRs)
		}
		return nil
	})

	const manifest = `apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds, namespace: default}
spec:
  selector: {matchLabels: {app: ds}}
  template:
    metadata: {labels: {app: ds}}
    spec:
      tolerations: [{operator: Exists}]
      containers: [{name: c, image: example.invalid/c:1}]
`
	dir := t.TempDir()
	file := dir + "/ds.yaml"
	if err := writeFiles(map[string][]byte{file: []byte(manifest)}); err != nil {
		t.Fatal(err)
	}
	out, err := c.Kubectl(ctx, "apply", "-f", file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "daemonset.apps/ds created") {
		t.Fatalf("kubectl apply printed %q", out)
	}
	poll(ctx, t, "the DaemonSet's pod bound to node-a", func() error {
		pods, err := c.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=ds"})
		if err != nil {
			return err
		}
		if len(pods.Items) != 1 || pods.Items[0].Spec.NodeName != "node-a" {
			var where []string
			for _, p := range pods.Items {
				where = append(where, p.Name+"@"+p.Spec.NodeName)
				for _, cond := range p.Status.Conditions {
					where = append(where, cond.Message)
				}
			}
			return fmt.Errorf("pods: %v", where)
		}
		return nil
	})
	if err := c.Running(); err != nil {
		t.Fatal(err)
	}
}

func poll(ctx context.Context, t *testing.T, what string, f func() error) {
	t.Helper()
	for {
		err := f()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
