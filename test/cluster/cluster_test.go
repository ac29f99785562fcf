package cluster_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podroute/podroute/test/cluster"
	"github.com/podroute/podroute/test/cniutil"
	"github.com/podroute/podroute/test/lab"
)

// TestCluster brings the complete cluster up and checks what a cluster network owes its
// users beyond pod routing, each a quick check of its own (the e2e suite in
// test/conformance is the thorough judge): cluster DNS, a ClusterIP Service across nodes,
// NodePort from another node, hostPort, and the control plane reaching pods and kubelets
// (API server proxy, logs, exec).
//
// `make cluster` runs it with PODROUTE_CLUSTER_HOLD=1: the cluster then stays up, with its
// kubeconfig in build/cluster/kubeconfig, until Ctrl-C or SIGTERM (make cluster-down).
// PODROUTE_CLUSTER_PROXY_MODE picks kube-proxy's mode (iptables, the default, or nftables).
func TestCluster(t *testing.T) {
	hold := os.Getenv("PODROUTE_CLUSTER_HOLD") == "1"
	opts := cluster.Options{ProxyMode: os.Getenv("PODROUTE_CLUSTER_PROXY_MODE")}
	if hold {
		root, err := cniutil.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		opts.Dir = filepath.Join(root, "build", "cluster")
	}
	c := cluster.Start(t, opts)
	u := &user{t: t, c: c, ns: "podroute-check"}
	u.kubectl("create", "namespace", u.ns)

	// Two web servers, one on each worker, behind a Service; a client on the first worker.
	w1, w2 := c.Nodes[1], c.Nodes[2]
	for i, n := range []*lab.Node{w1, w2} {
		u.pod(fmt.Sprintf("web-%d", i+1), n.Name, map[string]string{"app": "web"}, nil, "netexec", "--http-port=8080", "--udp-port=8081")
	}
	u.pod("hostport", w2.Name, nil, []corev1.ContainerPort{{ContainerPort: 8080, HostPort: 18080, Protocol: corev1.ProtocolTCP}}, "netexec", "--http-port=8080")
	u.pod("client", w1.Name, nil, nil, "pause")
	u.hostNetworkPod("hostnet", w1.Name, "netexec", "--http-port=18081", "--udp-port=-1")
	for _, p := range []string{"web-1", "web-2", "hostport", "client", "hostnet"} {
		u.waitRunning(p)
	}
	svc := u.service("web", corev1.ServiceTypeNodePort, map[string]string{"app": "web"}, 8080)

	t.Run("DNS", func(t *testing.T) {
		u := u.with(t)
		out := u.exec("client", "dig", "+short", "+search", "kubernetes.default")
		if strings.TrimSpace(out) != "10.96.0.1" {
			t.Errorf("kubernetes.default resolves to %q, want 10.96.0.1", out)
		}
		out = u.exec("client", "dig", "+short", "web."+u.ns+".svc."+cluster.DNSDomain)
		if strings.TrimSpace(out) != svc.Spec.ClusterIP {
			t.Errorf("web.%s resolves to %q, want %s", u.ns, out, svc.Spec.ClusterIP)
		}
	})
	t.Run("ClusterIP", func(t *testing.T) {
		u := u.with(t)
		seen := u.hostnames("client", fmt.Sprintf("http://web.%s:8080/hostname", u.ns), 2)
		t.Logf("ClusterIP Service answered from %v", seen)
	})
	t.Run("NodePort", func(t *testing.T) {
		port := svc.Spec.Ports[0].NodePort
		// From the first worker's own namespace (not a pod) to the second worker's address.
		url := fmt.Sprintf("http://%s/hostname", net.JoinHostPort(w2.IPv4.String(), fmt.Sprint(port)))
		lab.Eventually(t, 60*time.Second, "NodePort from "+w1.Name, func() error {
			out, err := w1.Exec(context.Background(), "curl", "-sS", "--max-time", "3", url)
			if err == nil && !strings.HasPrefix(out, "web-") {
				err = fmt.Errorf("answer %q", out)
			}
			return err
		})
	})
	t.Run("HostPort", func(t *testing.T) {
		u := u.with(t)
		for _, addr := range []string{w2.IPv4.String(), w2.IPv6.String()} {
			url := fmt.Sprintf("http://%s/hostname", net.JoinHostPort(addr, "18080"))
			lab.Eventually(t, 60*time.Second, "hostPort at "+url, func() error {
				out := ""
				var err error
				// From a pod on the other worker, and from the other worker itself.
				if out, err = u.tryExec("client", "curl", "-sS", "--max-time", "3", url); err == nil {
					out, err = w1.Exec(context.Background(), "curl", "-sS", "--max-time", "3", url)
				}
				if err == nil && strings.TrimSpace(out) != "hostport" {
					err = fmt.Errorf("answer %q", out)
				}
				return err
			})
		}
	})
	t.Run("HostNetworkHostname", func(t *testing.T) {
		u := u.with(t)
		// A host-network pod answers with its node's host name, as on a machine of its own
		// (the e2e suite's hostNetwork Service checks expect exactly that).
		url := fmt.Sprintf("http://%s/hostname", net.JoinHostPort(w1.IPv4.String(), "18081"))
		if out := strings.TrimSpace(u.exec("client", "curl", "-sS", "--max-time", "3", url)); out != w1.Name {
			t.Errorf("host-network pod on %s says its host name is %q", w1.Name, out)
		}
	})
	t.Run("AgentSeesKubeProxy", func(t *testing.T) {
		// Every agent found kube-proxy on its node, in the cluster's mode, and reports no
		// problem with it.
		for _, n := range c.Nodes {
			lab.Eventually(t, 60*time.Second, n.Name+": podroutectl status shows kube-proxy", func() error {
				st, err := n.Status()
				if err != nil {
					return err
				}
				if st.KubeProxyMode != c.ProxyMode {
					return fmt.Errorf("kube-proxy mode %q, want %q (problems: %v)", st.KubeProxyMode, c.ProxyMode, st.Problems)
				}
				for _, p := range st.Problems {
					if strings.Contains(strings.ToLower(fmt.Sprint(p)), "kube-proxy") {
						return fmt.Errorf("problem reported: %v", p)
					}
				}
				return nil
			})
		}
	})
	t.Run("ControlPlaneReachesPods", func(t *testing.T) {
		u := u.with(t)
		// The API server's pod and service proxies dial pods from the control-plane node.
		for _, path := range []string{
			fmt.Sprintf("/api/v1/namespaces/%s/pods/web-2:8080/proxy/hostname", u.ns),
			fmt.Sprintf("/api/v1/namespaces/%s/services/web:http/proxy/hostname", u.ns),
		} {
			lab.Eventually(t, 30*time.Second, "GET "+path, func() error {
				out, err := u.c.Lab.Kube.Kubectl(context.Background(), "get", "--raw", path)
				if err == nil && !strings.HasPrefix(out, "web-") {
					err = fmt.Errorf("answer %q", out)
				}
				return err
			})
		}
		// Logs and exec go through the kubelets.
		if out := u.kubectl("-n", u.ns, "logs", "web-1"); !strings.Contains(out, "8080") {
			t.Errorf("kubectl logs web-1: %q", out)
		}
	})

	if hold && !t.Failed() {
		fmt.Printf("\nThe cluster is up (kube-proxy %s mode): %d nodes, podroute, kube-proxy, CoreDNS.\n", c.ProxyMode, len(c.Nodes))
		fmt.Printf("  export KUBECONFIG=%s\n  kubectl get nodes -o wide\n  kubectl get pods -A -o wide\n", c.Kubeconfig)
		fmt.Printf("Inside a node (its kubeconfig is %s):\n", c.NodeKubeconfig)
		for _, n := range c.Nodes {
			fmt.Printf("  ip netns exec %s bash   # %s, %s / %s\n", n.NetNS.Name, n.Name, n.IPv4, n.IPv6)
		}
		fmt.Printf("A pod is reached from any node, e.g.:\n  ip netns exec %s curl http://%s:8080/hostname\n", c.Nodes[0].NetNS.Name, u.podIP("web-1"))
		fmt.Printf("e2e.test runs against it as against any cluster:\n  %s/e2e.test --kubeconfig=%s --ginkgo.focus='...'\n", c.Lab.Kube.BinDir, c.Kubeconfig)
		fmt.Printf("Ctrl-C (or make cluster-down) tears it down.\n")
		if err := os.WriteFile(filepath.Join(filepath.Dir(c.Kubeconfig), "pid"), []byte(fmt.Sprint(os.Getpid())), 0o644); err != nil {
			t.Fatal(err)
		}
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		<-sig
		signal.Stop(sig)
		os.Remove(filepath.Join(filepath.Dir(c.Kubeconfig), "pid"))
		fmt.Printf("\ntearing the cluster down\n")
	}
}

