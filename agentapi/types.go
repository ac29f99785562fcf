// Package agentapi is the agent's local API: read-only JSON over a unix socket, for
// podroutectl and for operators. Nothing of it listens on a network address.
package agentapi

import (
	"context"
	"time"
)

// Paths served on the socket.
const (
	PathStatus    = "/v1/status"
	PathNeighbors = "/v1/bgp/neighbors"
	PathRoutes    = "/v1/bgp/routes"
	// PathPolicy takes namespace= and pod=; PathPolicyCheck takes from= (namespace/name or
	// an address), to= (namespace/name), port= and protocol= (tcp, udp, sctp).
	PathPolicy      = "/v1/policy"
	PathPolicyCheck = "/v1/policy/check"
	// PathLoadBalancerPools lists the cluster's LoadBalancerIPPools with their usage.
	PathLoadBalancerPools = "/v1/loadbalancer-pools"
)

// DefaultSocket is where the agent listens unless told otherwise.
const DefaultSocket = "/run/podroute/agent.sock"

// Status is the node's routing state at a glance.
type Status struct {
	Node     string   `json:"node"`
	PodCIDRs []string `json:"podCIDRs"`
	// NodeProblem says why the node's own Node object cannot be used yet (no podCIDR, ...).
	NodeProblem string `json:"nodeProblem,omitempty"`
	ASN         uint32 `json:"asn"`
	RouterID    string `json:"routerID"`
	// CNIConfig is the conflist path once written; empty before.
	CNIConfig        string    `json:"cniConfig,omitempty"`
	CNIConfigWritten bool      `json:"cniConfigWritten"`
	APIWatchHealthy  bool      `json:"apiWatchHealthy"`
	APIWatchError    string    `json:"apiWatchError,omitempty"`
	BGPStarted       bool      `json:"bgpStarted"`
	Ready            bool      `json:"ready"`
	NotReadyReasons  []string  `json:"notReadyReasons,omitempty"`
	Routes           Counts    `json:"routes"`
	LastReconcile    time.Time `json:"lastReconcile"`
	LastReconcileErr string    `json:"lastReconcileError,omitempty"`
	// KubeProxyMode is the mode kube-proxy reports on this node (iptables, nftables, ...);
	// empty when it was not found or is not checked (--kube-proxy-metrics-address).
	KubeProxyMode string `json:"kubeProxyMode,omitempty"`
	// Problems are configuration problems the agent works around: invalid BGPPeers, a
	// missing CRD, a peer clashing with a node, a malformed node override, kube-proxy
	// missing or in a mode podroute does not support.
	Problems []string `json:"problems,omitempty"`
	Version  string   `json:"version"`
	// NetworkPolicy is enforcement on this node; nil when the agent does not enforce it
	// (--network-policy=false).
	NetworkPolicy *PolicyStatus `json:"networkPolicy,omitempty"`
	// StatusWriter is true on the one agent (the Lease holder) that writes the status of the
	// cluster-wide podroute objects.
	StatusWriter bool `json:"statusWriter,omitempty"`
}

// PolicyStatus is NetworkPolicy enforcement on this node.
type PolicyStatus struct {
	// Synced: the Pods, Namespaces and NetworkPolicies were listed and the last pass applied
	// them to the kernel.
	Synced bool `json:"synced"`
	// Active: some NetworkPolicy exists in the cluster, so podroute's table is in the kernel.
	Active bool `json:"active"`
	// PolicedPods are this node's pods that some policy selects, in either direction.
	PolicedPods int       `json:"policedPods"`
	Chains      int       `json:"chains"`
	LastSync    time.Time `json:"lastSync"`
	LastError   string    `json:"lastError,omitempty"`
}

// Counts are route counts for Status.
type Counts struct {
	Learned    int `json:"learned"`    // best paths from BGP
	Installed  int `json:"installed"`  // agent routes in the kernel (blackholes included)
	Advertised int `json:"advertised"` // prefixes this node originates
	Refused    int `json:"refused"`    // (prefix, peer) pairs refused by the import filter
	Failed     int `json:"failed"`     // routes the kernel would not take in the last reconcile
}

