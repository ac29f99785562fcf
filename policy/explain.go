package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The evaluator answers an operator's questions over the same Input Compile reads: which
// policies select a pod and what they allow (Explain), and whether a connection would be
// allowed and by which rule (Check). It goes through the compiler's own selection, ipBlock
// and port code, so its answers are what the kernel's rules do; a pod of another node is
// judged as its own node judges it, by the same rules.

// ErrNoPod is matched (errors.Is) by the errors of a pod the Input does not have.
var ErrNoPod = errors.New("no such pod")

// ErrInvalid is matched (errors.Is) by the errors of a question that cannot be asked: a
// missing field, an unknown protocol, a port out of range, a pod without an address.
var ErrInvalid = errors.New("invalid question")

// PodPolicies is what Explain says of a pod.
type PodPolicies struct {
	Namespace, Name string
	// Local: the pod is this node's, so this node polices it.
	Local bool
	// HostNetwork pods are never policed.
	HostNetwork bool
	IPs         []netip.Addr
	// Ingress and Egress are the policies that select the pod in each direction, ordered by
	// namespace/name. None: the direction is open.
	Ingress, Egress []PolicyRules
	// Problems are what the API server would have refused in these policies, as Compile
	// reports them: the parts concerned allow nothing.
	Problems []string
}

// PolicyRules is one policy's rules of one direction. No rules: it allows nothing (a default
// deny), unless another policy selecting the pod does.
type PolicyRules struct {
	Policy string // namespace/name
	Rules  []RuleSummary
}

// RuleSummary says what one rule allows, readably.
type RuleSummary struct {
	Index int
	// Peers are the sources (ingress) or destinations (egress) it allows; none: every
	// address.
	Peers []string
	// Ports are the ports it allows; none: every port of every protocol.
	Ports []string
}

// Endpoint is a connection's source: a pod (Name set) or an address.
type Endpoint struct {
	Namespace, Name string
	IP              netip.Addr
}

func (e Endpoint) String() string {
	if e.Name != "" {
		return e.Namespace + "/" + e.Name
	}
	return e.IP.String()
}

// Connection is what Check judges: a new connection from a source to a destination pod.
type Connection struct {
	From     Endpoint
	To       Endpoint // a pod
	Port     int
	Protocol string // tcp, udp or sctp (any case)
}

// Verdict is Check's answer: the connection is allowed when both directions allow it.
type Verdict struct {
	From, To string
	// FromIP and ToIP are the addresses judged: a pod's first address of the family both
	// ends have (the source's family, when the source is an address).
	FromIP, ToIP netip.Addr
	Port         int
	Protocol     string
	Allowed      bool
	// Egress is the sender's egress, Ingress the receiver's ingress.
	Egress, Ingress Judgement
}

// Judgement is one direction's answer.
type Judgement struct {
	// Pod is the pod whose policies judge this direction; empty when the source is not a pod.
	Pod     string
	Allowed bool
	// Policed: some policy selects the pod in this direction.
	Policed bool
	// Policies are those that select the pod in this direction.
	Policies []string
	// Rule is the first rule that allows the connection, "shop/allow-web ingress rule 0".
	Rule string
	// Reason says why, in a sentence.
	Reason string
}

// Explain lists the policies that select a pod, in each direction, and what they allow.
func Explain(in *Input, namespace, name string) (*PodPolicies, error) {
	if namespace == "" || name == "" {
		return nil, fmt.Errorf("%w: pod: a namespace and a name are needed", ErrInvalid)
	}
	c := newCompiler(in)
	pod, local := findPod(in, namespace, name)
	if pod == nil {
		return nil, fmt.Errorf("%w: pod %s/%s", ErrNoPod, namespace, name)
	}
	out := &PodPolicies{Namespace: namespace, Name: name, Local: local, HostNetwork: pod.HostNetwork, IPs: slices.Clone(pod.IPs)}
	if pod.HostNetwork {
		return out, nil
	}
	ingress, egress := c.selecting(pod)
	var keys []string
	for _, d := range []struct {
		dir  string
		pols []*policyInfo
		into *[]PolicyRules
	}{{dirIngress, ingress, &out.Ingress}, {dirEgress, egress, &out.Egress}} {
		for _, p := range d.pols {
			pr := PolicyRules{Policy: p.key}
			for i, r := range ruleList(p, d.dir) {
				pr.Rules = append(pr.Rules, c.summarize(p, d.dir, i, r, pod))
			}
			*d.into = append(*d.into, pr)
			keys = append(keys, p.key)
		}
	}
	out.Problems = c.problemsOf(keys)
	return out, nil
}

