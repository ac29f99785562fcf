package kubelet_test

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podroute/podroute/test/cniutil"
	"github.com/podroute/podroute/test/kube"
	"github.com/podroute/podroute/test/lab"
)

const (
	agentNamespace = "podroute-system"
	agentDaemonSet = "podroute-agent"
	agentSelector  = "app.kubernetes.io/name=podroute-agent"
	// The two releases the install and the upgrade use: the same code, told apart by the
	// version the agent reports.
	releaseOld = "v0.0.0-e2e.1"
	releaseNew = "v0.0.0-e2e.2"
)

// TestDaemonSet installs podroute the way an operator does, `kubectl apply -f deploy/`, on two
// kubelet nodes with a controller manager (DaemonSet controller, node CIDR allocation) and a
// scheduler, and the agent's image imported into each node's containerd. Each node's
// containerd and kubelet run in a mount namespace of the node's own, so the DaemonSet's
// hostPath volumes (/etc/cni/net.d, /opt/cni/bin, /run/podroute) and the plugin's
// /var/lib/cni are the node's, not shared by the two nodes of this one machine.
//
// No kube-proxy runs, so the agents reach the API server through the optional ConfigMap
// kubernetes-services-endpoint (docs/install.md), which the test adds to its copy of deploy/.
func TestDaemonSet(t *testing.T) {
	start := time.Now()
	l := lab.New(t, lab.Options{})
	// Small IPv4 node CIDRs (/28: 16 addresses), so that pod churn goes round a node's range
	// and deleted pods' addresses are handed out again.
	l.Kube.StartControllerManager(t, kube.ControllerManagerOptions{
		ClusterCIDRs: []string{lab.DefaultClusterV4.String(), lab.DefaultClusterV6.String()},
		NodeMaskV4:   28,
	})
	l.Kube.StartScheduler(t)
	c := &cluster{lab: l, client: l.Kube.Client, scheduled: true, churnRounds: 16, reuse: true}
	images := map[string]string{}
	for _, v := range []string{releaseOld, releaseNew} {
		images[v] = lab.AgentImage(t, l.BinDir(), v)
	}
	for i := 1; i <= 2; i++ {
		n := l.AddNode(t, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i, NoAgent: true, NoPodCIDR: true})
		k := n.StartKubelet(t, lab.KubeletOptions{HostPaths: true})
		// Both releases are on every node ahead of time, as a registry would serve them.
		for _, v := range []string{releaseOld, releaseNew} {
			if _, err := k.Ctr("images", "import", images[v]); err != nil {
				t.Fatal(err)
			}
		}
		c.nodes = append(c.nodes, n)
		c.kubelets = append(c.kubelets, k)
	}
	t.Logf("two kubelet nodes up in %v", time.Since(start).Round(time.Millisecond))

	d := &install{cluster: c, dir: t.TempDir(), before: map[string]string{}}
	for _, st := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"Install", d.testInstall},
		{"PodAddresses", c.testPodAddresses},
		{"CrossNode", c.testCrossNode},
		{"DeleteFreesAddresses", c.testDeleteFreesAddresses},
		{"RollingUpgrade", d.testUpgrade},
		{"RuntimeAndAgentRestart", d.testRestarts},
		{"Uninstall", d.testUninstall},
	} {
		if !t.Run(st.name, st.f) {
			t.Fatalf("%s failed; the later subtests build on it", st.name)
		}
	}
	t.Logf("done in %v", time.Since(start).Round(time.Millisecond))
}

type install struct {
	*cluster
	dir    string            // the test's copy of deploy/
	before map[string]string // nodeState of each node before podroute was installed
}

