package cni

import (
	"crypto/sha1"
	"encoding/hex"
	"strings"
)

const (
	// HostVethPrefix starts every host-side interface podroute creates.
	HostVethPrefix = "pr"
	// HostVethGroup is the interface group (IFLA_GROUP, ip link set group) of every host veth
	// podroute creates: 201, podroute's number, as for its routes. The NetworkPolicy table
	// holds traffic of a veth in this group until the agent has judged its pod
	// (policy.PodInterfaceGroup). It lives here, not in policy, so the plugin does not link
	// the Kubernetes API types policy needs.
	HostVethGroup = 201
	// aliasPrefix starts the ifalias that records which attachment owns a host veth.
	aliasPrefix = "podroute:"
	// maxAlias keeps the alias within the kernel's IFALIASZ with room to spare.
	maxAlias = 200
)

// HostVethName returns the host-side interface name of a pod's attachment. It depends only on
// the pod (namespace and name, as Kubernetes passes them in CNI_ARGS), so the agent and an
// operator can find a pod's interface from the pod alone; without them it falls back to the
// container ID. A second podroute interface in the same pod (ifName other than eth0) gets its
// own name. 2 + 13 characters: the kernel's limit is 15.
func HostVethName(podNamespace, podName, containerID, ifName string) string {
	key := containerID
	if podNamespace != "" && podName != "" {
		key = podNamespace + "." + podName
	}
	if ifName != "" && ifName != "eth0" {
		key += "." + ifName
	}
	sum := sha1.Sum([]byte(key))
	return HostVethPrefix + hex.EncodeToString(sum[:])[:13]
}

// OwnerAlias is the ifalias podroute sets on a host veth: the attachment it belongs to, so DEL
// and GC never remove an interface that belongs to another sandbox of the same pod.
func OwnerAlias(containerID, ifName string) string {
	a := aliasPrefix + containerID + ":" + ifName
	if len(a) > maxAlias {
		sum := sha1.Sum([]byte(containerID + ":" + ifName))
		a = aliasPrefix + "sha1:" + hex.EncodeToString(sum[:])
	}
	return a
}

// IsPodrouteAlias tells whether an interface alias was set by podroute.
func IsPodrouteAlias(alias string) bool { return strings.HasPrefix(alias, aliasPrefix) }

// k8sArgs holds the CNI_ARGS a Kubernetes runtime passes.
type k8sArgs struct {
	PodNamespace, PodName string
}

// parseK8sArgs reads K8S_POD_NAMESPACE and K8S_POD_NAME from CNI_ARGS ("K=V;K=V"). Unknown and
// malformed pairs are ignored: CNI_ARGS is shared by every plugin in the chain.
func parseK8sArgs(s string) k8sArgs {
	var a k8sArgs
	for _, kv := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			a.PodNamespace = v
		case "K8S_POD_NAME":
			a.PodName = v
		}
	}
	return a
}