// Check judges a new connection: the sender's egress, then the receiver's ingress.
func Check(in *Input, conn Connection) (*Verdict, error) {
	proto := strings.ToLower(strings.TrimSpace(conn.Protocol))
	if !slices.Contains(protocols, proto) {
		return nil, fmt.Errorf("%w: protocol: %q is not tcp, udp or sctp", ErrInvalid, conn.Protocol)
	}
	if conn.Port < 1 || conn.Port > 65535 {
		return nil, fmt.Errorf("%w: port: %d is not a port (1 to 65535)", ErrInvalid, conn.Port)
	}
	if conn.To.Namespace == "" || conn.To.Name == "" {
		return nil, fmt.Errorf("%w: destination: a pod (namespace and name) is needed", ErrInvalid)
	}
	dst, _ := findPod(in, conn.To.Namespace, conn.To.Name)
	if dst == nil {
		return nil, fmt.Errorf("%w: destination pod %s", ErrNoPod, conn.To)
	}
	var src *Pod
	fromIP := conn.From.IP.Unmap()
	switch {
	case conn.From.Name != "":
		if src, _ = findPod(in, conn.From.Namespace, conn.From.Name); src == nil {
			return nil, fmt.Errorf("%w: source pod %s", ErrNoPod, conn.From)
		}
	case fromIP.IsValid():
		// An address that is a pod's is that pod: its egress judges the connection too.
		src = podWithIP(in, fromIP)
	default:
		return nil, fmt.Errorf("%w: source: a pod or an address is needed", ErrInvalid)
	}
	fromIP, toIP, err := addresses(src, fromIP, dst, conn)
	if err != nil {
		return nil, err
	}
	v := &Verdict{From: conn.From.String(), To: conn.To.String(), FromIP: fromIP, ToIP: toIP, Port: conn.Port, Protocol: proto}
	c := newCompiler(in)
	if src != nil && src.Namespace == dst.Namespace && src.Name == dst.Name {
		self := Judgement{Pod: podKey(dst), Allowed: true, Reason: "a pod cannot block itself"}
		v.Egress, v.Ingress, v.Allowed = self, self, true
		return v, nil
	}
	if src == nil {
		v.Egress = Judgement{Allowed: true, Reason: fromIP.String() + " is not a pod's address: no egress policy applies"}
	} else {
		v.Egress = c.judge(src, dirEgress, toIP, proto, int32(conn.Port))
	}
	v.Ingress = c.judge(dst, dirIngress, fromIP, proto, int32(conn.Port))
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	return v, nil
}

// ChainPolicies maps each chain of rs to the policies whose rules it holds (every policy
// that selects the pods pointed at it, in its direction: pods share a chain only when the
// same policies select them), keyed by chain name. rs must be Compile(in).
func ChainPolicies(in *Input, rs *Ruleset) map[string][]string {
	c := newCompiler(in)
	out := map[string][]string{}
	for _, lp := range c.local {
		ingress, egress := c.selecting(&lp.Pod)
		for _, d := range []struct {
			veths map[string]string
			pols  []*policyInfo
		}{{rs.Ingress, ingress}, {rs.Egress, egress}} {
			chain, ok := d.veths[lp.HostVeth]
			if !ok {
				continue
			}
			if _, done := out[chain]; done {
				continue
			}
			keys := make([]string, len(d.pols))
			for i, p := range d.pols {
				keys[i] = p.key
			}
			out[chain] = keys
		}
	}
	return out
}

