package policy

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"sigs.k8s.io/knftables"
)

// The forward base chain's rules, fixed. Their comments identify them: a base chain whose
// comments differ (an older layout, a hand edit) is rewritten in place, in the transaction.
var forwardRules = []Rule{
	{Rule: "ct state established,related accept", Comment: "podroute-policy: replies of allowed connections"},
	{Rule: "iifname . oifname @" + SelfSet + " accept", Comment: "podroute-policy: a pod cannot block itself"},
	{Rule: fmt.Sprintf("iifgroup %d iifname != @%s jump %s", PodInterfaceGroup, JudgedSet, HoldChain), Comment: "podroute-policy: hold pods not judged yet (egress)"},
	{Rule: fmt.Sprintf("oifgroup %d oifname != @%s jump %s", PodInterfaceGroup, JudgedSet, HoldChain), Comment: "podroute-policy: hold pods not judged yet (ingress)"},
	{Rule: "iifname vmap @" + EgressMap, Comment: "podroute-policy: egress policy of the sending pod"},
	{Rule: "oifname vmap @" + IngressMap, Comment: "podroute-policy: ingress policy of the receiving pod"},
}

const tableComment = "podroute: NetworkPolicy"

// Changes counts what a Sync changed in the kernel.
type Changes struct {
	TableCreated, TableDeleted     bool
	SetsAdded, SetsDeleted         int
	ElementsAdded, ElementsDeleted int // set elements, in sets that stay
	ChainsAdded, ChainsDeleted     int
	ChainsRewritten                int // chains whose rules were found different and replaced in place
	VethsAdded, VethsDeleted       int // map elements
	VethsChanged                   int // map elements pointed at another chain
	Operations                     int // operations in the transaction (0: nothing was run)
	KernelRead                     bool
}

// Empty tells whether the pass changed nothing.
func (c Changes) Empty() bool { return c.Operations == 0 }

func (c Changes) String() string {
	var parts []string
	add := func(n int, what string) {
		if n != 0 {
			parts = append(parts, fmt.Sprintf("%s %d", what, n))
		}
	}
	if c.TableCreated {
		parts = append(parts, "table created")
	}
	if c.TableDeleted {
		parts = append(parts, "table deleted")
	}
	add(c.SetsAdded, "sets+")
	add(c.SetsDeleted, "sets-")
	add(c.ElementsAdded, "elements+")
	add(c.ElementsDeleted, "elements-")
	add(c.ChainsAdded, "chains+")
	add(c.ChainsDeleted, "chains-")
	add(c.ChainsRewritten, "chains rewritten")
	add(c.VethsAdded, "veths+")
	add(c.VethsDeleted, "veths-")
	add(c.VethsChanged, "veths repointed")
	if len(parts) == 0 {
		return "no change"
	}
	return strings.Join(parts, ", ")
}

// Reconciler keeps the kernel's table equal to a Ruleset, changing only what differs, in one
// transaction per Sync. It reads the table from the kernel on its first Sync (so an agent
// that restarts finds its rules and keeps them) and after any failure; between, it trusts
// its image of what it last applied, since nothing else writes the table. Invalidate forces
// a read, for a periodic check.
type Reconciler struct {
	nft knftables.Interface
	log *slog.Logger

	mu  sync.Mutex
	cur *kernelState // nil: read the kernel first
}

// New checks that nftables is usable and returns a Reconciler of the real table.
func New(log *slog.Logger) (*Reconciler, error) {
	nft, err := knftables.New(knftables.InetFamily, TableName)
	if err != nil {
		return nil, fmt.Errorf("policy: nftables is not usable (needs the nft binary, from the nftables package, and CAP_NET_ADMIN): %w", err)
	}
	return NewReconciler(nft, log), nil
}

// NewReconciler returns a Reconciler working through nft, which must be for family inet and
// table TableName (knftables.NewFake(knftables.InetFamily, TableName) in tests).
func NewReconciler(nft knftables.Interface, log *slog.Logger) *Reconciler {
	if log == nil {
		log = slog.Default()
	}
	return &Reconciler{nft: nft, log: log.With("component", "policy")}
}

// Invalidate makes the next Sync read the table from the kernel instead of trusting its image.
func (r *Reconciler) Invalidate() {
	r.mu.Lock()
	r.cur = nil
	r.mu.Unlock()
}

// Sync makes the table equal to rs in one transaction: new sets and chains are created,
// set and map elements are added and deleted one by one, chains no longer used are deleted
// after nothing points at them, and nothing that stays is flushed. A pass with nothing to
// change runs nothing. rs.Active false deletes the table. If the transaction fails against
// an image of the kernel, the kernel is read and the pass tried once more.
func (r *Reconciler) Sync(ctx context.Context, rs *Ruleset) (Changes, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ch Changes
	for attempt := 0; ; attempt++ {
		read := false
		if r.cur == nil {
			cur, err := readKernel(ctx, r.nft, rs)
			if err != nil {
				return ch, fmt.Errorf("policy: reading table inet %s: %w", TableName, err)
			}
			r.cur, read = cur, true
		}
		tx := r.nft.NewTransaction()
		ch = plan(tx, r.cur, rs)
		ch.KernelRead = read
		if ch.Operations == 0 {
			return ch, nil
		}
		if err := r.nft.Run(ctx, tx); err != nil {
			r.cur = nil
			if read || attempt > 0 || ctx.Err() != nil {
				return ch, fmt.Errorf("policy: applying table inet %s: %w", TableName, err)
			}
			r.log.Info("policy table differs from what was applied last; reading it again", "err", err)
			continue
		}
		r.cur = stateOf(rs)
		return ch, nil
	}
}

