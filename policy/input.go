package policy

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Input is everything Compile reads: the cluster's NetworkPolicies, Namespaces and pods, and
// this node's pods with their host interfaces. Compile never changes it.
type Input struct {
	// Policies are every NetworkPolicy in the cluster. A policy only ever selects pods of its
	// own namespace, but its peers may be anywhere.
	Policies []*networkingv1.NetworkPolicy
	// Namespaces maps each Namespace's name to its labels, for namespaceSelector. A namespace
	// that is missing (or lacks the label) still has kubernetes.io/metadata.name, as the API
	// server sets it on every Namespace.
	Namespaces map[string]map[string]string
	// Pods are every pod of the cluster that holds addresses (this node's too): the peers
	// that podSelector and namespaceSelector pick, and the destinations whose named ports an
	// egress rule may name. Pods on the host network are never peers (their address is a
	// node's); pods without IPs add nothing.
	Pods []Pod
	// Local are this node's pods, the ones whose traffic this node polices, with their host
	// veths. They are also peers (Compile adds any missing from Pods). A pod is listed here
	// as soon as it is bound to the node, before it has addresses: its chains match on the
	// host veth's name, which is known from the pod alone, so they are in the kernel before
	// the veth is created.
	Local []LocalPod
	// LogDrops logs what the policies drop, and what the hold drops, to the kernel log,
	// rate-limited (the agent's --policy-log-drops); the drops are counted either way.
	LogDrops bool
}

// Pod is a pod as policy sees it.
type Pod struct {
	Namespace, Name string
	Labels          map[string]string
	// IPs are the pod's addresses (status.podIPs), IPv4 and IPv6.
	IPs []netip.Addr
	// Ports are the pod's named container ports: what a named port in a policy resolves to.
	Ports []NamedPort
	// HostNetwork pods share the node's addresses: they are never policed and never peers.
	HostNetwork bool
}

// NamedPort is a container port that has a name.
type NamedPort struct {
	Name     string
	Protocol corev1.Protocol // TCP when empty, as in the Pod API
	Port     int32
}

// LocalPod is a pod of this node.
type LocalPod struct {
	Pod
	// HostVeth is the host end of the pod's veth (cni.HostVethName of the pod's namespace
	// and name, interface eth0): the key of its chains.
	HostVeth string
}

// PodFromAPI reduces a Pod object to what policy needs: labels, addresses, named container
// ports (of containers and init containers, since restartable init containers serve), and
// whether it is on the host network. A pod that has finished (Succeeded or Failed) has given
// its addresses back, so it keeps none here: they may already be another pod's.
func PodFromAPI(p *corev1.Pod) Pod {
	out := Pod{
		Namespace:   p.Namespace,
		Name:        p.Name,
		Labels:      p.Labels,
		HostNetwork: p.Spec.HostNetwork,
	}
	for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for _, c := range cs {
			for _, cp := range c.Ports {
				if cp.Name != "" {
					out.Ports = append(out.Ports, NamedPort{Name: cp.Name, Protocol: cp.Protocol, Port: cp.ContainerPort})
				}
			}
		}
	}
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return out
	}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out.IPs = append(out.IPs, a.Unmap())
		}
	}
	return out
}

// NamespacesFromAPI maps each Namespace's name to its labels.
func NamespacesFromAPI(nss []*corev1.Namespace) map[string]map[string]string {
	out := make(map[string]map[string]string, len(nss))
	for _, ns := range nss {
		out[ns.Name] = ns.Labels
	}
	return out
}
