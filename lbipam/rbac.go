package lbipam

import rbacv1 "k8s.io/api/rbac/v1"

// ClusterRoleRules are what the Controller needs cluster-wide: the tests run it with
// exactly these, so a missing rule fails them.
var ClusterRoleRules = []rbacv1.PolicyRule{
	// get: a Service missing from the cache is released only once a Get says it is gone.
	{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"services/status"}, Verbs: []string{"update"}},
	{APIGroups: []string{"podroute.io"}, Resources: []string{"loadbalancerippools"}, Verbs: []string{"list", "watch"}},
	// Nodes for their addresses, which no pool may hold.
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{"podroute.io"}, Resources: []string{"loadbalancerippools/status"}, Verbs: []string{"update"}},
	// Events on Services (their namespace) and on pools (namespace "default").
	{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
}

// LeaseRoleRules are what leader election needs in Options.LeaseNamespace. Create cannot
// be limited by name; get and update could be, to DefaultLeaseName.
var LeaseRoleRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}},
}