// Neighbor is one BGP peer.
type Neighbor struct {
	Address  string    `json:"address"`
	ASN      uint32    `json:"asn"`
	Kind     string    `json:"kind"` // mesh, external, reflector
	Node     string    `json:"node,omitempty"`
	State    string    `json:"state"` // idle, connect, active, opensent, openconfirm, established
	Since    time.Time `json:"since"`
	Received uint64    `json:"received"`
	Accepted uint64    `json:"accepted"`
	// Advertised counts the prefixes sent to the peer, only when asked for (the
	// advertised query parameter): counting them runs the export policy over every best
	// path for every neighbour, seconds on a route reflector with 1,000 clients.
	Advertised *uint64 `json:"advertised,omitempty"`
	LastError  string  `json:"lastError,omitempty"`
	Restarting bool    `json:"gracefulRestart,omitempty"`
	// BFD is the BFD session's state (up, down, init, admin-down); empty when the session
	// runs without BFD.
	BFD string `json:"bfd,omitempty"`
}

// Route is one learned prefix.
type Route struct {
	Prefix     string   `json:"prefix"`
	NextHops   []string `json:"nextHops"`
	ASPath     []uint32 `json:"asPath"`
	SourcePeer string   `json:"sourcePeer"`
	Installed  bool     `json:"installed"`
	// InstallError is why the kernel did not take it, when it did not.
	InstallError string `json:"installError,omitempty"`
}

// Refusal is an announcement the import filter refused.
type Refusal struct {
	Prefix    string    `json:"prefix"`
	Peer      string    `json:"peer"`
	Reason    string    `json:"reason"`
	Count     uint64    `json:"count"`
	FirstSeen time.Time `json:"firstSeen"`
	LastSeen  time.Time `json:"lastSeen"`
}

// Routes is the answer on PathRoutes.
type Routes struct {
	Routes     []Route   `json:"routes"`
	Refused    []Refusal `json:"refused"`
	Advertised []string  `json:"advertised"`
	// Services are the Service addresses this node advertises to its external peers.
	Services []ServiceRoute `json:"services"`
}

// ServiceRoute is a Service address this node advertises.
type ServiceRoute struct {
	Prefix string `json:"prefix"`
	// Class is clusterIPs, externalIPs or loadBalancerIPs (the BGPConfiguration's names).
	Class string `json:"class"`
	// Services are namespace/name of the Services behind the address; none for a whole
	// cluster IP range.
	Services      []string `json:"services"`
	Communities   []string `json:"communities,omitempty"`
	ASPathPrepend uint8    `json:"asPathPrepend,omitempty"`
}

// Source is what the agent implements to feed the API.
type Source interface {
	Status() Status
	// Neighbors lists the BGP peers, with the prefixes advertised to each if advertised.
	Neighbors(advertised bool) ([]Neighbor, error)
	Routes() (Routes, error)
}

// PodPolicies is the answer on PathPolicy: the NetworkPolicies that select a pod, in each
// direction, and what they allow.
type PodPolicies struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	// Local: the pod is on this node, so this node polices its traffic.
	Local bool `json:"local"`
	// HostNetwork pods are never policed.
	HostNetwork bool     `json:"hostNetwork,omitempty"`
	IPs         []string `json:"ips"`
	// Ingress and Egress are the policies selecting the pod in each direction, ordered by
	// namespace/name; none: that direction is open.
	Ingress []PolicyRules `json:"ingress"`
	Egress  []PolicyRules `json:"egress"`
	// Problems are what the API server would have refused in these policies: the parts
	// concerned allow nothing.
	Problems []string `json:"problems,omitempty"`
}

// PolicyRules is one policy's rules of one direction; none: it allows nothing (a default
// deny) unless another policy selecting the pod does.
type PolicyRules struct {
	Policy string       `json:"policy"` // namespace/name
	Rules  []PolicyRule `json:"rules"`
}

