package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Compile turns the cluster's policies and pods into the table this node needs. It is a pure
// function of in: the same input gives the same Ruleset, names included.
//
// Semantics follow networking.k8s.io/v1:
//   - a policy selects pods of its own namespace (an empty podSelector: all of them); its
//     policyTypes default to Ingress, plus Egress when it has egress rules;
//   - a pod that no policy of a type selects is open for that type; a selected pod is allowed
//     what at least one rule of at least one selecting policy allows, and nothing else (an
//     Ingress policy without rules is a default deny);
//   - in a rule, an empty or missing from/to matches every address and empty or missing ports
//     every port; otherwise a packet must match one peer and one port;
//   - a peer's podSelector alone picks pods of the policy's namespace, namespaceSelector alone
//     every pod of the namespaces it picks ({} is all), both together the pods that match in
//     those namespaces; ipBlock is a CIDR less its excepts, matched on addresses whatever they
//     belong to;
//   - a port without protocol is TCP; a protocol without port is every port of it; endPort
//     makes a range; a named port resolves on the destination pod: for ingress on the policed
//     pod, for egress on each pod the rule's peers pick (only pods have named ports, so an
//     ipBlock with a named port reaches the pods inside it that have the port);
//   - pods on the host network are neither policed nor peers;
//   - replies of allowed connections pass, traffic between a pod and its own node is never
//     policed, and a pod cannot block itself (see doc.go for how).
func Compile(in *Input) *Ruleset {
	c := newCompiler(in)
	return c.run()
}

const (
	dirIngress = "ingress"
	dirEgress  = "egress"

	dropComment = "podroute-policy: not allowed by any policy"
	holdComment = "podroute-policy: pod interface not judged yet"
	logComment  = "podroute-policy: drop logged (Input.LogDrops)"
)

// logRule logs, at most 10 packets a second per chain (bursts of 20), what the drop rule
// after it is about to drop, with prefix in the kernel log ("podroute-policy drop ingress: "
// and the packet's interfaces, addresses and ports).
func logRule(prefix string) Rule {
	return Rule{Rule: fmt.Sprintf(`limit rate 10/second burst 20 packets log prefix "%s" level info`, prefix), Comment: logComment}
}

// protocols are the protocols NetworkPolicy knows, in the order rules are written.
var protocols = []string{"tcp", "udp", "sctp"}

type policyInfo struct {
	key             string // namespace/name
	ns              string
	np              *networkingv1.NetworkPolicy
	sel             labels.Selector // nil: invalid, selects nothing
	ingress, egress bool
	ingressNamed    bool // an ingress rule names a port: its rules depend on the pod
}

type compiler struct {
	rs       *Ruleset
	problems map[string]bool

	nsLabels map[string]map[string]string
	peers    map[string][]*Pod // by namespace: pods that can be peers (have IPs, not host network)
	peerNS   []string          // namespaces with peers, sorted
	local    []*LocalPod

	policies []*policyInfo
	byNS     map[string][]*policyInfo

	selections map[string][]*Pod   // selection key → pods
	blocks     map[string]*ipBlock // ipBlock key → parsed block
	rules      map[string][]Rule   // policy key + direction → rules, when they do not depend on the pod
	chains     map[string]string   // direction, policies (and ports, if named) → chain name
	logDrops   bool
}

