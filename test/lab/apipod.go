package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podroute/podroute/cni"
	"github.com/podroute/podroute/test/cniutil"
)

// PodNamespace is the Kubernetes namespace the lab's pods are wired in (K8S_POD_NAMESPACE).
const PodNamespace = metav1.NamespaceDefault

// PodObjectName is the name of the Kubernetes Pod a lab pod named name on n stands for: the
// plugin runs with K8S_POD_NAME=<node>-<name>.
func PodObjectName(n *Node, name string) string { return n.Name + "-" + name }

// ObjectName is the name of the Kubernetes Pod the lab pod stands for.
func (p *Pod) ObjectName() string { return PodObjectName(p.Node, p.Name) }

// HostVeth is the name of the pod's host veth (cni.HostVethName of its namespace and name).
func (p *Pod) HostVeth() string {
	return cni.HostVethName(PodNamespace, p.ObjectName(), "", "eth0")
}

// CreatePodObject creates the Pod object for a lab pod named name on n, as the scheduler
// leaves it before the kubelet runs the sandbox: bound to the node (spec.nodeName), with
// labels, one container, no addresses yet. Lab pods have no kubelet, so nothing else ever
// writes the object; PublishPodIPs does what the kubelet would after CNI ADD. The object is
// deleted in t.Cleanup.
func (n *Node) CreatePodObject(t testing.TB, name string, labels map[string]string) (*corev1.Pod, error) {
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: PodObjectName(n, name), Namespace: PodNamespace, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                      n.Name,
			Containers:                    []corev1.Container{{Name: "main", Image: "registry.invalid/podroute/lab:none"}},
			TerminationGracePeriodSeconds: new(int64),
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	created, err := n.lab.Kube.Client.CoreV1().Pods(PodNamespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", PodNamespace, obj.Name, err)
	}
	t.Cleanup(func() {
		if err := n.DeletePodObject(name); err != nil {
			t.Logf("lab: %v", err)
		}
	})
	return created, nil
}

// DeletePodObject deletes the Pod object of the lab pod named name on n at once (grace period
// 0: there is no kubelet to confirm). A pod already gone is not an error.
func (n *Node) DeletePodObject(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := n.lab.Kube.Client.CoreV1().Pods(PodNamespace).Delete(ctx, PodObjectName(n, name), metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", PodNamespace, PodObjectName(n, name), err)
	}
	return nil
}

// PublishPodIPs writes the pod's addresses into its object's status (podIP, podIPs, phase
// Running), as the kubelet does once CNI ADD returned them.
func (p *Pod) PublishPodIPs() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pods := p.Node.lab.Kube.Client.CoreV1().Pods(PodNamespace)
	obj, err := pods.Get(ctx, p.ObjectName(), metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get pod %s/%s: %w", PodNamespace, p.ObjectName(), err)
	}
	obj.Status.Phase = corev1.PodRunning
	obj.Status.PodIPs = nil
	for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
		if a.IsValid() {
			obj.Status.PodIPs = append(obj.Status.PodIPs, corev1.PodIP{IP: a.String()})
		}
	}
	if len(obj.Status.PodIPs) > 0 {
		obj.Status.PodIP = obj.Status.PodIPs[0].IP
	}
	if _, err := pods.UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of pod %s/%s: %w", PodNamespace, p.ObjectName(), err)
	}
	return nil
}

// AddAPIPod is AddPod for a pod that also exists in the API: it creates the Pod object
// (bound to n, with labels), runs CNI ADD and publishes the addresses, in that order, as
// the scheduler, the runtime and the kubelet would.
func (n *Node) AddAPIPod(t testing.TB, name string, labels map[string]string) *Pod {
	t.Helper()
	if _, err := n.CreatePodObject(t, name, labels); err != nil {
		t.Fatalf("lab: %v", err)
	}
	p := n.AddPod(t, name)
	if err := p.PublishPodIPs(); err != nil {
		t.Fatalf("lab: %v", err)
	}
	return p
}

// Sandbox is a pod whose network namespace exists but which CNI ADD has not wired yet: a
// test can listen inside it, or probe its future address, from before the plugin runs.
type Sandbox struct {
	*Pod
	node *cniutil.Node
	list *libcni.NetworkConfigList
}

// PrepareSandbox creates the namespace of a pod named name on n, for the agent's conflist,
// without wiring it; Wire runs CNI ADD. CNI DEL and the namespace's removal run in t.Cleanup,
// as for AddPod.
func (n *Node) PrepareSandbox(t testing.TB, name string) (*Sandbox, error) {
	_, conf, err := n.ConfList()
	if err != nil {
		return nil, err
	}
	return n.sandbox(t, name, conf, []string{n.BinDir})
}

// Wire runs CNI ADD for the sandbox, the way a runtime does, and records its addresses: an
// IPv4 and an IPv6 one, as the agent's conflist gives.
func (s *Sandbox) Wire(ctx context.Context) error {
	if err := s.add(ctx); err != nil {
		return fmt.Errorf("%s on %s: %w", s.Name, s.Node.Name, err)
	}
	if !s.IPv4.IsValid() || !s.IPv6.IsValid() {
		return fmt.Errorf("CNI ADD of %s on %s gave %s and %s, want an IPv4 and an IPv6 address", s.Name, s.Node.Name, s.IPv4, s.IPv6)
	}
	return nil
}

// NextPodAddrs predicts the addresses the node's IPAM hands out next: the one after each
// range set's cursor (last_reserved_ip.<n> in the IPAM data directory of the agent's
// conflist). The IPAM continues after its cursor, so this holds as long as nothing else
// allocates on the node in between and the ranges are not exhausted.
func (n *Node) NextPodAddrs() (v4, v6 netip.Addr, err error) {
	_, conf, err := n.ConfList()
	if err != nil {
		return v4, v6, err
	}
	var cl struct {
		Name    string `json:"name"`
		Plugins []struct {
			IPAM struct {
				DataDir string `json:"dataDir"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(conf, &cl); err != nil {
		return v4, v6, fmt.Errorf("%s: conflist: %w", n.Name, err)
	}
	dir := ""
	for _, p := range cl.Plugins {
		if p.IPAM.DataDir != "" {
			dir = filepath.Join(p.IPAM.DataDir, cl.Name)
		}
	}
	if dir == "" {
		return v4, v6, fmt.Errorf("%s: conflist names no ipam dataDir", n.Name)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "last_reserved_ip.*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return v4, v6, err
		}
		a, err := netip.ParseAddr(strings.TrimSpace(string(b)))
		if err != nil {
			return v4, v6, fmt.Errorf("%s: %w", f, err)
		}
		if a.Is4() {
			v4 = a.Next()
		} else {
			v6 = a.Next()
		}
	}
	if !v4.IsValid() || !v6.IsValid() {
		return v4, v6, fmt.Errorf("%s: no cursor for both families in %s (%v): wire a pod first", n.Name, dir, files)
	}
	return v4, v6, nil
}

// Nft runs nft with args inside the node's namespace and returns its output.
func (n *Node) Nft(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return n.Exec(ctx, "nft", args...)
}
