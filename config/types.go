package config

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/podroute/podroute/bfd"
)

// The podroute API: group, version and the resources the agent reads.
const (
	Group   = "podroute.io"
	Version = "v1alpha1"

	KindBGPPeer          = "BGPPeer"
	KindBGPConfiguration = "BGPConfiguration"

	// ConfigurationName is the name of the only BGPConfiguration podroute reads.
	ConfigurationName = "default"
)

var (
	// BGPPeerGVR and BGPConfigurationGVR address the custom resources.
	BGPPeerGVR          = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "bgppeers"}
	BGPConfigurationGVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "bgpconfigurations"}
	// SecretGVR addresses the Secrets holding peers' passwords.
	SecretGVR = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}
)

// APIVersion is the apiVersion of podroute's objects.
var APIVersion = Group + "/" + Version

// Defaults of BGPConfiguration (the CRD applies the same ones) and of BGPPeer.
const (
	DefaultASN            = 64512
	DefaultNodeToNodeMesh = true
	DefaultExportPodCIDRs = true
	DefaultPort           = 179
)

// BFD timers' defaults and bounds (spec.bfd, spec.meshBFD).
const (
	// DefaultBFDInterval and DefaultBFDMultiplier apply to fields a BFDSpec leaves out:
	// FRR's defaults, detecting a dead peer in 900ms.
	DefaultBFDInterval   = 300 * time.Millisecond
	DefaultBFDMultiplier = 3
	// MinBFDInterval is the shortest minTx and minRx podroute accepts. BFD runs in the
	// agent's Go process, not in the kernel: on a busy 2-CPU node scheduling and
	// garbage-collection pauses delay its packets by tens of milliseconds. Measured on 2
	// vCPUs at load 22 to 34 (docs/benchmarks.md, BFD), 50ms x 3 sessions flapped while
	// 100ms x 3 held.
	MinBFDInterval = 100 * time.Millisecond
	// MaxBFDInterval is the protocol's limit: 32 bits of microseconds.
	MaxBFDInterval = bfd.MaxInterval
	// MaxBFDMultiplier is the protocol's limit: an 8-bit field.
	MaxBFDMultiplier = 255
)

// Condition types podroute writes.
const (
	// ConditionValid is True when podroute accepts the spec; False names the fields it rejects.
	ConditionValid = "Valid"
	// ConditionAccepted is True when a valid BGPPeer selects at least one node.
	ConditionAccepted = "Accepted"
)

// Condition reasons, also used as Event reasons.
const (
	ReasonValid           = "Valid"
	ReasonInvalidSpec     = "InvalidSpec"
	ReasonNodesSelected   = "NodesSelected"
	ReasonNoNodesSelected = "NoNodesSelected"
)

// BGPPeer is an external BGP peer (a top-of-rack router, a route reflector) of the nodes
// its NodeSelector selects. Cluster-scoped.
type BGPPeer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   BGPPeerSpec `json:"spec"`
	Status Status      `json:"status,omitempty"`
}