func newCompiler(in *Input) *compiler {
	c := &compiler{
		rs: &Ruleset{
			Chains:  map[string]*Chain{},
			Sets:    map[string]*Set{},
			Ingress: map[string]string{},
			Egress:  map[string]string{},
		},
		problems:   map[string]bool{},
		nsLabels:   in.Namespaces,
		peers:      map[string][]*Pod{},
		byNS:       map[string][]*policyInfo{},
		selections: map[string][]*Pod{},
		blocks:     map[string]*ipBlock{},
		rules:      map[string][]Rule{},
		chains:     map[string]string{},
		logDrops:   in.LogDrops,
	}

	// Peers: every pod, this node's included, once each.
	seen := map[string]bool{}
	addPeer := func(p *Pod) {
		k := p.Namespace + "/" + p.Name
		if seen[k] {
			return
		}
		seen[k] = true
		if p.HostNetwork || len(p.IPs) == 0 {
			return
		}
		c.peers[p.Namespace] = append(c.peers[p.Namespace], p)
	}
	for i := range in.Pods {
		addPeer(&in.Pods[i])
	}
	for i := range in.Local {
		c.local = append(c.local, &in.Local[i])
		addPeer(&in.Local[i].Pod)
	}
	for ns, pods := range c.peers {
		c.peerNS = append(c.peerNS, ns)
		slices.SortFunc(pods, func(a, b *Pod) int { return cmp.Compare(a.Name, b.Name) })
	}
	slices.Sort(c.peerNS)
	slices.SortFunc(c.local, func(a, b *LocalPod) int { return cmp.Compare(a.HostVeth, b.HostVeth) })

	for _, np := range in.Policies {
		if np == nil {
			continue
		}
		c.policies = append(c.policies, c.policyInfo(np))
	}
	slices.SortFunc(c.policies, func(a, b *policyInfo) int { return cmp.Compare(a.key, b.key) })
	for _, p := range c.policies {
		c.byNS[p.ns] = append(c.byNS[p.ns], p)
	}
	return c
}

func (c *compiler) problem(policy, format string, args ...any) {
	c.problems[policy+": "+fmt.Sprintf(format, args...)] = true
}

func (c *compiler) policyInfo(np *networkingv1.NetworkPolicy) *policyInfo {
	p := &policyInfo{key: np.Namespace + "/" + np.Name, ns: np.Namespace, np: np}
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		c.problem(p.key, "spec.podSelector: %v (the policy selects no pod)", err)
	} else {
		p.sel = sel
	}
	if len(np.Spec.PolicyTypes) == 0 {
		p.ingress = true
		p.egress = len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.ingress = true
		case networkingv1.PolicyTypeEgress:
			p.egress = true
		default:
			c.problem(p.key, "spec.policyTypes: unknown type %q", t)
		}
	}
	for _, r := range np.Spec.Ingress {
		for _, pt := range r.Ports {
			if pt.Port != nil && pt.Port.Type == intstr.String {
				p.ingressNamed = true
			}
		}
	}
	return p
}

func (c *compiler) run() *Ruleset {
	rs := c.rs
	rs.Active = len(c.policies) > 0
	if !rs.Active {
		return rs
	}
	hold := []Rule{{Rule: "counter drop", Comment: holdComment}}
	if c.logDrops {
		hold = append([]Rule{logRule("podroute-policy hold: ")}, hold...)
	}
	rs.Chains[HoldChain] = &Chain{Name: HoldChain, Rules: hold}
	judged := &Set{Name: JudgedSet, Type: "ifname", Comment: "podroute-policy: local pods the agent has judged"}
	self := &Set{Name: SelfSet, Type: "ifname . ifname", Comment: "podroute-policy: policed pods, to themselves"}
	rs.Sets[JudgedSet], rs.Sets[SelfSet] = judged, self

	veths := map[string]string{}
	for _, lp := range c.local {
		pod := &lp.Pod
		key := pod.Namespace + "/" + pod.Name
		if pod.HostNetwork {
			continue
		}
		if !validVeth(lp.HostVeth) {
			c.problem(key, "host veth %q is not an interface name", lp.HostVeth)
			continue
		}
		if other, ok := veths[lp.HostVeth]; ok {
			c.problem(key, "host veth %s is also pod %s's; judged as %s", lp.HostVeth, other, other)
			continue
		}
		veths[lp.HostVeth] = key
		judged.Elements = append(judged.Elements, []string{lp.HostVeth})

		in, out := c.selecting(pod)
		if len(in) > 0 {
			rs.Ingress[lp.HostVeth] = c.chain(ingressPrefix, in, dirIngress, pod)
		}
		if len(out) > 0 {
			rs.Egress[lp.HostVeth] = c.chain(egressPrefix, out, dirEgress, pod)
		}
		if len(in)+len(out) > 0 {
			self.Elements = append(self.Elements, []string{lp.HostVeth, lp.HostVeth})
		}
	}
	for _, s := range rs.Sets {
		sortElements(s.Elements)
	}
	for p := range c.problems {
		rs.Problems = append(rs.Problems, p)
	}
	slices.Sort(rs.Problems)
	return rs
}

