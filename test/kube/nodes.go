package kube

import (
	"context"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CreateNode registers a Node the way a kubelet plus the node IPAM controller
// would leave it: spec.podCIDR(s) set (there is no controller-manager to
// allocate them) and status.addresses holding internalIPs. The
// kubernetes.io/hostname label defaults to name, as kubelets set it.
func (c *Cluster) CreateNode(ctx context.Context, name string, podCIDRs []string, internalIPs []string, labels map[string]string) (*corev1.Node, error) {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelHostname: name}},
		Spec:       corev1.NodeSpec{PodCIDRs: slices.Clone(podCIDRs)},
	}
	maps.Copy(node.Labels, labels)
	if len(podCIDRs) > 0 {
		node.Spec.PodCIDR = podCIDRs[0]
	}
	for _, ip := range internalIPs {
		node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name})

	created, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create node %s: %w", name, err)
	}
	// Status is kept on create today; write it explicitly should a future
	// apiserver drop it, so callers can rely on the addresses.
	if len(internalIPs) > 0 && !slices.Equal(created.Status.Addresses, node.Status.Addresses) {
		created.Status.Addresses = node.Status.Addresses
		created, err = c.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
		if err != nil {
			return nil, fmt.Errorf("set addresses of node %s: %w", name, err)
		}
	}
	return created, nil
}

// DeleteNode deletes a Node immediately. Without a controller-manager nothing
// else cleans up after it (no pod eviction, no lease removal).
func (c *Cluster) DeleteNode(ctx context.Context, name string) error {
	zero := int64(0)
	if err := c.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	return nil
}
