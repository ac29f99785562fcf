// Package lbipam gives Services of type LoadBalancer addresses from LoadBalancerIPPools
// (podroute.io/v1alpha1, cluster-scoped; CRD in deploy/crds): it writes
// status.loadBalancer.ingress, a status condition (ConditionAllocated) and Events saying
// why a Service got no address, and each pool's usage per family.
//
// Allocator is the pure part: requested addresses (spec.loadBalancerIP or the annotation
// AnnotationIPs), sharing one address between Services that both carry the same
// AnnotationSharingKey and use no common port and protocol, dual-stack per
// spec.ipFamilyPolicy and spec.ipFamilies, release, and Restore from the Services' status.
// Controller runs it against the API server.
//
// # Which Services
//
// Type LoadBalancer with no spec.loadBalancerClass or with Options.LoadBalancerClass
// (DefaultLoadBalancerClass). A pool serves the Services its serviceSelector selects and,
// when it sets loadBalancerClass, only Services of that class. Pools are tried in name
// order, lowest free address first. Of two overlapping pools, the one whose name sorts
// later is refused (condition Valid=False naming the other). When a Service stops being
// one the controller serves, its address is released and the status it wrote is cleared.
// A Service whose pool is deleted or no longer selects it gets another address. A Service
// that has addresses keeps them when a changed request cannot be met or an annotation is
// malformed; the condition says why.
//
// # Why one address never goes to two Services
//
// Allocation is decided by one leader, elected with a coordination.k8s.io Lease through
// client-go's leaderelection (Options.LeaseNamespace; without it, run one replica only).
// Within a term the allocator's memory is the truth: it never hands out an address it
// holds for another Service, and it is the only writer of status.loadBalancer for the
// Services it serves.
//
// A term begins with a fresh, consistent List of the pools and Services (not the informer
// cache, which may not yet show what the previous leader wrote last) and restores every
// address found in the status of a Service carrying ConditionAllocated, oldest Service
// first; an address claimed twice stays with the older Service and the younger one is
// given another. That one List carries the state across restarts and leader changes.
// Before acting, the term waits (briefly) for the pool cache to show the pools as listed,
// so a lagging cache cannot move Services off a pool it has not seen yet.
//
// Status is written with Update and the object's resourceVersion, so a write based on a
// stale view of that Service fails with a conflict and is retried after the cache catches
// up. A Service missing from the cache is released only once a direct Get confirms it is
// gone, so a Service created just before the term began cannot lose its address to lag.
//
// What remains is the window leader election itself allows: a leader that stalls for
// longer than the lease (a paused process, clock rates that differ by more than the
// margin between LeaseDuration and RenewDeadline) could write once after its successor
// has begun. The restore rule above then settles the duplicate in favour of the older
// Service at the next change of leader, and the younger one's writes conflict rather
// than clobber. The test TestController/TwoControllersRacing creates Services from many
// goroutines at once while two controllers contend and the leader steps down halfway.
//
// # RBAC
//
// ClusterRoleRules (Services, their status, the pools and their status, Nodes' addresses,
// Events) and, in
// the Lease's namespace, LeaseRoleRules; the tests run the controller with exactly these.
package lbipam