// selecting returns the policies that select a pod, by direction, ordered by key. A policy
// with an invalid podSelector selects nothing.
func (c *compiler) selecting(pod *Pod) (in, out []*policyInfo) {
	for _, p := range c.byNS[pod.Namespace] {
		if p.sel == nil || !p.sel.Matches(labels.Set(pod.Labels)) {
			continue
		}
		if p.ingress {
			in = append(in, p)
		}
		if p.egress {
			out = append(out, p)
		}
	}
	return in, out
}

// validVeth: an interface name nft can hold in an ifname key and a rule can quote.
func validVeth(s string) bool {
	return s != "" && len(s) <= 15 && !strings.ContainsAny(s, "\" \t\n/\\*")
}

// chain builds (or finds) the chain of one pod in one direction: the rules of every policy
// that selects it, then a drop. Pods whose policies compile alike share the chain.
func (c *compiler) chain(prefix string, pols []*policyInfo, dir string, pod *Pod) string {
	// The rules depend on the policies only, and on the pod's ports if a name must resolve.
	var kb strings.Builder
	kb.WriteString(dir)
	named := false
	for _, p := range pols {
		kb.WriteString("\x00" + p.key)
		named = named || dir == dirIngress && p.ingressNamed
	}
	if named {
		for _, pp := range pod.Ports {
			fmt.Fprintf(&kb, "\x01%s/%s/%d", pp.Name, pp.Protocol, pp.Port)
		}
	}
	key := kb.String()
	if name, ok := c.chains[key]; ok {
		return name
	}
	var rules []Rule
	for _, p := range pols {
		rules = append(rules, c.policyRules(p, dir, pod)...)
	}
	if c.logDrops {
		rules = append(rules, logRule("podroute-policy drop "+dir+": "))
	}
	rules = append(rules, Rule{Rule: "counter drop", Comment: dropComment})
	name := prefix + chainDigest(rules)
	if _, ok := c.rs.Chains[name]; !ok {
		c.rs.Chains[name] = &Chain{Name: name, Rules: rules}
	}
	c.chains[key] = name
	return name
}

func (c *compiler) policyRules(p *policyInfo, dir string, pod *Pod) []Rule {
	cacheable := dir == dirEgress || !p.ingressNamed
	key := p.key + " " + dir
	if cacheable {
		if r, ok := c.rules[key]; ok {
			return r
		}
	}
	var out []Rule
	if dir == dirIngress {
		for i, r := range p.np.Spec.Ingress {
			out = append(out, c.rule(p, dir, i, r.Ports, r.From, pod)...)
		}
	} else {
		for i, r := range p.np.Spec.Egress {
			out = append(out, c.rule(p, dir, i, r.Ports, r.To, pod)...)
		}
	}
	if cacheable {
		c.rules[key] = out
	}
	return out
}

// rule compiles one ingress or egress rule: one nft rule per (peer, family, protocol) that
// returns to the base chain (allowed), plus the named-port lookups of an egress rule.
func (c *compiler) rule(p *policyInfo, dir string, idx int, ports []networkingv1.NetworkPolicyPort, peers []networkingv1.NetworkPolicyPeer, pod *Pod) []Rule {
	where := fmt.Sprintf("spec.%s[%d]", dir, idx)
	cm := comment(fmt.Sprintf("%s %s[%d]", p.key, dir, idx))
	ps := c.portSpec(p.key, where, ports)
	if dir == dirIngress {
		ps = ps.resolve(pod)
	}
	clauses := ps.clauses()
	var out []Rule
	if len(clauses) > 0 {
		for _, m := range c.peerMatches(p, dir, where, peers) {
			for _, cl := range clauses {
				out = append(out, Rule{Rule: join(m, cl, "return"), Comment: cm})
			}
		}
	}
	if dir == dirEgress && len(ps.named) > 0 {
		out = append(out, c.namedPortRules(p, where, peers, ps.named, cm)...)
	}
	return out
}

func join(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		if p == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p)
	}
	return b.String()
}