// testInstall: the nodes are NotReady for want of a network; `kubectl apply -f deploy/` runs
// an agent pod on each, which writes the CNI configuration, and the nodes turn Ready only
// then. The nodes' pod CIDRs are the controller manager's allocation.
func (d *install) testInstall(t *testing.T) {
	for _, n := range d.nodes {
		waitNetworkNotReady(t, n)
		if p, _, err := n.ConfList(); err == nil {
			t.Fatalf("%s: a CNI configuration exists before podroute is installed: %s", n.Name, p)
		}
	}
	for _, n := range d.nodes {
		// Before nodeState: podroute's plugin would turn forwarding on otherwise, and leaves
		// it on when uninstalled.
		if err := n.EnableForwarding(); err != nil {
			t.Fatal(err)
		}
		d.before[n.Name] = nodeState(t, n)
		d.adoptPodCIDRs(t, n)
		t.Logf("%s: pod CIDRs %v (allocated by the controller manager)", n.Name, n.PodCIDRs)
	}

	d.writeDeploy(t, releaseOld)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	d.kubectl(ctx, t, "apply", "-f", filepath.Join(d.dir, "crds"))
	d.kubectl(ctx, t, "wait", "--for", "condition=established", "--timeout=60s",
		"crd/bgppeers.podroute.io", "crd/bgpconfigurations.podroute.io", "crd/loadbalancerippools.podroute.io")
	out := d.kubectl(ctx, t, "apply", "-f", d.dir)
	for _, want := range []string{"namespace/podroute-system created", "daemonset.apps/podroute-agent created", "configmap/kubernetes-services-endpoint created"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl apply -f deploy/ did not print %q:\n%s", want, out)
		}
	}
	d.rolloutStatus(ctx, t)

	agents := d.agentPods(t)
	for _, n := range d.nodes {
		p, ok := agents[n.Name]
		if !ok {
			t.Fatalf("no agent pod on %s: %v", n.Name, agents)
		}
		if img := p.Spec.Containers[0].Image; img != "podroute/podroute:"+releaseOld {
			t.Errorf("%s: agent pod %s runs %s", n.Name, p.Name, img)
		}
		// The configuration is written before the node turns Ready.
		written, ready := waitReadyAfterConfig(t, n)
		// The plugin the agent installed from its image is where containerd looks.
		if _, err := os.Stat(filepath.Join(n.BinDir, "podroute")); err != nil {
			t.Errorf("%s: CNI plugin not installed: %v", n.Name, err)
		}
		d.waitAgentVersion(t, n, releaseOld)
		t.Logf("%s: agent pod %s ready; CNI configuration written at %s, node Ready since %s", n.Name, p.Name,
			written.Format(time.RFC3339Nano), ready.LastTransitionTime.Time.Format(time.RFC3339))
	}
	d.waitMesh(t)
}

// testUpgrade: re-applying deploy/ with a newer image replaces the agents node by node, and
// meanwhile the pods keep reaching each other across the nodes (no ping lost, an open TCP
// connection unbroken) and keep their addresses and containers.
func (d *install) testUpgrade(t *testing.T) {
	old := d.agentPods(t)
	d.keepsConnected(t, "the upgrade", func() {
		d.writeDeploy(t, releaseNew)
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		upgradeStart := time.Now()
		out := d.kubectl(ctx, t, "apply", "-f", d.dir)
		if !strings.Contains(out, "daemonset.apps/podroute-agent configured") {
			t.Errorf("kubectl apply printed no change to the DaemonSet:\n%s", out)
		}
		d.rolloutStatus(ctx, t)
		t.Logf("rolling upgrade %s -> %s took %v", releaseOld, releaseNew, time.Since(upgradeStart).Round(time.Millisecond))
		for _, n := range d.nodes {
			d.waitAgentVersion(t, n, releaseNew)
		}
	})

	// Every agent pod was replaced by one running the new image, one node at a time.
	now := d.agentPods(t)
	var started []time.Time
	for _, n := range d.nodes {
		p := now[n.Name]
		if p == nil || p.UID == old[n.Name].UID {
			t.Fatalf("%s: agent pod not replaced", n.Name)
		}
		if img := p.Spec.Containers[0].Image; img != "podroute/podroute:"+releaseNew {
			t.Errorf("%s: agent pod %s runs %s after the upgrade", n.Name, p.Name, img)
		}
		started = append(started, p.CreationTimestamp.Time)
	}
	slices.SortFunc(started, func(a, b time.Time) int { return a.Compare(b) })
	if !started[1].After(started[0]) {
		t.Errorf("the new agent pods were created at once (%v), not node by node", started)
	}
	d.connectAll(t, "after-upgrade")
	d.noWarnings(t, "")
}

// testRestarts: restarting containerd, then deleting the agent's pod (the DaemonSet makes a
// new one) on each node in turn, keeps the running pods in place and connected.
func (d *install) testRestarts(t *testing.T) {
	d.keepsConnected(t, "the restarts", func() {
		for i, n := range d.nodes {
			if err := d.kubelets[i].RestartContainerd(); err != nil {
				t.Fatalf("%s: restart containerd: %v", n.Name, err)
			}
			old := d.agentPods(t)[n.Name]
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := d.client.CoreV1().Pods(agentNamespace).Delete(ctx, old.Name, metav1.DeleteOptions{})
			cancel()
			if err != nil {
				t.Fatalf("%s: delete agent pod %s: %v", n.Name, old.Name, err)
			}
			lab.Eventually(t, 2*time.Minute, n.Name+" new agent pod ready", func() error {
				p := d.agentPods(t)[n.Name]
				if p == nil || p.UID == old.UID {
					return fmt.Errorf("old pod %s still there", old.Name)
				}
				if !lab.PodReady(p) {
					return fmt.Errorf("%s not ready", p.Name)
				}
				return nil
			})
			t.Logf("%s: containerd restarted, agent pod %s replaced", n.Name, old.Name)
		}
	})
	d.connectAll(t, "after-restart")
	d.noWarnings(t, "")
}