// BGPPeerSpec mirrors the CRD's spec. Durations stay strings here ("9s"); Parse turns the
// spec into a Peer with typed values.
type BGPPeerSpec struct {
	// PeerAddress is the peer's IPv4 or IPv6 address.
	PeerAddress string `json:"peerAddress"`
	// PeerASN is the peer's AS number, 1..4294967295; int64 so that an out-of-range value
	// still decodes and is reported as a field error.
	PeerASN int64 `json:"peerASN"`
	// NodeSelector selects the nodes that peer with it; nil or empty selects every node.
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`
	// PasswordSecretRef names the TCP MD5 password.
	PasswordSecretRef *SecretKeyRef `json:"passwordSecretRef,omitempty"`
	// HoldTime, KeepaliveTime and GracefulRestartTime are durations in whole seconds.
	HoldTime            string `json:"holdTime,omitempty"`
	KeepaliveTime       string `json:"keepaliveTime,omitempty"`
	GracefulRestartTime string `json:"gracefulRestartTime,omitempty"`
	// EBGPMultihop (a TTL) and TTLSecurity (hops, GTSM) are mutually exclusive, 1..255.
	EBGPMultihop *int64 `json:"ebgpMultihop,omitempty"`
	TTLSecurity  *int64 `json:"ttlSecurity,omitempty"`
	// RouteReflectorClient makes this iBGP peer our route-reflector client.
	RouteReflectorClient bool `json:"routeReflectorClient,omitempty"`
	// Port is the peer's TCP port; nil means 179.
	Port *int64 `json:"port,omitempty"`
	// ExportPodCIDRs overrides BGPConfiguration spec.exportPodCIDRs for this peer.
	ExportPodCIDRs *bool `json:"exportPodCIDRs,omitempty"`
	// BFD runs a BFD session beside the BGP session; nil (the default) runs none. Off by
	// default: a node whose agent is starved of CPU for the detection time looks dead
	// (docs/peering.md). A bad value drops BFD for this peer, not the peer.
	BFD *BFDSpec `json:"bfd,omitempty"`
}

// BFDSpec is a BFD session's timers. Durations are strings like the BGP timers ("300ms"),
// but in whole microseconds. Every field is optional: an empty BFDSpec runs BFD with
// DefaultBFDInterval both ways and DefaultBFDMultiplier. Checked by the agent, not by the
// CRD schema, so a bad value turns BFD off for the session instead of refusing the object.
type BFDSpec struct {
	// MinTx is our desired minimum interval between BFD packets, MinBFDInterval at least;
	// the agent sends at the greater of this and the peer's receive interval.
	MinTx string `json:"minTx,omitempty"`
	// MinRx is the shortest interval between received BFD packets we accept, MinBFDInterval
	// at least.
	MinRx string `json:"minRx,omitempty"`
	// Multiplier is how many intervals without a packet declare the peer down, 1..255;
	// int64 so that an out-of-range value still decodes and is reported as a field error.
	Multiplier *int64 `json:"multiplier,omitempty"`
}

// SecretKeyRef names one key of a Secret.
type SecretKeyRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Key       string `json:"key"`
}

// String formats the reference as namespace/name[key].
func (r SecretKeyRef) String() string { return r.Namespace + "/" + r.Name + "[" + r.Key + "]" }

// BGPConfiguration holds the cluster-wide BGP settings. Cluster-scoped; only the object
// named ConfigurationName is read.
type BGPConfiguration struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   BGPConfigurationSpec `json:"spec"`
	Status Status               `json:"status,omitempty"`
}

// BGPConfigurationSpec mirrors the CRD's spec. Pointers tell an absent field (the default,
// or the agent's flag) from a set one.
type BGPConfigurationSpec struct {
	ASNumber                   *int64                `json:"asNumber,omitempty"`
	NodeToNodeMesh             *bool                 `json:"nodeToNodeMesh,omitempty"`
	RouteReflectorNodeSelector *metav1.LabelSelector `json:"routeReflectorNodeSelector,omitempty"`
	RouteReflectorClusterID    string                `json:"routeReflectorClusterID,omitempty"`
	Communities                []string              `json:"communities,omitempty"`
	ExportPodCIDRs             *bool                 `json:"exportPodCIDRs,omitempty"`
	ClusterCIDRs               []string              `json:"clusterCIDRs,omitempty"`
	ServiceCIDRs               []string              `json:"serviceCIDRs,omitempty"`
	// ServiceClusterIPs are the Service CIDRs advertised as a whole to external peers.
	ServiceClusterIPs []string `json:"serviceClusterIPs,omitempty"`
	// ServiceExternalIPs and ServiceLoadBalancerIPs are allow-lists: a Service's
	// spec.externalIPs and status.loadBalancer.ingress IPs inside them are advertised as /32
	// or /128 to external peers.
	ServiceExternalIPs     []string `json:"serviceExternalIPs,omitempty"`
	ServiceLoadBalancerIPs []string `json:"serviceLoadBalancerIPs,omitempty"`
	// Advertisements sets communities and AS-path prepending per class of prefix.
	Advertisements *AdvertisementsSpec `json:"advertisements,omitempty"`
	// MeshBFD runs BFD on the sessions between nodes (mesh and route reflectors); nil (the
	// default) runs none, for the reason given at BGPPeerSpec.BFD: with it, every agent
	// restart resets the other nodes' sessions to this one.
	MeshBFD *BFDSpec `json:"meshBFD,omitempty"`
}

// AdvertisementsSpec holds the path attributes of each class of advertised prefix, so
// routers can tell pod CIDRs from Service addresses.
type AdvertisementsSpec struct {
	PodCIDRs        *AdvertisementSpec `json:"podCIDRs,omitempty"`
	ClusterIPs      *AdvertisementSpec `json:"clusterIPs,omitempty"`
	ExternalIPs     *AdvertisementSpec `json:"externalIPs,omitempty"`
	LoadBalancerIPs *AdvertisementSpec `json:"loadBalancerIPs,omitempty"`
}

// AdvertisementSpec is what is attached to one class of prefixes.
type AdvertisementSpec struct {
	// Communities are standard communities "asn:value".
	Communities []string `json:"communities,omitempty"`
	// ASPathPrepend is how many extra times the node's AS is prepended, 0..MaxASPathPrepend.
	ASPathPrepend *int64 `json:"asPathPrepend,omitempty"`
}

// Status is the status of both resources.
type Status struct {
	// ObservedGeneration is the metadata.generation the conditions describe.
	ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
}