// peerMatches returns the address matches of a rule's peers: "" for a rule without peers
// (every address), else one per peer and family ("ip saddr @pods4-…").
func (c *compiler) peerMatches(p *policyInfo, dir, where string, peers []networkingv1.NetworkPolicyPeer) []string {
	if len(peers) == 0 {
		return []string{""}
	}
	field := "saddr"
	if dir == dirEgress {
		field = "daddr"
	}
	list := "from"
	if dir == dirEgress {
		list = "to"
	}
	var out []string
	for i := range peers {
		peer := &peers[i]
		pw := fmt.Sprintf("%s.%s[%d]", where, list, i)
		switch {
		case peer.IPBlock != nil:
			if peer.PodSelector != nil || peer.NamespaceSelector != nil {
				c.problem(p.key, "%s: ipBlock with a selector (the API refuses it); the selector is ignored", pw)
			}
			b := c.ipBlock(p.key, pw, peer.IPBlock)
			if b == nil {
				continue
			}
			fam := "ip"
			if b.v6 {
				fam = "ip6"
			}
			out = append(out, join(fam, field, "@"+c.blockSet(b).Name))
		case peer.PodSelector != nil || peer.NamespaceSelector != nil:
			key, pods, ok := c.selection(p, pw, peer)
			if !ok {
				continue
			}
			s4, s6 := c.podSets(key, pods)
			out = append(out, join("ip", field, "@"+s4), join("ip6", field, "@"+s6))
		default:
			c.problem(p.key, "%s: a peer without podSelector, namespaceSelector or ipBlock (the API refuses it) matches nothing", pw)
		}
	}
	return out
}

// selection resolves a selector peer to its pods. The key names the selection: the same
// selectors in the same scope give the same key, and so share their sets.
func (c *compiler) selection(p *policyInfo, where string, peer *networkingv1.NetworkPolicyPeer) (string, []*Pod, bool) {
	podSel := labels.Everything()
	if peer.PodSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
		if err != nil {
			c.problem(p.key, "%s.podSelector: %v (the peer matches nothing)", where, err)
			return "", nil, false
		}
		podSel = s
	}
	var nsSel labels.Selector
	scope := p.ns
	if peer.NamespaceSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
		if err != nil {
			c.problem(p.key, "%s.namespaceSelector: %v (the peer matches nothing)", where, err)
			return "", nil, false
		}
		nsSel = s
	}
	key := "pods{" + podSel.String() + "} in namespace " + scope
	if nsSel != nil {
		key = "pods{" + podSel.String() + "} in namespaces{" + nsSel.String() + "}"
	}
	if pods, ok := c.selections[key]; ok {
		return key, pods, true
	}
	namespaces := []string{p.ns}
	if nsSel != nil {
		namespaces = nil
		for _, ns := range c.peerNS {
			if nsSel.Matches(labels.Set(c.namespaceLabels(ns))) {
				namespaces = append(namespaces, ns)
			}
		}
	}
	var pods []*Pod
	for _, ns := range namespaces {
		for _, pod := range c.peers[ns] {
			if podSel.Matches(labels.Set(pod.Labels)) {
				pods = append(pods, pod)
			}
		}
	}
	if pods == nil {
		pods = []*Pod{}
	}
	c.selections[key] = pods
	return key, pods, true
}

func (c *compiler) namespaceLabels(ns string) map[string]string {
	l := c.nsLabels[ns]
	if l[corev1.LabelMetadataName] == ns {
		return l
	}
	out := make(map[string]string, len(l)+1)
	for k, v := range l {
		out[k] = v
	}
	out[corev1.LabelMetadataName] = ns
	return out
}