// findPod finds a pod by name, this node's first: those are the pods the node polices.
func findPod(in *Input, namespace, name string) (*Pod, bool) {
	for i := range in.Local {
		if p := &in.Local[i].Pod; p.Namespace == namespace && p.Name == name {
			return p, true
		}
	}
	for i := range in.Pods {
		if p := &in.Pods[i]; p.Namespace == namespace && p.Name == name {
			return p, false
		}
	}
	return nil, false
}

// podWithIP is the pod that has an address, nil if none does; pods on the host network
// share their node's and are not counted.
func podWithIP(in *Input, ip netip.Addr) *Pod {
	for _, p := range allPods(in) {
		if !p.HostNetwork && slices.ContainsFunc(p.IPs, func(a netip.Addr) bool { return a.Unmap() == ip }) {
			return p
		}
	}
	return nil
}

func allPods(in *Input) []*Pod {
	out := make([]*Pod, 0, len(in.Local)+len(in.Pods))
	for i := range in.Local {
		out = append(out, &in.Local[i].Pod)
	}
	for i := range in.Pods {
		out = append(out, &in.Pods[i])
	}
	return out
}

// addresses picks the packet's addresses: the source's family when it is an address, else
// the first family of the destination's that the source has.
func addresses(src *Pod, fromIP netip.Addr, dst *Pod, conn Connection) (netip.Addr, netip.Addr, error) {
	if len(dst.IPs) == 0 {
		return fromIP, netip.Addr{}, fmt.Errorf("%w: destination pod %s has no address yet", ErrInvalid, conn.To)
	}
	if fromIP.IsValid() {
		for _, d := range dst.IPs {
			if d = d.Unmap(); d.Is4() == fromIP.Is4() {
				return fromIP, d, nil
			}
		}
		return fromIP, netip.Addr{}, fmt.Errorf("%w: destination pod %s has no address of the family of %s", ErrInvalid, conn.To, fromIP)
	}
	if len(src.IPs) == 0 {
		return fromIP, netip.Addr{}, fmt.Errorf("%w: source pod %s has no address yet", ErrInvalid, conn.From)
	}
	for _, d := range dst.IPs {
		d = d.Unmap()
		for _, s := range src.IPs {
			if s = s.Unmap(); s.Is4() == d.Is4() {
				return s, d, nil
			}
		}
	}
	return fromIP, netip.Addr{}, fmt.Errorf("%w: pods %s and %s have no address family in common", ErrInvalid, conn.From, conn.To)
}

func podKey(p *Pod) string { return p.Namespace + "/" + p.Name }

func ruleList(p *policyInfo, dir string) []networkingv1.NetworkPolicyIngressRule {
	if dir == dirIngress {
		return p.np.Spec.Ingress
	}
	// An egress rule has the same two lists; view it as an ingress rule to walk both alike.
	out := make([]networkingv1.NetworkPolicyIngressRule, len(p.np.Spec.Egress))
	for i, r := range p.np.Spec.Egress {
		out[i] = networkingv1.NetworkPolicyIngressRule{Ports: r.Ports, From: r.To}
	}
	return out
}

// judge runs one pod's policies of one direction on a packet: peer is the other end's
// address (the source for ingress, the destination for egress).
func (c *compiler) judge(pod *Pod, dir string, peer netip.Addr, proto string, port int32) Judgement {
	j := Judgement{Pod: podKey(pod)}
	if pod.HostNetwork {
		j.Allowed = true
		j.Reason = j.Pod + " is on the host network: never policed"
		return j
	}
	ingress, egress := c.selecting(pod)
	pols := ingress
	if dir == dirEgress {
		pols = egress
	}
	if len(pols) == 0 {
		j.Allowed = true
		j.Reason = "no policy selects " + j.Pod + " for " + dir + ": open"
		return j
	}
	j.Policed = true
	for _, p := range pols {
		j.Policies = append(j.Policies, p.key)
	}
	for _, p := range pols {
		for i, r := range ruleList(p, dir) {
			if c.allows(p, dir, i, r, pod, peer, proto, port) {
				j.Allowed = true
				j.Rule = fmt.Sprintf("%s %s rule %d", p.key, dir, i)
				j.Reason = "allowed by " + j.Rule
				return j
			}
		}
	}
	j.Reason = "selected by " + strings.Join(j.Policies, ", ") + "; no rule allows it"
	return j
}