// user acts on the cluster as a person with kubectl would.
type user struct {
	t  testing.TB
	c  *cluster.Cluster
	ns string
}

func (u *user) with(t testing.TB) *user { return &user{t: t, c: u.c, ns: u.ns} }

func (u *user) kubectl(args ...string) string {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := u.c.Lab.Kube.Kubectl(ctx, args...)
	if err != nil {
		u.t.Fatal(err)
	}
	return out
}

func (u *user) tryExec(pod string, cmd ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return u.c.Lab.Kube.Kubectl(ctx, append([]string{"-n", u.ns, "exec", pod, "--"}, cmd...)...)
}

func (u *user) exec(pod string, cmd ...string) string {
	u.t.Helper()
	out, err := u.tryExec(pod, cmd...)
	if err != nil {
		u.t.Fatal(err)
	}
	return out
}

// pod creates an agnhost pod on node running agnhost's args.
func (u *user) pod(name, node string, labels map[string]string, ports []corev1.ContainerPort, args ...string) {
	u.t.Helper()
	u.createPod(agnhostPod(name, node, labels, ports, args))
}

// hostNetworkPod creates an agnhost pod in node's network namespace.
func (u *user) hostNetworkPod(name, node string, args ...string) {
	u.t.Helper()
	p := agnhostPod(name, node, nil, nil, args)
	p.Spec.HostNetwork = true
	u.createPod(p)
}