// podSets makes the IPv4 and IPv6 address sets of a selection, both always (so a pod that
// brings the first address of a family changes elements, not rules).
func (c *compiler) podSets(key string, pods []*Pod) (string, string) {
	d := digest("pods", key)
	n4, n6 := pods4Prefix+d, pods6Prefix+d
	if _, ok := c.rs.Sets[n4]; ok {
		return n4, n6
	}
	s4 := &Set{Name: n4, Type: "ipv4_addr", Comment: comment("podroute-policy: " + key)}
	s6 := &Set{Name: n6, Type: "ipv6_addr", Comment: comment("podroute-policy: " + key)}
	seen := map[netip.Addr]bool{}
	for _, pod := range pods {
		for _, ip := range pod.IPs {
			ip = ip.Unmap()
			if !ip.IsValid() || seen[ip] {
				continue
			}
			seen[ip] = true
			if ip.Is4() {
				s4.Elements = append(s4.Elements, []string{ip.String()})
			} else {
				s6.Elements = append(s6.Elements, []string{ip.String()})
			}
		}
	}
	c.rs.Sets[n4], c.rs.Sets[n6] = s4, s6
	return n4, n6
}

// ipBlock is a parsed ipBlock: its CIDR less its excepts, as prefixes.
type ipBlock struct {
	key      string
	v6       bool
	prefixes []netip.Prefix
}

