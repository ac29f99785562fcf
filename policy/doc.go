// Package policy enforces Kubernetes NetworkPolicy (networking.k8s.io/v1) for the pods of a
// node, in the kernel, with nftables.
//
// It has two halves. Compile is a pure function from the cluster's NetworkPolicies,
// Namespaces and pods and this node's pods (with their host veths) to a Ruleset: the content
// the node's table must have. A Reconciler applies a Ruleset to the kernel through
// sigs.k8s.io/knftables, changing only what differs, in one transaction per pass.
//
//	in := &policy.Input{Policies: ..., Namespaces: ..., Pods: ..., Local: ...}
//	rs := policy.Compile(in)        // rs.Problems: what could not be honoured, for the log
//	r, err := policy.New(logger)    // nft binary and CAP_NET_ADMIN needed
//	changes, err := r.Sync(ctx, rs) // idempotent; a pass with nothing to change runs nothing
//
// # The table
//
// Everything lives in one table of its own, inet podroute-policy (TableName). It is not
// shared with egress's inet podroute: egress rewrites its chain and sets on every pass and
// deletes its whole table when masquerade is off, while this reconciler diffs the kernel
// against what it wants and must own every object in its table to delete what it no longer
// wants; apart, neither can take the other's rules with it, and each can be removed alone.
//
//	table inet podroute-policy
//	  chain forward     type filter hook forward priority filter; policy accept
//	    ct state established,related accept                  replies of allowed connections
//	    iifname . oifname @self-veths accept                 a pod cannot block itself
//	    iifgroup 201 iifname != @judged-veths jump hold      new pods, see below
//	    oifgroup 201 oifname != @judged-veths jump hold
//	    iifname vmap @egress-veths                           the sending pod's egress chain
//	    oifname vmap @ingress-veths                          the receiving pod's ingress chain
//	  map ingress-veths, egress-veths   ifname : verdict     host veth → "jump ingress-<digest>"
//	  chain ingress-<digest>, egress-<digest>                one per distinct rule list
//	    ip saddr @pods4-<digest> tcp dport { 80, 8000-8100 } return    (allowed)
//	    ip6 saddr @pods6-<digest> tcp dport { 80, 8000-8100 } return
//	    ip saddr @cidrs4-<digest> meta l4proto udp return
//	    ip daddr . meta l4proto . th dport @ports4-<digest> return     (egress named ports)
//	    counter drop                                         nothing allowed it
//	  chain hold        counter drop
//	  set pods4-<digest>, pods6-<digest>     ipv4_addr, ipv6_addr: the pods a peer selects
//	  set cidrs4-<digest>, cidrs6-<digest>   interval: an ipBlock's CIDR less its excepts
//	  set ports4-<digest>, ports6-<digest>   addr . inet_proto . inet_service: named ports
//	  set judged-veths                       ifname: local pods the agent has judged
//	  set self-veths                         ifname . ifname: policed pods, to themselves
//
// A pod's chain holds, in order, the rules of every policy that selects it, each rule
// returning to the base chain when a packet matches (one nft rule per peer, family and
// protocol), then a drop. Jumping (not going to) the chain lets a packet between two pods of
// the node be judged twice: by the sender's egress chain, then by the receiver's ingress
// chain. A veth in neither map is open: no policy of that direction selects its pod.
//
// Only the forward hook is used, and that is the whole of the node exception: traffic
// between a pod and its own node (kubelet probes, host-network pods, node-local services)
// takes the input and output paths and is never judged, as the API requires ("traffic is
// allowed ... if the traffic source is the pod's local node"). Everything else a pod sends
// or receives is forwarded: to and from pods of this node, pods of other nodes, Services
// (judged after kube-proxy's DNAT in prerouting, so on the backend's address, and before its
// masquerade in postrouting, so on the client's) and the outside.
//
// # Names are digests of content
//
// Every chain and set but the fixed ones is named after a digest (with a layout version) of
// what defines it: a chain after its rules, a pod set after its selection ("pods{app=web} in
// namespace shop"), an ipBlock set after its CIDR and excepts, a named-port set after its
// peers and names. So:
//   - a packet's cost does not grow with the number of pods: one hash lookup per map, one set
//     lookup per rule of the pod's chain, whatever a set holds;
//   - pods that come and go change set elements only, never rules: the rules name the
//     selection, not its members; a pod without a given family's address changes nothing
//     either, as both families' sets always exist;
//   - pods whose policies compile alike share one chain (a Deployment's replicas: one chain),
//     and identical selectors share their sets across policies;
//   - a policy change makes new chains under new names; the same transaction points the map
//     elements of the pods concerned at them and deletes the chains left unused. A chain
//     that stays is never touched, and nothing is ever flushed under traffic.
//
// # Restarts
//
// The rules are in the kernel: while the agent is stopped, every policy in force stays in
// force, and new connections keep being judged. On its first Sync a Reconciler reads the
// table (chains with the comments of their rules, sets, elements of the sets that can
// change, maps); when the agent's view is the one the kernel has, it changes nothing, and
// otherwise it changes only what differs, in one atomic transaction, so there is no window
// in which a packet meets an empty or half-written ruleset. The caller must not Sync before
// its informers (NetworkPolicies, Namespaces, Pods) have synced: a partial view would be
// applied as a true one. Later passes trust the image of what was applied last (nothing
// else writes the table); a transaction that fails against that image makes the pass read
// the kernel and try once more, and Invalidate forces a read, for a periodic check. A chain whose rules were cut by hand is
// refilled, and objects an older layout left are deleted.
//
// # New pods
//
// A pod must not have open access between its CNI ADD and the agent judging it. Two layers
// see to it:
//   - Judged before the veth exists. A pod is bound to its node (spec.nodeName) before the
//     kubelet creates its sandbox, and its host veth's name follows from its namespace and
//     name alone (cni.HostVethName), while its chains match on that name, not on addresses.
//     So the agent lists the pod in Input.Local as soon as it is bound: its map elements
//     and judged-veths entry are in the kernel before CNI ADD makes the veth, and its
//     addresses reach the peer sets when it has them.
//   - Held until judged. For an agent that is stopped or behind, the forward chain sends
//     every packet to or from an interface of group PodInterfaceGroup (201, podroute's
//     number, as for routes) that is not in judged-veths to the hold chain, which drops it
//     (replies of established connections pass before it). CNI ADD creates the host veth
//     in that group (IFLA_GROUP in the same RTM_NEWLINK that creates it, cni.HostVethGroup)
//     and CHECK verifies it, so no packet ever crosses an unjudged podroute veth unheld. A
//     held pod in a namespace without policies is wrongly denied until the agent is back; a
//     held pod is never wrongly allowed. Veths made by an older plugin, without the group,
//     are not held; they are judged like any other once the agent lists their pod.
//
// The hold is in force only while the table exists, that is while some NetworkPolicy exists
// in the cluster: without one, every pod is open and the table is deleted
// (Ruleset.Active false), leaving no podroute-policy rule that affects any packet.
//
// # Semantics worth knowing
//
//   - policyTypes default to Ingress, plus Egress when the policy has egress rules; an
//     Ingress policy without rules is a default deny; a missing from/to matches every
//     address, missing ports every port; a peer's podSelector alone is the policy's
//     namespace, namespaceSelector {} every namespace; a port without protocol is TCP.
//   - Named ports resolve on the destination pod: the policed pod for ingress (so pods of one
//     policy with different port numbers get different chains), each destination for egress
//     (a set of address . protocol . port of the pods the rule's peers pick, every pod when
//     it has no peers; an ipBlock peer contributes the pods inside it).
//   - ipBlock matches addresses, pods' included; a Service's ClusterIP never matches, as
//     packets are judged after DNAT. Traffic that kube-proxy on another node masqueraded
//     (NodePort, externalTrafficPolicy Cluster) arrives from that node's address.
//   - Pods on the host network are not policed and are never peers: their address is their
//     node's.
//   - Connections established before a policy denied them go on (conntrack is not flushed);
//     denied packets are dropped, not rejected.
//   - What the API server refuses (a peer without selectors, an unparsable CIDR, endPort
//     with a named port, an unknown protocol or operator) allows nothing and is reported in
//     Ruleset.Problems; the rest of its policy stays in force.
//
// # Drops
//
// Every drop rule counts (ReadDrops reads the counters, ChainPolicies names the policies
// behind a chain). With Input.LogDrops each is preceded by a log rule, at most 10 packets a
// second per chain in bursts of 20, with the prefix "podroute-policy drop ingress: ",
// "... egress: " or "podroute-policy hold: "; the chains are then other chains (their names
// are digests of their rules), swapped in as any policy change is.
//
// # Not supported yet
//
// (The agent runs this package on a loop of its own, agent/policy.go, fed by
// cluster.PolicyWatcher.) A pod's second interface (CNI_IFNAME other than eth0) is not
// policed. AdminNetworkPolicy and BaselineAdminNetworkPolicy are not implemented. ICMP is
// not special-cased: a rule without ports allows it, a rule with ports does not, as
// upstream. SCTP needs the kernel's SCTP conntrack, as for kube-proxy.
package policy