// Remove deletes the table, if present (for uninstall).
func (r *Reconciler) Remove(ctx context.Context) error {
	_, err := r.Sync(ctx, &Ruleset{})
	return err
}

// kernelState is what the reconciler knows of the table.
type kernelState struct {
	exists bool
	chains map[string][]string          // chain → its rules' comments
	sets   map[string]map[string]bool   // set → element keys; nil: elements not read (static, or not wanted)
	maps   map[string]map[string]string // map → key → value
}

func emptyState() *kernelState {
	return &kernelState{chains: map[string][]string{}, sets: map[string]map[string]bool{}, maps: map[string]map[string]string{}}
}

// stateOf is the image of the table once rs is applied.
func stateOf(rs *Ruleset) *kernelState {
	st := emptyState()
	if !rs.Active {
		return st
	}
	st.exists = true
	for name, c := range rs.Chains {
		st.chains[name] = ruleComments(c.Rules)
	}
	st.chains[ForwardChain] = ruleComments(forwardRules)
	for name, s := range rs.Sets {
		els := make(map[string]bool, len(s.Elements))
		for _, e := range s.Elements {
			els[elementKey(e)] = true
		}
		st.sets[name] = els
	}
	st.maps[IngressMap] = mapElements(rs.Ingress)
	st.maps[EgressMap] = mapElements(rs.Egress)
	return st
}

func ruleComments(rules []Rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.Comment
	}
	return out
}

func mapElements(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for veth, chain := range m {
		out[veth] = "jump " + chain
	}
	return out
}

// readKernel reads the table: its chains with their rules' comments, its sets (elements only
// of the dynamic sets rs wants: the others are created whole or deleted), and its maps.
func readKernel(ctx context.Context, nft knftables.Interface, rs *Ruleset) (*kernelState, error) {
	st := emptyState()
	rules, err := nft.ListRules(ctx, "")
	if knftables.IsNotFound(err) {
		return st, nil // no table
	}
	if err != nil {
		return nil, err
	}
	st.exists = true
	for _, kind := range []string{"chain", "set", "map"} {
		names, err := nft.List(ctx, kind)
		if err != nil && !knftables.IsNotFound(err) {
			return nil, err
		}
		for _, n := range names {
			switch kind {
			case "chain":
				st.chains[n] = []string{}
			case "set":
				st.sets[n] = nil
			case "map":
				st.maps[n] = nil
			}
		}
	}
	for _, rule := range rules {
		c := ""
		if rule.Comment != nil {
			c = *rule.Comment
		}
		st.chains[rule.Chain] = append(st.chains[rule.Chain], c)
	}
	for name := range st.sets {
		want := rs.Sets[name]
		if want == nil || want.Static {
			continue
		}
		els, err := nft.ListElements(ctx, "set", name)
		if err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
		m := make(map[string]bool, len(els))
		for _, e := range els {
			m[canonicalKey(e.Key)] = true
		}
		st.sets[name] = m
	}
	for name := range st.maps {
		els, err := nft.ListElements(ctx, "map", name)
		if err != nil {
			return nil, fmt.Errorf("map %s: %w", name, err)
		}
		m := make(map[string]string, len(els))
		for _, e := range els {
			m[canonicalKey(e.Key)] = strings.Join(e.Value, " ")
		}
		st.maps[name] = m
	}
	return st, nil
}

// canonicalKey writes an element read back from nft as the compiler writes it (addresses in
// their canonical form).
func canonicalKey(fields []string) string {
	out := make([]string, len(fields))
	for i, f := range fields {
		if a, err := netip.ParseAddr(f); err == nil {
			f = a.Unmap().String()
		}
		out[i] = f
	}
	return elementKey(out)
}

