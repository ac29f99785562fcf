// Package services decides which Service addresses a node advertises over BGP, and keeps
// the Services and EndpointSlices it decides from.
//
// Desired is pure: from the Services, their EndpointSlices, the Nodes, this node's name,
// whether kube-proxy serves here, and the BGPConfiguration (config.Configuration:
// serviceClusterIPs, serviceExternalIPs, serviceLoadBalancerIPs, spec.advertisements) it
// returns the prefixes to advertise, each with its class, its Services and the
// communities and AS-path prepending of that class. Every Service prefix goes to external
// peers only: nodes reach Services through kube-proxy, never through each other.
//
// What it fixes, compared with other routed CNIs: a Local Service is advertised only by
// nodes with a ready local endpoint of that address family (never by every node); a
// Service with no endpoint kube-proxy forwards to is withdrawn everywhere (no route kept
// towards nothing); and every external or LoadBalancer address is its own /32 or /128,
// whatever the traffic policy.
//
// Watcher runs client-go informers for Services and EndpointSlices, trimmed to the fields
// Desired reads, and signals changes on a coalescing channel.
//
// # RBAC
//
//	# ClusterRole
//	- apiGroups: [""]
//	  resources: [services]
//	  verbs: [list, watch]
//	- apiGroups: [discovery.k8s.io]
//	  resources: [endpointslices]
//	  verbs: [list, watch]
package services