func agnhostPod(name, node string, labels map[string]string, ports []corev1.ContainerPort, args []string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name: "agnhost", Image: cluster.AgnhostImage, ImagePullPolicy: corev1.PullNever,
				Args: args, Ports: ports,
			}},
		},
	}
}

func (u *user) createPod(p *corev1.Pod) {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := u.c.Lab.Kube.Client.CoreV1().Pods(u.ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		u.t.Fatal(err)
	}
}

func (u *user) waitRunning(name string) {
	u.t.Helper()
	lab.Eventually(u.t, 2*time.Minute, "pod "+name+" running", func() error {
		p, err := u.c.Lab.Kube.Client.CoreV1().Pods(u.ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("phase %s %v", p.Status.Phase, p.Status.ContainerStatuses)
		}
		return nil
	})
}

func (u *user) podIP(name string) string {
	p, err := u.c.Lab.Kube.Client.CoreV1().Pods(u.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return "?"
	}
	return p.Status.PodIP
}

// service creates a Service of type typ for the pods with labels, with one TCP port named
// http, same target port.
func (u *user) service(name string, typ corev1.ServiceType, labels map[string]string, port int32) *corev1.Service {
	u.t.Helper()
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Type:     typ,
			Selector: labels,
			Ports: []corev1.ServicePort{{
				Name: "http", Port: port, TargetPort: intstr.FromInt32(port), Protocol: corev1.ProtocolTCP,
			}},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := u.c.Lab.Kube.Client.CoreV1().Services(u.ns).Create(ctx, s, metav1.CreateOptions{})
	if err != nil {
		u.t.Fatal(err)
	}
	return s
}

// hostnames asks url from pod until n different backends have answered.
func (u *user) hostnames(pod, url string, n int) map[string]bool {
	u.t.Helper()
	seen := map[string]bool{}
	lab.Eventually(u.t, 60*time.Second, fmt.Sprintf("%d backends behind %s", n, url), func() error {
		out, err := u.tryExec(pod, "curl", "-sS", "--max-time", "3", url)
		if err != nil {
			return err
		}
		seen[strings.TrimSpace(out)] = true
		if len(seen) < n {
			return fmt.Errorf("answers from %v", seen)
		}
		return nil
	})
	return seen
}