// plan writes into tx what turns cur into rs, and counts it. Order matters to the kernel
// even inside one transaction: objects are created before what refers to them, map elements
// are repointed before the chains they left are deleted, and chains are emptied before the
// sets their rules used are deleted.
func plan(tx *knftables.Transaction, cur *kernelState, rs *Ruleset) Changes {
	var ch Changes
	if !rs.Active {
		if cur.exists {
			tx.Add(&knftables.Table{})
			tx.Delete(&knftables.Table{})
			ch.TableDeleted = true
		}
		ch.Operations = tx.NumOperations()
		return ch
	}
	start := func() {
		if tx.NumOperations() == 0 {
			tx.Add(&knftables.Table{Comment: knftables.PtrTo(tableComment)})
		}
	}
	if !cur.exists {
		start()
		ch.TableCreated = true
	}

	// Sets: new ones whole; elements of dynamic ones one by one.
	for _, name := range sortedKeys(rs.Sets) {
		s := rs.Sets[name]
		have, exists := cur.sets[name]
		if !exists {
			start()
			set := &knftables.Set{Name: name, Type: s.Type}
			if s.Interval {
				set.Flags = []knftables.SetFlag{knftables.IntervalFlag}
			}
			if s.Comment != "" {
				set.Comment = knftables.PtrTo(s.Comment)
			}
			tx.Add(set)
			for _, e := range s.Elements {
				tx.Add(&knftables.Element{Set: name, Key: e})
			}
			ch.SetsAdded++
			continue
		}
		if s.Static {
			continue
		}
		want := make(map[string]bool, len(s.Elements))
		for _, e := range s.Elements {
			k := elementKey(e)
			want[k] = true
			if !have[k] {
				start()
				tx.Add(&knftables.Element{Set: name, Key: e})
				ch.ElementsAdded++
			}
		}
		for _, k := range sortedKeys(have) {
			if !want[k] {
				start()
				tx.Delete(&knftables.Element{Set: name, Key: strings.Split(k, " . ")})
				ch.ElementsDeleted++
			}
		}
	}
	for _, name := range []string{IngressMap, EgressMap} {
		if _, ok := cur.maps[name]; !ok {
			start()
			tx.Add(&knftables.Map{Name: name, Type: "ifname : verdict"})
		}
	}

	// Chains: new ones with their rules; one whose rules are not what they should be is
	// emptied and refilled in place (atomic: the transaction is).
	for _, name := range sortedKeys(rs.Chains) {
		c := rs.Chains[name]
		have, exists := cur.chains[name]
		if exists && slices.Equal(have, ruleComments(c.Rules)) {
			continue
		}
		start()
		chain := &knftables.Chain{Name: name}
		tx.Add(chain)
		if exists {
			tx.Flush(chain)
			ch.ChainsRewritten++
		} else {
			ch.ChainsAdded++
		}
		for _, rule := range c.Rules {
			tx.Add(&knftables.Rule{Chain: name, Rule: rule.Rule, Comment: knftables.PtrTo(rule.Comment)})
		}
	}
	if have, exists := cur.chains[ForwardChain]; !exists || !slices.Equal(have, ruleComments(forwardRules)) {
		start()
		chain := &knftables.Chain{
			Name:     ForwardChain,
			Type:     knftables.PtrTo(knftables.FilterType),
			Hook:     knftables.PtrTo(knftables.ForwardHook),
			Priority: knftables.PtrTo(knftables.FilterPriority),
			Comment:  knftables.PtrTo("podroute-policy: NetworkPolicy at pods' host veths"),
		}
		tx.Add(chain)
		if exists {
			tx.Flush(chain)
			ch.ChainsRewritten++
		} else {
			ch.ChainsAdded++
		}
		for _, rule := range forwardRules {
			tx.Add(&knftables.Rule{Chain: ForwardChain, Rule: rule.Rule, Comment: knftables.PtrTo(rule.Comment)})
		}
	}

	// Map elements: a changed value is a delete and an add (the kernel refuses to overwrite).
	for _, m := range []struct {
		name string
		want map[string]string
	}{{IngressMap, mapElements(rs.Ingress)}, {EgressMap, mapElements(rs.Egress)}} {
		have := cur.maps[m.name]
		for _, veth := range sortedKeys(have) {
			if v, ok := m.want[veth]; !ok || v != have[veth] {
				start()
				tx.Delete(&knftables.Element{Map: m.name, Key: []string{veth}})
				if !ok {
					ch.VethsDeleted++
				}
			}
		}
		for _, veth := range sortedKeys(m.want) {
			v := m.want[veth]
			old, ok := have[veth]
			if ok && old == v {
				continue
			}
			start()
			tx.Add(&knftables.Element{Map: m.name, Key: []string{veth}, Value: []string{v}})
			if ok {
				ch.VethsChanged++
			} else {
				ch.VethsAdded++
			}
		}
	}

	// What is no longer wanted: chains (emptied first), then sets, then unknown maps.
	for _, name := range sortedKeys(cur.chains) {
		if _, ok := rs.Chains[name]; ok || name == ForwardChain {
			continue
		}
		start()
		chain := &knftables.Chain{Name: name}
		tx.Flush(chain)
		tx.Delete(chain)
		ch.ChainsDeleted++
	}
	for _, name := range sortedKeys(cur.sets) {
		if _, ok := rs.Sets[name]; ok {
			continue
		}
		start()
		tx.Delete(&knftables.Set{Name: name})
		ch.SetsDeleted++
	}
	for _, name := range sortedKeys(cur.maps) {
		if name == IngressMap || name == EgressMap {
			continue
		}
		start()
		tx.Delete(&knftables.Map{Name: name})
	}
	ch.Operations = tx.NumOperations()
	return ch
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
