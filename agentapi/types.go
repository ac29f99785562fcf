// Package agentapi is the agent's local API: read-only JSON over a unix socket, for
// podroutectl and for operators. Nothing of it listens on a network address.
package agentapi

import "time"

// Paths served on the socket.
const (
	PathStatus    = "/v1/status"
	PathNeighbors = "/v1/bgp/neighbors"
	PathRoutes    = "/v1/bgp/routes"
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
	Address    string    `json:"address"`
	ASN        uint32    `json:"asn"`
	Kind       string    `json:"kind"` // mesh, external, reflector
	Node       string    `json:"node,omitempty"`
	State      string    `json:"state"` // idle, connect, active, opensent, openconfirm, established
	Since      time.Time `json:"since"`
	Received   uint64    `json:"received"`
	Accepted   uint64    `json:"accepted"`
	Advertised uint64    `json:"advertised"`
	LastError  string    `json:"lastError,omitempty"`
	Restarting bool      `json:"gracefulRestart,omitempty"`
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
}

// Source is what the agent implements to feed the API.
type Source interface {
	Status() Status
	Neighbors() ([]Neighbor, error)
	Routes() (Routes, error)
}