// PolicyRule is what one rule allows.
type PolicyRule struct {
	Index int `json:"index"`
	// Peers are the sources (ingress) or destinations (egress) it allows; none: every address.
	Peers []string `json:"peers"`
	// Ports are the ports it allows; none: every port of every protocol.
	Ports []string `json:"ports"`
}

// PolicyCheck is the question on PathPolicyCheck: would a new connection be allowed?
type PolicyCheck struct {
	// From is the source: a pod (FromNamespace and FromPod) or an address (FromIP).
	FromNamespace string `json:"fromNamespace,omitempty"`
	FromPod       string `json:"fromPod,omitempty"`
	FromIP        string `json:"fromIP,omitempty"`
	// To is the destination pod.
	ToNamespace string `json:"toNamespace"`
	ToPod       string `json:"toPod"`
	Port        int    `json:"port"`
	Protocol    string `json:"protocol"` // tcp, udp or sctp
}

// PolicyVerdict is the answer on PathPolicyCheck. The connection is allowed when both the
// sender's egress and the receiver's ingress allow it.
type PolicyVerdict struct {
	From string `json:"from"`
	To   string `json:"to"`
	// FromIP and ToIP are the addresses judged: the source's family when the source is an
	// address, else the first family both pods have.
	FromIP   string          `json:"fromIP"`
	ToIP     string          `json:"toIP"`
	Port     int             `json:"port"`
	Protocol string          `json:"protocol"`
	Allowed  bool            `json:"allowed"`
	Egress   PolicyJudgement `json:"egress"`
	Ingress  PolicyJudgement `json:"ingress"`
}

// PolicyJudgement is one direction of a PolicyVerdict.
type PolicyJudgement struct {
	// Pod is the pod whose policies judge this direction; empty when the source is not a pod.
	Pod     string `json:"pod,omitempty"`
	Allowed bool   `json:"allowed"`
	// Policed: some policy selects the pod in this direction.
	Policed  bool     `json:"policed"`
	Policies []string `json:"policies,omitempty"`
	// Rule is the rule that allows the connection: "shop/allow-web ingress rule 0".
	Rule   string `json:"rule,omitempty"`
	Reason string `json:"reason"`
}

// PolicySource is what an agent adds to Source to answer NetworkPolicy questions. A Source
// without it answers PathPolicy and PathPolicyCheck with 404.
type PolicySource interface {
	PodPolicies(namespace, pod string) (PodPolicies, error)
	CheckPolicy(q PolicyCheck) (PolicyVerdict, error)
}

// LoadBalancerPools is the answer on PathLoadBalancerPools: the cluster's LoadBalancerIPPools
// and their usage, as the allocator last wrote it in their status.
type LoadBalancerPools struct {
	// Installed is false when the API server does not serve LoadBalancerIPPools (the CRD is
	// not installed).
	Installed bool               `json:"installed"`
	Pools     []LoadBalancerPool `json:"pools"`
}

// LoadBalancerPool is one LoadBalancerIPPool.
type LoadBalancerPool struct {
	Name      string   `json:"name"`
	Addresses []string `json:"addresses"`
	// IPv4 and IPv6 are the allocator's counts; nil before it counted that family.
	IPv4 *PoolUsage `json:"ipv4,omitempty"`
	IPv6 *PoolUsage `json:"ipv6,omitempty"`
	// Valid is the Valid condition's status (True, False), empty before the allocator
	// judged the pool; Message says why when False.
	Valid   string `json:"valid,omitempty"`
	Message string `json:"message,omitempty"`
}

// PoolUsage counts one family's addresses of a pool.
type PoolUsage struct {
	Allocated int64 `json:"allocated"`
	Total     int64 `json:"total"`
}

// PoolSource is implemented by agents that read LoadBalancerIPPools.
type PoolSource interface {
	LoadBalancerPools(ctx context.Context) (LoadBalancerPools, error)
}