func (b *ipBlock) contains(a netip.Addr) bool {
	for _, p := range b.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ipBlock parses a peer's ipBlock. An unparsable CIDR or except makes the whole peer match
// nothing: ignoring an except would allow more than the policy says.
func (c *compiler) ipBlock(policy, where string, blk *networkingv1.IPBlock) *ipBlock {
	cidr, err := netip.ParsePrefix(strings.TrimSpace(blk.CIDR))
	if err != nil {
		c.problem(policy, "%s.ipBlock.cidr: %q is not a CIDR (the peer matches nothing)", where, blk.CIDR)
		return nil
	}
	cidr = cidr.Masked()
	var excepts []netip.Prefix
	for i, e := range blk.Except {
		ep, err := netip.ParsePrefix(strings.TrimSpace(e))
		if err != nil {
			c.problem(policy, "%s.ipBlock.except[%d]: %q is not a CIDR (the peer matches nothing)", where, i, e)
			return nil
		}
		ep = ep.Masked()
		if ep.Addr().Is4() != cidr.Addr().Is4() || !cidr.Overlaps(ep) {
			continue // the API refuses an except outside the CIDR; it takes nothing away
		}
		excepts = append(excepts, ep)
	}
	slices.SortFunc(excepts, comparePrefix)
	excepts = slices.Compact(excepts)
	key := cidr.String()
	if len(excepts) > 0 {
		es := make([]string, len(excepts))
		for i, e := range excepts {
			es[i] = e.String()
		}
		key += " except " + strings.Join(es, ",")
	}
	if b, ok := c.blocks[key]; ok {
		return b
	}
	b := &ipBlock{key: key, v6: !cidr.Addr().Is4(), prefixes: subtract(cidr, excepts)}
	c.blocks[key] = b
	return b
}

func (c *compiler) blockSet(b *ipBlock) *Set {
	d := digest("cidrs", b.key)
	name := cidrs4Prefix + d
	typ := "ipv4_addr"
	if b.v6 {
		name, typ = cidrs6Prefix+d, "ipv6_addr"
	}
	if s, ok := c.rs.Sets[name]; ok {
		return s
	}
	s := &Set{Name: name, Type: typ, Interval: true, Static: true, Comment: comment("podroute-policy: ipBlock " + b.key)}
	for _, p := range b.prefixes {
		s.Elements = append(s.Elements, []string{p.String()})
	}
	c.rs.Sets[name] = s
	return s
}

// subtract returns p less every prefix of ex, as the fewest aligned prefixes (an interval set
// holds them without overlap, and nft lists them back as prefixes).
func subtract(p netip.Prefix, ex []netip.Prefix) []netip.Prefix {
	overlaps := false
	for _, e := range ex {
		if e.Bits() <= p.Bits() && e.Contains(p.Addr()) {
			return nil // p is excepted whole
		}
		if p.Overlaps(e) {
			overlaps = true
		}
	}
	if !overlaps {
		return []netip.Prefix{p}
	}
	lo, hi := halves(p)
	return append(subtract(lo, ex), subtract(hi, ex)...)
}

// halves splits a prefix into its two halves.
func halves(p netip.Prefix) (netip.Prefix, netip.Prefix) {
	bits := p.Bits() + 1
	lo := netip.PrefixFrom(p.Addr(), bits)
	b := p.Addr().AsSlice()
	idx := p.Bits() / 8
	b[idx] |= 0x80 >> (p.Bits() % 8)
	a, _ := netip.AddrFromSlice(b)
	return lo, netip.PrefixFrom(a, bits)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// Ports.

type portRange struct{ lo, hi int32 }

type namedRef struct{ proto, name string }

// portSpec is a rule's ports: any (no ports listed), whole protocols, numeric ranges, and
// named ports not yet resolved.
type portSpec struct {
	any    bool
	all    map[string]bool
	ranges map[string][]portRange
	named  []namedRef
}

func protoName(p *corev1.Protocol) (string, bool) {
	if p == nil {
		return "tcp", true
	}
	switch *p {
	case corev1.ProtocolTCP, "":
		return "tcp", true
	case corev1.ProtocolUDP:
		return "udp", true
	case corev1.ProtocolSCTP:
		return "sctp", true
	}
	return "", false
}

func (c *compiler) portSpec(policy, where string, ports []networkingv1.NetworkPolicyPort) portSpec {
	ps := portSpec{any: len(ports) == 0, all: map[string]bool{}, ranges: map[string][]portRange{}}
	for i, pt := range ports {
		pw := fmt.Sprintf("%s.ports[%d]", where, i)
		proto, ok := protoName(pt.Protocol)
		if !ok {
			c.problem(policy, "%s: protocol %q is not TCP, UDP or SCTP (the port matches nothing)", pw, *pt.Protocol)
			continue
		}
		switch {
		case pt.Port == nil:
			ps.all[proto] = true
		case pt.Port.Type == intstr.String:
			if pt.EndPort != nil {
				c.problem(policy, "%s: endPort with a named port (the API refuses it; the port matches nothing)", pw)
				continue
			}
			ps.named = append(ps.named, namedRef{proto: proto, name: pt.Port.StrVal})
		default:
			lo, hi := pt.Port.IntVal, pt.Port.IntVal
			if pt.EndPort != nil {
				hi = *pt.EndPort
			}
			if lo < 1 || hi > 65535 || hi < lo {
				c.problem(policy, "%s: port %d to %d is not a range of ports (the port matches nothing)", pw, lo, hi)
				continue
			}
			ps.ranges[proto] = append(ps.ranges[proto], portRange{lo, hi})
		}
	}
	return ps
}

// resolve turns named ports into the numbers the pod gives them; a name the pod does not have
// (for that protocol) matches nothing.
func (ps portSpec) resolve(pod *Pod) portSpec {
	if len(ps.named) == 0 {
		return ps
	}
	out := portSpec{any: ps.any, all: ps.all, ranges: map[string][]portRange{}}
	for proto, r := range ps.ranges {
		out.ranges[proto] = slices.Clone(r)
	}
	for _, n := range ps.named {
		for _, pp := range pod.Ports {
			if proto, _ := protoName(&pp.Protocol); pp.Name == n.name && proto == n.proto && pp.Port >= 1 && pp.Port <= 65535 {
				out.ranges[proto] = append(out.ranges[proto], portRange{pp.Port, pp.Port})
			}
		}
	}
	return out
}

// clauses are the port matches of a rule, one per protocol: "" for a rule without ports, none
// when every port it lists matches nothing (or only named ports, which egress looks up apart).
func (ps portSpec) clauses() []string {
	if ps.any {
		return []string{""}
	}
	var out []string
	for _, proto := range protocols {
		if ps.all[proto] {
			out = append(out, "meta l4proto "+proto)
			continue
		}
		rs := mergeRanges(ps.ranges[proto])
		if len(rs) == 0 {
			continue
		}
		items := make([]string, len(rs))
		for i, r := range rs {
			items[i] = strconv.Itoa(int(r.lo))
			if r.hi != r.lo {
				items[i] += "-" + strconv.Itoa(int(r.hi))
			}
		}
		if len(items) == 1 {
			out = append(out, proto+" dport "+items[0])
		} else {
			out = append(out, proto+" dport { "+strings.Join(items, ", ")+" }")
		}
	}
	return out
}

// mergeRanges sorts ranges and joins those that overlap or touch: an anonymous interval set
// refuses overlapping elements.
func mergeRanges(rs []portRange) []portRange {
	if len(rs) == 0 {
		return nil
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b portRange) int { return cmp.Or(cmp.Compare(a.lo, b.lo), cmp.Compare(a.hi, b.hi)) })
	out := []portRange{rs[0]}
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if r.lo <= last.hi+1 {
			last.hi = max(last.hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// namedPortRules compiles an egress rule's named ports: a set of (address, protocol, port) of
// every pod the rule's peers pick (every pod, without peers) that has a port of that name, so
// the name resolves on each destination pod.
func (c *compiler) namedPortRules(p *policyInfo, where string, peers []networkingv1.NetworkPolicyPeer, named []namedRef, cm string) []Rule {
	type dest struct {
		ip  netip.Addr
		pod *Pod
	}
	var dests []dest
	var peerKeys []string
	addPod := func(pod *Pod, keep func(netip.Addr) bool) {
		for _, ip := range pod.IPs {
			if ip = ip.Unmap(); ip.IsValid() && (keep == nil || keep(ip)) {
				dests = append(dests, dest{ip, pod})
			}
		}
	}
	if len(peers) == 0 {
		peerKeys = append(peerKeys, "any")
		for _, ns := range c.peerNS {
			for _, pod := range c.peers[ns] {
				addPod(pod, nil)
			}
		}
	}
	for i := range peers {
		peer := &peers[i]
		pw := fmt.Sprintf("%s.to[%d]", where, i)
		switch {
		case peer.IPBlock != nil:
			b := c.ipBlock(p.key, pw, peer.IPBlock)
			if b == nil {
				continue
			}
			peerKeys = append(peerKeys, "ipBlock "+b.key)
			for _, ns := range c.peerNS {
				for _, pod := range c.peers[ns] {
					addPod(pod, b.contains)
				}
			}
		case peer.PodSelector != nil || peer.NamespaceSelector != nil:
			key, pods, ok := c.selection(p, pw, peer)
			if !ok {
				continue
			}
			peerKeys = append(peerKeys, key)
			for _, pod := range pods {
				addPod(pod, nil)
			}
		}
	}
	if len(peerKeys) == 0 {
		return nil // every peer was invalid (reported): nothing to reach
	}
	slices.Sort(peerKeys)
	peerKeys = slices.Compact(peerKeys)
	names := make([]string, len(named))
	for i, n := range named {
		names[i] = n.proto + "/" + n.name
	}
	slices.Sort(names)
	names = slices.Compact(names)
	key := "to " + strings.Join(peerKeys, "; ") + " ports " + strings.Join(names, ",")
	d := digest("ports", key)
	n4, n6 := ports4Prefix+d, ports6Prefix+d
	if _, ok := c.rs.Sets[n4]; !ok {
		s4 := &Set{Name: n4, Type: "ipv4_addr . inet_proto . inet_service", Comment: comment("podroute-policy: named ports " + key)}
		s6 := &Set{Name: n6, Type: "ipv6_addr . inet_proto . inet_service", Comment: s4.Comment}
		seen := map[string]bool{}
		for _, d := range dests {
			for _, n := range named {
				for _, pp := range d.pod.Ports {
					proto, _ := protoName(&pp.Protocol)
					if pp.Name != n.name || proto != n.proto || pp.Port < 1 || pp.Port > 65535 {
						continue
					}
					el := []string{d.ip.String(), proto, strconv.Itoa(int(pp.Port))}
					if k := elementKey(el); !seen[k] {
						seen[k] = true
						if d.ip.Is4() {
							s4.Elements = append(s4.Elements, el)
						} else {
							s6.Elements = append(s6.Elements, el)
						}
					}
				}
			}
		}
		c.rs.Sets[n4], c.rs.Sets[n6] = s4, s6
	}
	return []Rule{
		{Rule: "ip daddr . meta l4proto . th dport @" + n4 + " return", Comment: cm},
		{Rule: "ip6 daddr . meta l4proto . th dport @" + n6 + " return", Comment: cm},
	}
}

func sortElements(els [][]string) {
	slices.SortFunc(els, func(a, b []string) int { return cmp.Compare(elementKey(a), elementKey(b)) })
}