// allows tells whether one rule lets the packet through, as its compiled nft rules would:
// a peer match with a port clause, or (egress) the named-port lookup.
func (c *compiler) allows(p *policyInfo, dir string, idx int, r networkingv1.NetworkPolicyIngressRule, pod *Pod, peer netip.Addr, proto string, port int32) bool {
	where := fmt.Sprintf("spec.%s[%d]", dir, idx)
	ps := c.portSpec(p.key, where, r.Ports)
	if dir == dirIngress {
		ps = ps.resolve(pod)
	}
	if ps.matches(proto, port) && c.peerMatch(p, dir, where, r.From, peer) {
		return true
	}
	return dir == dirEgress && len(ps.named) > 0 && c.namedPortMatch(p, where, r.From, ps.named, peer, proto, port)
}

// matches is the port clauses of a rule (clauses) applied to a packet.
func (ps portSpec) matches(proto string, port int32) bool {
	if ps.any || ps.all[proto] {
		return true
	}
	for _, r := range ps.ranges[proto] {
		if port >= r.lo && port <= r.hi {
			return true
		}
	}
	return false
}

// peerMatch is peerMatches applied to an address: the rule's sets, looked up.
func (c *compiler) peerMatch(p *policyInfo, dir, where string, peers []networkingv1.NetworkPolicyPeer, addr netip.Addr) bool {
	if len(peers) == 0 {
		return true
	}
	for i := range peers {
		peer := &peers[i]
		pw := fmt.Sprintf("%s.%s[%d]", where, peerList(dir), i)
		switch {
		case peer.IPBlock != nil:
			if b := c.ipBlock(p.key, pw, peer.IPBlock); b != nil && b.contains(addr) {
				return true
			}
		case peer.PodSelector != nil || peer.NamespaceSelector != nil:
			if _, pods, ok := c.selection(p, pw, peer); ok && slices.ContainsFunc(pods, func(q *Pod) bool { return hasIP(q, addr) }) {
				return true
			}
		}
	}
	return false
}

// namedPortMatch is namedPortRules' set applied to a packet: a pod the peers pick has the
// destination address and a port of one of the names, with that protocol and number.
func (c *compiler) namedPortMatch(p *policyInfo, where string, peers []networkingv1.NetworkPolicyPeer, named []namedRef, addr netip.Addr, proto string, port int32) bool {
	hasPort := func(pod *Pod) bool {
		for _, n := range named {
			for _, pp := range pod.Ports {
				pproto, _ := protoName(&pp.Protocol)
				if pp.Name == n.name && pproto == n.proto && n.proto == proto && pp.Port == port {
					return true
				}
			}
		}
		return false
	}
	if len(peers) == 0 {
		for _, ns := range c.peerNS {
			for _, pod := range c.peers[ns] {
				if hasIP(pod, addr) && hasPort(pod) {
					return true
				}
			}
		}
		return false
	}
	for i := range peers {
		peer := &peers[i]
		pw := fmt.Sprintf("%s.to[%d]", where, i)
		switch {
		case peer.IPBlock != nil:
			b := c.ipBlock(p.key, pw, peer.IPBlock)
			if b == nil || !b.contains(addr) {
				continue
			}
			for _, ns := range c.peerNS {
				for _, pod := range c.peers[ns] {
					if hasIP(pod, addr) && hasPort(pod) {
						return true
					}
				}
			}
		case peer.PodSelector != nil || peer.NamespaceSelector != nil:
			_, pods, ok := c.selection(p, pw, peer)
			if !ok {
				continue
			}
			for _, pod := range pods {
				if hasIP(pod, addr) && hasPort(pod) {
					return true
				}
			}
		}
	}
	return false
}

func hasIP(p *Pod, addr netip.Addr) bool {
	return slices.ContainsFunc(p.IPs, func(a netip.Addr) bool { return a.Unmap() == addr })
}

