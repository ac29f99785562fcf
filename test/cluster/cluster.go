// Package cluster builds a complete Kubernetes cluster with podroute as its network, out of
// real components on one machine, the way kubeadm leaves one:
//
//   - a control-plane node (package test/lab, Options.ControlPlane): etcd and kube-apiserver
//     in its network namespace on the rack segment, with kube-controller-manager (node CIDR
//     allocation, every default controller) and kube-scheduler; it runs a kubelet too,
//     tainted NoSchedule, so that podroute's agent and kube-proxy run there and the API
//     server reaches pods, Services and kubelets the way a real control-plane node does;
//   - worker nodes (three by default), each a network namespace with containerd and a
//     kubelet, and a host name of its own;
//   - kube-proxy as a DaemonSet (iptables or nftables mode), CoreDNS with the kube-dns
//     Service, and podroute installed with `kubectl apply -f deploy/` (the agent's DaemonSet
//     and the LoadBalancer IP allocator's Deployment);
//   - every image imported offline into each node's containerd: nothing is pulled.
//
// The cluster is dual-stack: pods and nodes have IPv4 and IPv6 addresses, Services are
// IPv4 unless they ask for IPv6.
//
// Tests use it through Start; `make cluster` runs TestCluster, which holds it for people to
// use, and `make conformance` runs Kubernetes' own e2e suite against it (test/conformance).
package cluster

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podroute/podroute/test/kube"
	"github.com/podroute/podroute/test/lab"
)

const (
	// ControlPlaneName is the control-plane node's name.
	ControlPlaneName = "control-plane"
	// ServiceCIDRs is the apiserver's --service-cluster-ip-range.
	ServiceCIDRs = "10.96.0.0/16,fd00:10:96::/108"
	// DNSServiceIP is the kube-dns Service's cluster IP (kubelet's clusterDNS).
	DNSServiceIP = "10.96.0.10"
	// DNSDomain is the cluster's DNS domain.
	DNSDomain = "cluster.local"
	// Release is the podroute image tag the cluster runs (built from the working tree).
	Release = "v0.0.0-cluster"

	// ProxyModeIPTables and ProxyModeNFTables are kube-proxy's Linux modes.
	ProxyModeIPTables = "iptables"
	ProxyModeNFTables = "nftables"

	readyTimeout = 5 * time.Minute
)

//go:embed manifests/*.yaml
var manifests embed.FS

// Options configures Start.
type Options struct {
	// Workers is the number of worker nodes (default 3: the e2e suite's node-spreading
	// specs want three schedulable nodes).
	Workers int
	// ProxyMode is kube-proxy's mode: ProxyModeIPTables (default) or ProxyModeNFTables.
	ProxyMode string
	// Dir, when set, receives a copy of the host's admin kubeconfig as Dir/kubeconfig (for
	// `make cluster`); the cluster's own files live in the test's temporary directory.
	Dir string
}

// Cluster is a running cluster.
type Cluster struct {
	Lab *lab.Lab
	// Nodes are the control-plane node first, then the workers; Kubelets the same order.
	Nodes    []*lab.Node
	Kubelets []*lab.Kubelet
	// Kubeconfig is an admin kubeconfig for this machine's own network namespace (the API
	// server through a relay on 127.0.0.1): for kubectl and e2e.test run on the host.
	Kubeconfig string
	// NodeKubeconfig is an admin kubeconfig for use inside the nodes' namespaces
	// (`ip netns exec <node> kubectl ...`): the API server at the control-plane node.
	NodeKubeconfig string
	ProxyMode      string
}

