package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/podroute/podroute/cni"
)

// The table and its fixed objects. Every other chain and set is named after a digest of its
// content (see doc.go), so a name always means the same rules or the same selection.
const (
	// TableName is the nftables table (family inet) that holds every policy object.
	TableName = "podroute-policy"
	// ForwardChain is the base chain, in the forward hook at filter priority.
	ForwardChain = "forward"
	// HoldChain drops what an unjudged pod interface sends or is sent (see PodInterfaceGroup).
	HoldChain = "hold"
	// IngressMap and EgressMap map a pod's host veth to the chain that polices traffic to
	// and from it: "jump ingress-<digest>", "jump egress-<digest>". A veth that is in
	// neither map is open in that direction.
	IngressMap = "ingress-veths"
	EgressMap  = "egress-veths"
	// JudgedSet holds the host veth of every local pod the agent has judged, policed or not.
	JudgedSet = "judged-veths"
	// SelfSet holds "veth . veth" for every policed pod: a pod cannot block itself.
	SelfSet = "self-veths"

	// PodInterfaceGroup is the interface group (ip link set group) that marks a podroute
	// host veth: the plugin's cni.HostVethGroup, set as it creates the veth. A veth in this
	// group that the agent has not judged is held: see doc.go.
	PodInterfaceGroup = cni.HostVethGroup

	// layoutVersion is part of every digest: a change to how rules or elements are written
	// changes every name, so an agent never trusts an object an older one wrote differently.
	layoutVersion = "podroute-policy/1"
)

// Name prefixes of content-addressed objects.
const (
	ingressPrefix = "ingress-"
	egressPrefix  = "egress-"
	pods4Prefix   = "pods4-"
	pods6Prefix   = "pods6-"
	cidrs4Prefix  = "cidrs4-"
	cidrs6Prefix  = "cidrs6-"
	ports4Prefix  = "ports4-"
	ports6Prefix  = "ports6-"
)

// Ruleset is the desired content of the table: what Compile makes and Reconciler.Sync
// applies. The forward base chain and the two maps' definitions are fixed and not listed.
type Ruleset struct {
	// Active is false when there is no NetworkPolicy in the cluster: the table must not
	// exist, so nothing of podroute's policy touches a packet.
	Active bool
	// Chains are the regular chains by name: one per distinct pod rule list and direction,
	// shared by every pod whose policies compile to the same rules, and the hold chain.
	Chains map[string]*Chain
	// Sets by name: peer addresses, ipBlocks, named-port destinations, judged and self.
	Sets map[string]*Set
	// Ingress and Egress map a local pod's host veth to its chain in that direction; a pod
	// that no policy of the direction selects is absent, and open.
	Ingress, Egress map[string]string
	// Problems are what Compile could not honour in the policies that select this node's
	// pods, one line each, sorted: an invalid selector, an unknown protocol, a named port
	// with endPort. The piece concerned allows nothing; the rest of its policy is in force.
	Problems []string
}

// Chain is a regular chain and its rules, in order.
type Chain struct {
	Name  string
	Rules []Rule
}

// Rule is one rule: its text in nft syntax and its comment (the policy it comes from).
type Rule struct {
	Rule, Comment string
}

// Set is a named set and its elements.
type Set struct {
	Name string
	// Type is the nft key type: "ipv4_addr", "ipv6_addr", "ifname", concatenations.
	Type     string
	Interval bool
	Comment  string
	// Static sets (ipBlocks) have elements that follow from their name alone: the
	// reconciler creates them whole and never diffs them.
	Static bool
	// Elements are keys, each a list of fields for concatenated types, sorted.
	Elements [][]string
}

// digest names content: the first 16 hex digits of SHA-256 over the layout version and parts.
func digest(parts ...string) string {
	h := sha256.New()
	h.Write([]byte(layoutVersion))
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// chainDigest names a rule list.
func chainDigest(rules []Rule) string {
	parts := make([]string, 0, 2*len(rules))
	for _, r := range rules {
		parts = append(parts, r.Rule, r.Comment)
	}
	return digest(parts...)
}

// elementKey joins an element's fields the way the reconciler compares them.
func elementKey(fields []string) string { return strings.Join(fields, " . ") }

// comment keeps a comment within nftables' 128 bytes.
func comment(s string) string {
	const max = 127
	if len(s) <= max {
		return s
	}
	return s[:max-3] + "..."
}