func peerList(dir string) string {
	if dir == dirEgress {
		return "to"
	}
	return "from"
}

// summarize says what one rule allows: its peers and ports, resolved as Compile resolves them.
func (c *compiler) summarize(p *policyInfo, dir string, idx int, r networkingv1.NetworkPolicyIngressRule, pod *Pod) RuleSummary {
	where := fmt.Sprintf("spec.%s[%d]", dir, idx)
	out := RuleSummary{Index: idx}
	for i := range r.From {
		peer := &r.From[i]
		pw := fmt.Sprintf("%s.%s[%d]", where, peerList(dir), i)
		switch {
		case peer.IPBlock != nil:
			if b := c.ipBlock(p.key, pw, peer.IPBlock); b != nil {
				out.Peers = append(out.Peers, "ipBlock "+b.key)
			} else {
				out.Peers = append(out.Peers, "nothing (invalid ipBlock, see problems)")
			}
		case peer.PodSelector != nil || peer.NamespaceSelector != nil:
			_, pods, ok := c.selection(p, pw, peer)
			if !ok {
				out.Peers = append(out.Peers, "nothing (invalid selector, see problems)")
				continue
			}
			out.Peers = append(out.Peers, describeSelection(p.ns, peer, len(pods)))
		default:
			out.Peers = append(out.Peers, "nothing (a peer without selectors or ipBlock, see problems)")
		}
	}
	ps := c.portSpec(p.key, where, r.Ports)
	if ps.any {
		return out
	}
	for _, proto := range protocols {
		if ps.all[proto] {
			out.Ports = append(out.Ports, proto+" (every port)")
		}
		for _, rg := range mergeRanges(ps.ranges[proto]) {
			s := proto + "/" + strconv.Itoa(int(rg.lo))
			if rg.hi != rg.lo {
				s += "-" + strconv.Itoa(int(rg.hi))
			}
			out.Ports = append(out.Ports, s)
		}
	}
	for _, n := range ps.named {
		s := n.proto + "/" + n.name
		if dir == dirEgress {
			out.Ports = append(out.Ports, s+" (as each destination pod names it)")
			continue
		}
		// The numbers resolve would give it on this pod.
		var nums []string
		for _, pp := range pod.Ports {
			if pproto, _ := protoName(&pp.Protocol); pp.Name == n.name && pproto == n.proto && pp.Port >= 1 && pp.Port <= 65535 {
				nums = append(nums, strconv.Itoa(int(pp.Port)))
			}
		}
		nums = slices.Compact(nums)
		if len(nums) == 0 {
			out.Ports = append(out.Ports, s+" (not a port of this pod: matches nothing)")
		} else {
			out.Ports = append(out.Ports, s+" (= "+strings.Join(nums, ",")+" on this pod)")
		}
	}
	if len(out.Ports) == 0 {
		out.Ports = []string{"nothing (no valid port, see problems)"}
	}
	return out
}

// describeSelection reads a selector peer: "pods {app=web} in namespace shop (3 pods)".
func describeSelection(policyNS string, peer *networkingv1.NetworkPolicyPeer, n int) string {
	pods := "every pod"
	if peer.PodSelector != nil {
		if s := selectorString(peer.PodSelector); s != "" {
			pods = "pods {" + s + "}"
		}
	}
	where := "in namespace " + policyNS
	if peer.NamespaceSelector != nil {
		where = "in every namespace"
		if s := selectorString(peer.NamespaceSelector); s != "" {
			where = "in namespaces {" + s + "}"
		}
	}
	count := strconv.Itoa(n) + " pods"
	if n == 1 {
		count = "1 pod"
	}
	return pods + " " + where + " (" + count + " now)"
}

func selectorString(ls *metav1.LabelSelector) string {
	s, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return "invalid"
	}
	if s.Empty() {
		return ""
	}
	return s.String()
}

// problemsOf are the compiler's problems of the given policies.
func (c *compiler) problemsOf(keys []string) []string {
	var out []string
	for pr := range c.problems {
		for _, k := range keys {
			if strings.HasPrefix(pr, k+": ") {
				out = append(out, pr)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}