// Start builds the cluster and waits until every node is Ready and every kube-system and
// podroute-system pod is ready. Everything is torn down in t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	start := time.Now()
	if opts.Workers == 0 {
		opts.Workers = 3
	}
	switch opts.ProxyMode {
	case "":
		opts.ProxyMode = ProxyModeIPTables
	case ProxyModeIPTables, ProxyModeNFTables:
	default:
		t.Fatalf("cluster: kube-proxy mode %q: want %s or %s", opts.ProxyMode, ProxyModeIPTables, ProxyModeNFTables)
	}
	imgs, err := Images()
	if err != nil {
		t.Fatalf("cluster: images: %v", err)
	}

	l := lab.New(t, lab.Options{
		ControlPlane: ControlPlaneName,
		Kube:         kube.Options{ServiceCIDR: ServiceCIDRs},
	})
	c := &Cluster{
		Lab:            l,
		Kubeconfig:     l.Kube.Kubeconfig,
		NodeKubeconfig: l.Kubeconfig,
		ProxyMode:      opts.ProxyMode,
	}
	clusterCIDRs := []string{lab.DefaultClusterV4.String(), lab.DefaultClusterV6.String()}
	l.Kube.StartControllerManager(t, kube.ControllerManagerOptions{ClusterCIDRs: clusterCIDRs})
	l.Kube.StartScheduler(t)

	agentTar := lab.AgentImage(t, l.BinDir(), Release)
	tars := append([]string{agentTar}, imgs.Tars()...)

	resolv := filepath.Join(l.Dir, "resolv.conf")
	// The nodes' upstream resolver, which CoreDNS forwards names outside the cluster to: an
	// address of the lab's own (the rack gateway, where nothing answers), so no query ever
	// leaves the machine.
	if err := os.WriteFile(resolv, []byte("nameserver "+lab.FabricIPv4.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kubeletConfig := map[string]any{
		"clusterDNS":    []string{DNSServiceIP},
		"clusterDomain": DNSDomain,
		"resolvConf":    resolv,
	}

	c.Nodes = append(c.Nodes, l.ControlPlane)
	for i := 1; i <= opts.Workers; i++ {
		c.Nodes = append(c.Nodes, l.AddNode(t, fmt.Sprintf("worker-%d", i), lab.NodeOptions{Index: i + 1, NoAgent: true, NoPodCIDR: true}))
	}
	c.Kubelets = make([]*lab.Kubelet, len(c.Nodes))
	var wg sync.WaitGroup
	errs := make([]error, len(c.Nodes))
	for i, n := range c.Nodes {
		if err := n.EnableForwarding(); err != nil {
			t.Fatal(err)
		}
		c.Kubelets[i] = n.StartKubelet(t, lab.KubeletOptions{HostPaths: true, Config: kubeletConfig})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, tar := range tars {
				if _, err := c.Kubelets[i].Ctr("images", "import", tar); err != nil {
					errs[i] = fmt.Errorf("%s: import %s: %w", n.Name, tar, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("cluster: %d kubelet nodes up, images imported, in %v", len(c.Nodes), time.Since(start).Round(time.Second))
	// Registered after the kubelets' teardown, so it runs before it: the controllers would
	// otherwise replace the pods the teardown deletes, and it would wait for sandboxes that
	// keep coming back.
	t.Cleanup(c.orphanWorkloads)

	ctx, cancel := context.WithTimeout(context.Background(), 2*readyTimeout)
	defer cancel()
	dir := t.TempDir()
	// kube-proxy first: podroute's agents reach the API server through the "kubernetes"
	// Service, as any pod does.
	c.apply(ctx, t, dir, "kube-proxy.yaml", map[string]string{
		"Mode":         opts.ProxyMode,
		"ClusterCIDRs": strings.Join(clusterCIDRs, ","),
		"Server":       l.APIServerURL,
		"Image":        imgs.KubeProxy,
	})
	deploy := filepath.Join(dir, "deploy")
	lab.WriteDeploy(t, deploy, lab.DeployOptions{
		Release:      Release,
		ClusterCIDRs: strings.Join(clusterCIDRs, ","),
		ServiceCIDRs: ServiceCIDRs,
	})
	c.kubectl(ctx, t, "apply", "-f", filepath.Join(deploy, "crds"))
	c.kubectl(ctx, t, "wait", "--for", "condition=established", "--timeout=60s",
		"crd/bgppeers.podroute.io", "crd/bgpconfigurations.podroute.io", "crd/loadbalancerippools.podroute.io")
	c.kubectl(ctx, t, "apply", "-f", deploy)
	c.apply(ctx, t, dir, "coredns.yaml", map[string]string{
		"Domain":    DNSDomain,
		"ClusterIP": DNSServiceIP,
		"Image":     imgs.CoreDNS,
	})

	if err := c.WaitReady(ctx); err != nil {
		c.dumpState(t)
		t.Fatalf("cluster: %v", err)
	}
	if opts.Dir != "" {
		if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(c.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(opts.Dir, "kubeconfig")
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
		c.Kubeconfig = dst
		t.Cleanup(func() { os.Remove(dst) })
	}
	t.Logf("cluster: ready in %v (kube-proxy %s mode)", time.Since(start).Round(time.Second), opts.ProxyMode)
	return c
}

// apply renders a manifest of manifests/ with data and applies it with kubectl.
func (c *Cluster) apply(ctx context.Context, t testing.TB, dir, name string, data map[string]string) {
	t.Helper()
	src, err := manifests.ReadFile("manifests/" + name)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := template.New(name).Option("missingkey=error").Parse(string(src))
	if err != nil {
		t.Fatalf("cluster: %s: %v", name, err)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, data); err != nil {
		t.Fatalf("cluster: %s: %v", name, err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	c.kubectl(ctx, t, "apply", "-f", path)
}

func (c *Cluster) kubectl(ctx context.Context, t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.Lab.Kube.Kubectl(ctx, args...)
	if err != nil {
		t.Fatalf("cluster: %v", err)
	}
	return out
}

// WaitReady waits until every node is Ready and every pod of kube-system and
// podroute-system is Ready, with the DaemonSets on every node and CoreDNS at its replicas.
func (c *Cluster) WaitReady(ctx context.Context) error {
	client := c.Lab.Kube.Client
	return lab.Poll(ctx, readyTimeout, time.Second, func() error {
		nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(nodes.Items) != len(c.Nodes) {
			return fmt.Errorf("%d Node objects, want %d", len(nodes.Items), len(c.Nodes))
		}
		for _, n := range nodes.Items {
			if !lab.NodeReady(&n) {
				return fmt.Errorf("node %s not Ready", n.Name)
			}
		}
		for _, ds := range []struct{ ns, name string }{{"kube-system", "kube-proxy"}, {"podroute-system", "podroute-agent"}} {
			d, err := client.AppsV1().DaemonSets(ds.ns).Get(ctx, ds.name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if d.Status.NumberReady != int32(len(c.Nodes)) {
				return fmt.Errorf("daemonset %s/%s: %d of %d nodes ready", ds.ns, ds.name, d.Status.NumberReady, len(c.Nodes))
			}
		}
		// Deployments: their pods may not exist yet, which the pod check below cannot see.
		for _, dep := range []struct{ ns, name string }{{"kube-system", "coredns"}, {"podroute-system", "podroute-lbipam"}} {
			d, err := client.AppsV1().Deployments(dep.ns).Get(ctx, dep.name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if d.Spec.Replicas == nil || d.Status.ReadyReplicas != *d.Spec.Replicas || d.Status.UpdatedReplicas != *d.Spec.Replicas {
				return fmt.Errorf("deployment %s/%s: %d ready, %d updated replicas", dep.ns, dep.name, d.Status.ReadyReplicas, d.Status.UpdatedReplicas)
			}
		}
		for _, ns := range []string{"kube-system", "podroute-system"} {
			pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, p := range pods.Items {
				if !lab.PodReady(&p) {
					return fmt.Errorf("pod %s/%s on %s not ready: %s", ns, p.Name, p.Spec.NodeName, p.Status.Phase)
				}
			}
		}
		return nil
	})
}

// dumpState logs what a failed start needs to be understood: nodes, pods, events, and the
// logs of every kube-system and podroute-system container.
func (c *Cluster) dumpState(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"get", "nodes", "-o", "wide"},
		{"get", "pods", "-A", "-o", "wide"},
		{"get", "events", "-A", "--sort-by=.lastTimestamp"},
	} {
		out, _ := c.Lab.Kube.Kubectl(ctx, args...)
		t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
	}
	for _, ns := range []string{"kube-system", "podroute-system"} {
		pods, err := c.Lab.Kube.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			for _, k := range c.Kubelets {
				if k.Node.Name != p.Spec.NodeName {
					continue
				}
				for _, ctr := range p.Spec.Containers {
					if log, err := k.ContainerLog(p, ctr.Name); err == nil {
						t.Logf("log of %s/%s %s on %s:\n%s", ns, p.Name, ctr.Name, k.Node.Name, lab.Tail(log, 40))
					}
				}
			}
		}
	}
}

// orphanWorkloads deletes every namespace's controllers of pods (DaemonSets, Deployments,
// ReplicaSets, ReplicationControllers, StatefulSets, Jobs), leaving their pods to the kubelets'
// teardown.
func (c *Cluster) orphanWorkloads() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	orphan := metav1.DeletePropagationOrphan
	del := metav1.DeleteOptions{PropagationPolicy: &orphan}
	all := metav1.ListOptions{}
	client := c.Lab.Kube.Client
	nss, err := client.CoreV1().Namespaces().List(ctx, all)
	if err != nil {
		return
	}
	for _, n := range nss.Items {
		ns := n.Name
		_ = client.AppsV1().DaemonSets(ns).DeleteCollection(ctx, del, all)
		_ = client.AppsV1().Deployments(ns).DeleteCollection(ctx, del, all)
		_ = client.AppsV1().ReplicaSets(ns).DeleteCollection(ctx, del, all)
		_ = client.AppsV1().StatefulSets(ns).DeleteCollection(ctx, del, all)
		_ = client.CoreV1().ReplicationControllers(ns).DeleteCollection(ctx, del, all)
		_ = client.BatchV1().Jobs(ns).DeleteCollection(ctx, del, all)
	}
}
