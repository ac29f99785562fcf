// Package config is podroute's Kubernetes-native configuration: the podroute.io/v1alpha1
// custom resources (BGPPeer, BGPConfiguration; CRDs in deploy/crds), their typed and
// validated forms, per-node overrides, a Watcher that keeps them current, and a
// StatusWriter that reports podroute's verdict on each object.
//
// Validation happens twice. The CRD schemas (OpenAPI plus CEL rules) make the API server
// reject what is wrong on its own (an AS number of 0, an address that is not an IP,
// ebgpMultihop together with ttlSecurity, a BGPConfiguration not named "default"). What
// needs more context (the password Secret, the cluster AS, the Nodes' addresses) is
// checked by Parse and the Watcher; such an object gets status condition Valid=False with
// the field named in the message and an Event with reason InvalidSpec, the agent logs it
// once and leaves it out, and every other peer stays up. One exception: a BGPPeer whose only
// fault is its spec.bfd keeps its session, without BFD (Valid=False names the field,
// Accepted stays True): a typo in a timer must not cut a router off.
//
// Without the CRDs installed the Watcher reports "CRDs not installed" in
// Settings.Problems, there are no peers, and the configuration is the defaults (or the
// agent's flags, Options.Defaults); it keeps retrying and picks the CRDs up once
// installed.
//
// # Service advertisement
//
// spec.serviceClusterIPs, spec.serviceExternalIPs and spec.serviceLoadBalancerIPs say which
// Service addresses the nodes advertise (package services decides which node advertises
// what); spec.advertisements gives each class of prefix (Class: pod CIDRs, cluster IPs,
// external IPs, LoadBalancer IPs) its communities and AS-path prepending. The older
// spec.communities still sets the pod CIDRs' communities; setting it and
// spec.advertisements.podCIDRs.communities together is refused. A list with one bad entry
// is dropped whole (nothing of it advertised), never applied in part.
//
// # RBAC
//
// The Watcher and StatusWriter need exactly:
//
//	# ClusterRole
//	- apiGroups: [podroute.io]
//	  resources: [bgppeers]
//	  verbs: [list, watch]
//	- apiGroups: [podroute.io]
//	  resources: [bgpconfigurations]
//	  resourceNames: [default]          # lists and watches use fieldSelector metadata.name=default
//	  verbs: [list, watch]
//	- apiGroups: [podroute.io]
//	  resources: [bgppeers/status]
//	  verbs: [patch]
//	- apiGroups: [podroute.io]
//	  resources: [bgpconfigurations/status]
//	  resourceNames: [default]
//	  verbs: [patch]
//	# Role in each namespace holding peer passwords; resourceNames may list the Secrets,
//	# since each referenced Secret is listed and watched with fieldSelector metadata.name=NAME
//	- apiGroups: [""]
//	  resources: [secrets]
//	  verbs: [list, watch]
//	# Events about cluster-scoped objects are stored in namespace "default" (the agent's
//	# ClusterRole grants events cluster-wide, for its Events on Services too)
//	- apiGroups: [""]
//	  resources: [events]
//	  verbs: [create, patch]
//
// No get on any resource, no cluster-wide Secret access, no update of specs. A peer whose
// Secret cannot be read (RBAC) is reported invalid with the API's error.
//
// # Who writes status
//
// The agent elected with the Lease podroute-agent (every agent when the agent runs without
// election), idempotently; see StatusWriter.
package config