// testUninstall: the documented removal (docs/install.md) with the clean-up DaemonSet,
// after the nodes are drained: every node is left as it was before podroute was installed
// (links, routes of every table, nftables ruleset, CNI files), and kubelet reports it
// NotReady for want of a network again.
func (d *install) testUninstall(t *testing.T) {
	for _, s := range d.servers {
		d.deletePod(t, s.Name)
	}
	d.servers = nil
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	d.kubectl(ctx, t, "-n", agentNamespace, "delete", "daemonset", agentDaemonSet)
	lab.Eventually(t, 60*time.Second, "agent pods gone", func() error {
		if p := d.agentPods(t); len(p) > 0 {
			return fmt.Errorf("agent pods left: %v", slices.Collect(maps.Keys(p)))
		}
		return nil
	})

	root, err := cniutil.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", "uninstall", "uninstall.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^(\s*image:) podroute/podroute:\S+.*$`)
	if n := len(re.FindAll(b, -1)); n != 2 {
		t.Fatalf("uninstall.yaml: %d image lines, want 2", n)
	}
	manifest := filepath.Join(t.TempDir(), "uninstall.yaml")
	if err := os.WriteFile(manifest, re.ReplaceAll(b, []byte("${1} podroute/podroute:"+releaseNew)), 0o644); err != nil {
		t.Fatal(err)
	}
	d.kubectl(ctx, t, "apply", "-f", manifest)
	out, err := d.lab.Kube.Kubectl(ctx, "-n", agentNamespace, "rollout", "status", "daemonset", "podroute-uninstall", "--timeout=120s")
	if err != nil {
		// The clean-up's own words: its first run on each node.
		for i, n := range d.nodes {
			pods, _ := d.client.CoreV1().Pods(agentNamespace).List(ctx, metav1.ListOptions{
				LabelSelector: "app.kubernetes.io/name=podroute-uninstall", FieldSelector: "spec.nodeName=" + n.Name})
			for _, p := range pods.Items {
				log, lerr := d.kubelets[i].ContainerLog(&p, "uninstall")
				t.Logf("%s: %s: status %+v, first run (%v):\n%s", n.Name, p.Name, p.Status.InitContainerStatuses, lerr, log)
			}
		}
		t.Fatal(err)
	}
	t.Logf("kubectl rollout status: %s", strings.TrimSpace(out))

	for i, n := range d.nodes {
		// What the clean-up printed, from the node's pod logs.
		ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
		pods, err := d.client.CoreV1().Pods(agentNamespace).List(ctx2, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=podroute-uninstall", FieldSelector: "spec.nodeName=" + n.Name})
		cancel2()
		if err != nil || len(pods.Items) != 1 {
			t.Fatalf("%s: clean-up pod: %v (%d pods)", n.Name, err, len(pods.Items))
		}
		log, err := d.kubelets[i].ContainerLog(&pods.Items[0], "uninstall")
		if err != nil {
			t.Errorf("%s: clean-up log: %v", n.Name, err)
		}
		t.Logf("%s: clean-up:\n%s", n.Name, strings.TrimSpace(log))
		if !strings.Contains(log, "removed") {
			t.Errorf("%s: the clean-up removed nothing", n.Name)
		}
		if got := nodeState(t, n); got != d.before[n.Name] {
			t.Errorf("%s: not as it was before the install.\nbefore:\n%s\nafter:\n%s", n.Name, d.before[n.Name], got)
		}
		for _, gone := range []string{n.DataDir, n.Socket} {
			if _, err := os.Stat(gone); !os.IsNotExist(err) {
				t.Errorf("%s: %s left behind (%v)", n.Name, gone, err)
			}
		}
		waitNetworkNotReady(t, n)
	}
	d.kubectl(ctx, t, "delete", "-f", manifest)
}

// --- helpers ---

// nodeState describes what podroute may change on a node: its links, the routes of every
// table, the nftables ruleset and the CNI directories.
func nodeState(t *testing.T, n *lab.Node) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"-br", "link", "show"},
		{"-4", "route", "show", "table", "all"},
		{"-6", "route", "show", "table", "all"},
	} {
		out, err := n.IPOutput(args...)
		if err != nil {
			t.Fatalf("%s: ip %v: %v", n.Name, args, err)
		}
		fmt.Fprintf(&b, "# ip %s\n%s\n", strings.Join(args, " "), strings.TrimSpace(out))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Stateless: no counters, which kubelet's own rules keep counting.
	out, err := n.Exec(ctx, "nft", "-s", "list", "ruleset")
	if err != nil {
		t.Fatalf("%s: nft list ruleset: %v", n.Name, err)
	}
	fmt.Fprintf(&b, "# nft -s list ruleset\n%s\n", strings.TrimSpace(out))
	for _, dir := range []string{n.ConfDir, n.BinDir} {
		entries, _ := os.ReadDir(dir)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		fmt.Fprintf(&b, "# ls %s\n%s\n", dir, strings.Join(names, " "))
	}
	return b.String()
}

// writeDeploy writes the test's copy of deploy/ as an operator edits it: the cluster's CIDRs,
// the image tag of release, and the API server's address for agents without kube-proxy.
// The LoadBalancer IP allocator is left out, as docs/install.md allows: its pods would
// share the nodes with the ones whose sandboxes and addresses the tests count, and it is
// tested in test/cluster and deploy/.
func (d *install) writeDeploy(t *testing.T, release string) {
	t.Helper()
	lab.WriteDeploy(t, d.dir, lab.DeployOptions{
		Release:      release,
		ClusterCIDRs: lab.DefaultClusterV4.String() + "," + lab.DefaultClusterV6.String(),
		ServiceCIDRs: d.lab.Kube.ServiceCIDR,
		APIServer:    fmt.Sprintf("%s:%d", lab.FabricIPv4, lab.APIPort),
	})
	if err := os.Remove(filepath.Join(d.dir, "50-lbipam.yaml")); err != nil {
		t.Fatal(err)
	}
}

func (d *install) kubectl(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	out, err := d.lab.Kube.Kubectl(ctx, args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Logf("kubectl %s:\n%s", strings.Join(args, " "), strings.TrimSpace(out))
	return out
}

// rolloutStatus waits with kubectl until the DaemonSet's pods all run the current template
// and are ready, reporting the agent pods' state if they do not.
func (d *install) rolloutStatus(ctx context.Context, t *testing.T) {
	t.Helper()
	out, err := d.lab.Kube.Kubectl(ctx, "-n", agentNamespace, "rollout", "status", "daemonset", agentDaemonSet, "--timeout=180s")
	if err != nil {
		var b strings.Builder
		for node, p := range d.agentPods(t) {
			fmt.Fprintf(&b, "  %s on %s: phase %s, containers %+v\n", p.Name, node, p.Status.Phase, p.Status.ContainerStatuses)
			for i, n := range d.nodes {
				if n.Name == node {
					if log, err := d.kubelets[i].ContainerLog(p, "agent"); err == nil {
						fmt.Fprintf(&b, "  agent log:\n%s\n", lab.Tail(log, 30))
					}
				}
			}
		}
		t.Fatalf("%v\nagent pods:\n%s", err, b.String())
	}
	t.Logf("kubectl rollout status: %s", strings.TrimSpace(out))
}

// agentPods returns the agent pods by node.
func (d *install) agentPods(t *testing.T) map[string]*corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := d.client.CoreV1().Pods(agentNamespace).List(ctx, metav1.ListOptions{LabelSelector: agentSelector})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*corev1.Pod{}
	for i := range list.Items {
		p := &list.Items[i]
		if p.DeletionTimestamp != nil {
			continue
		}
		if prev, dup := out[p.Spec.NodeName]; dup {
			t.Fatalf("two agent pods on %s: %s and %s", p.Spec.NodeName, prev.Name, p.Name)
		}
		out[p.Spec.NodeName] = p
	}
	return out
}

// waitAgentVersion waits until the agent on n answers on its socket (podroutectl, from the
// machine, through the node's /run/podroute) with version.
func (d *install) waitAgentVersion(t *testing.T, n *lab.Node, version string) {
	t.Helper()
	lab.Eventually(t, 60*time.Second, n.Name+" agent reports "+version, func() error {
		st, err := n.Status()
		if err != nil {
			return err
		}
		if st.Version != version {
			return fmt.Errorf("version %q", st.Version)
		}
		return nil
	})
}

// adoptPodCIDRs waits for the controller manager's allocation of n's pod CIDRs and records
// it in n.PodCIDRs.
func (d *install) adoptPodCIDRs(t *testing.T, n *lab.Node) {
	t.Helper()
	lab.Eventually(t, 30*time.Second, n.Name+" pod CIDRs allocated", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		node, err := d.client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(node.Spec.PodCIDRs) != 2 {
			return fmt.Errorf("spec.podCIDRs %v", node.Spec.PodCIDRs)
		}
		var cidrs []netip.Prefix
		for _, s := range node.Spec.PodCIDRs {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return err
			}
			if !lab.DefaultClusterV4.Overlaps(p) && !lab.DefaultClusterV6.Overlaps(p) {
				return fmt.Errorf("pod CIDR %s outside the cluster CIDRs", p)
			}
			cidrs = append(cidrs, p)
		}
		n.PodCIDRs = cidrs
		return nil
	})
}
