package kube

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ControllerManagerOptions configures StartControllerManager.
type ControllerManagerOptions struct {
	// ClusterCIDRs turns on node CIDR allocation (--allocate-node-cidrs) from these ranges,
	// one per family, as kubeadm's --pod-network-cidr does. Empty: Nodes get no pod CIDRs
	// from the controller manager.
	ClusterCIDRs []string
	// NodeMaskV4 and NodeMaskV6 are the node CIDR sizes (default 24 and 64).
	NodeMaskV4, NodeMaskV6 int
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
}

// StartControllerManager runs kube-controller-manager against the cluster with its default
// controllers (DaemonSets, ReplicaSets, ServiceAccounts, the root CA ConfigMap, node
// lifecycle, garbage collection, ...), optionally allocating node pod CIDRs. It waits until
// the controller manager has done something observable (the kube-root-ca.crt ConfigMap in
// kube-system) and stops it in t.Cleanup.
func (c *Cluster) StartControllerManager(t testing.TB, opts ControllerManagerOptions) {
	t.Helper()
	args := []string{
		"--kubeconfig=" + c.Kubeconfig,
		// No HTTPS endpoint: nothing here scrapes it, and a fixed port would clash with a
		// second cluster on the machine.
		"--secure-port=0",
		"--leader-elect=false",
		"--root-ca-file=" + c.CAFile,
		"--service-account-private-key-file=" + c.ServiceAccountKeyFile,
		"--service-cluster-ip-range=" + c.ServiceCIDR,
		"--use-service-account-credentials=false",
		// Kubelets here report every 2 s; notice a lost node in seconds, not 40.
		"--node-monitor-period=2s",
		"--node-monitor-grace-period=20s",
	}
	if len(opts.ClusterCIDRs) > 0 {
		v4, v6 := opts.NodeMaskV4, opts.NodeMaskV6
		if v4 == 0 {
			v4 = 24
		}
		if v6 == 0 {
			v6 = 64
		}
		args = append(args, "--allocate-node-cidrs=true", "--cluster-cidr="+strings.Join(opts.ClusterCIDRs, ","))
		// A mask flag for a family the cluster does not have is refused.
		for _, cidr := range opts.ClusterCIDRs {
			if strings.Contains(cidr, ":") {
				args = append(args, "--node-cidr-mask-size-ipv6="+strconv.Itoa(v6))
			} else {
				args = append(args, "--node-cidr-mask-size-ipv4="+strconv.Itoa(v4))
			}
		}
	}
	args = append(args, opts.ExtraArgs...)
	p := c.startController(t, "kube-controller-manager", args)
	err := c.waitFor(p, 60*time.Second, func(ctx context.Context) error {
		_, err := c.Client.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("kube: kube-controller-manager did not publish kube-root-ca.crt: %v\n%s", err, p.logTail(30))
	}
}

// StartScheduler runs kube-scheduler against the cluster and stops it in t.Cleanup.
func (c *Cluster) StartScheduler(t testing.TB) {
	t.Helper()
	p := c.startController(t, "kube-scheduler", []string{
		"--kubeconfig=" + c.Kubeconfig,
		"--authentication-kubeconfig=" + c.Kubeconfig,
		"--authorization-kubeconfig=" + c.Kubeconfig,
		"--secure-port=0",
		"--leader-elect=false",
	})
	// The scheduler has no observable side effect until a pod needs it: wait until it has
	// survived its start-up (informer sync, configuration checks).
	time.Sleep(2 * time.Second)
	if p.exited() {
		t.Fatalf("kube: kube-scheduler %s:\n%s", p.exitStatus(), p.logTail(30))
	}
}

func (c *Cluster) startController(t testing.TB, name string, args []string) *process {
	t.Helper()
	bin := filepath.Join(c.BinDir, name)
	if _, err := findExecutable(bin); err != nil {
		t.Fatalf("kube: %s %s not found (%v): run hack/kube/build.sh", name, KubeVersion, err)
	}
	p, err := startProcess(name, filepath.Join(c.Dir, name+".log"), filteredEnv("KUBECONFIG="), bin, args...)
	if err != nil {
		t.Fatalf("kube: %v", err)
	}
	c.controllers = append(c.controllers, p)
	t.Cleanup(func() { p.stop(stopGrace) })
	return p
}

// waitFor polls f until it succeeds, p exits or timeout passes.
func (c *Cluster) waitFor(p *process, timeout time.Duration, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s %s (last: %v)", p.name, p.exitStatus(), err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not within %v: %w", timeout, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Kubectl runs the cluster's kubectl (from BinDir) as the admin user and returns its
// combined output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	bin := filepath.Join(c.BinDir, "kubectl")
	if _, err := findExecutable(bin); err != nil {
		return "", fmt.Errorf("kubectl %s not found (%v): run hack/kube/build.sh", KubeVersion, err)
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	cmd.Env = append(filteredEnv("KUBECONFIG="), "HOME="+c.Dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
