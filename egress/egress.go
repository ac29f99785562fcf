// Package egress masquerades pod traffic leaving the cluster, so pods reach destinations
// that have no route back to pod addresses with the node's address as their source.
//
// Rules live in an nftables table of podroute's own, "inet podroute", and nothing else is
// touched: kube-proxy's and the operator's tables are left as they are. One base chain in
// the postrouting hook at srcnat priority masquerades packets whose source is one of this
// node's pod CIDRs and whose destination is outside every cluster pod CIDR. The CIDRs are
// interval sets, so a change of CIDRs changes set elements, not rules.
//
// Traffic from a pod to an address of the node itself needs no exclusion: locally
// delivered packets take the input path and never reach postrouting. Service traffic is
// judged after kube-proxy's DNAT (prerouting), so a service backed by pods is pod-to-pod
// and keeps the pod's source address.
package egress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"sigs.k8s.io/knftables"
)

const (
	// TableName is podroute's nftables table (family inet).
	TableName = "podroute"
	// ChainName is the postrouting NAT chain in the table.
	ChainName = "postrouting"

	podSet4     = "podcidrs_v4"
	podSet6     = "podcidrs_v6"
	clusterSet4 = "clustercidrs_v4"
	clusterSet6 = "clustercidrs_v6"

	ruleComment = "podroute: masquerade pod egress"
)

// Config is the masquerade policy for this node.
type Config struct {
	// PodCIDRs are this node's pod CIDRs: traffic from them is masqueraded.
	PodCIDRs []netip.Prefix
	// ClusterCIDRs hold every pod address in the cluster: traffic to them is pod-to-pod
	// and never masqueraded. This node's PodCIDRs are always included.
	ClusterCIDRs []netip.Prefix
	// Enabled turns masquerading on; off, the table is removed (for racks that route pod
	// addresses end to end).
	Enabled bool
}

// Masquerade keeps podroute's nftables table in line with a Config.
type Masquerade struct {
	log *slog.Logger
	nft knftables.Interface

	mu   sync.Mutex
	last *Config // last applied, to log changes at Info and repeats at Debug
}

// New checks that nftables is usable (the nft binary is installed and the caller may
// change the ruleset) and returns a Masquerade that runs it.
func New(log *slog.Logger) (*Masquerade, error) {
	if log == nil {
		log = slog.Default()
	}
	nft, err := knftables.New(knftables.InetFamily, TableName)
	if err != nil {
		return nil, fmt.Errorf("egress: nftables is not usable (needs the nft binary, from the nftables package, and CAP_NET_ADMIN): %w", err)
	}
	return &Masquerade{log: log.With("component", "egress"), nft: nft}, nil
}

// Sync makes the table match cfg in a single nftables transaction: the table, chain and
// sets are created if missing, then the chain and sets are flushed and refilled, so the
// kernel swaps the old rules for the new at once and packets never see a partial ruleset.
// Syncing the same Config again changes nothing. Enabled=false removes the table.
func (m *Masquerade) Sync(ctx context.Context, cfg Config) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !cfg.Enabled {
		if err := m.remove(ctx); err != nil {
			return err
		}
		m.logApplied(cfg, "egress masquerade disabled")
		return nil
	}
	pod4, pod6, err := split("PodCIDRs", cfg.PodCIDRs)
	if err != nil {
		return err
	}
	if len(pod4)+len(pod6) == 0 {
		return errors.New("egress: no pod CIDR to masquerade")
	}
	cl4, cl6, err := split("ClusterCIDRs", append(slices.Clone(cfg.ClusterCIDRs), cfg.PodCIDRs...))
	if err != nil {
		return err
	}

	tx := m.nft.NewTransaction()
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("podroute: pod egress masquerade")})
	chain := &knftables.Chain{
		Name:     ChainName,
		Type:     knftables.PtrTo(knftables.NATType),
		Hook:     knftables.PtrTo(knftables.PostroutingHook),
		Priority: knftables.PtrTo(knftables.SNATPriority),
	}
	tx.Add(chain)
	tx.Flush(chain)
	for _, s := range []struct {
		name, typ string
		cidrs     []netip.Prefix
	}{
		{podSet4, "ipv4_addr", pod4},
		{clusterSet4, "ipv4_addr", cl4},
		{podSet6, "ipv6_addr", pod6},
		{clusterSet6, "ipv6_addr", cl6},
	} {
		set := &knftables.Set{Name: s.name, Type: s.typ, Flags: []knftables.SetFlag{knftables.IntervalFlag}}
		tx.Add(set)
		tx.Flush(set)
		for _, p := range s.cidrs {
			tx.Add(&knftables.Element{Set: s.name, Key: []string{p.String()}})
		}
	}
	// Both families' rules are always present; a family without pod CIDRs has an empty
	// set and matches nothing, so adding a family later only fills sets.
	tx.Add(&knftables.Rule{
		Chain:   ChainName,
		Rule:    knftables.Concat("ip saddr", "@"+podSet4, "ip daddr !=", "@"+clusterSet4, "masquerade"),
		Comment: knftables.PtrTo(ruleComment),
	})
	tx.Add(&knftables.Rule{
		Chain:   ChainName,
		Rule:    knftables.Concat("ip6 saddr", "@"+podSet6, "ip6 daddr !=", "@"+clusterSet6, "masquerade"),
		Comment: knftables.PtrTo(ruleComment),
	})
	if err := m.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("egress: applying table inet %s: %w", TableName, err)
	}
	m.logApplied(cfg, "egress masquerade synced",
		"pod_cidrs", slices.Concat(pod4, pod6), "cluster_cidrs", slices.Concat(cl4, cl6))
	return nil
}

// Remove deletes podroute's table, if present, for uninstall.
func (m *Masquerade) Remove(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.remove(ctx); err != nil {
		return err
	}
	m.last = nil
	m.log.Info("egress masquerade table removed", "table", "inet "+TableName)
	return nil
}

func (m *Masquerade) remove(ctx context.Context) error {
	tx := m.nft.NewTransaction()
	// Adding first makes the delete succeed whether or not the table exists.
	tx.Add(&knftables.Table{})
	tx.Delete(&knftables.Table{})
	if err := m.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("egress: deleting table inet %s: %w", TableName, err)
	}
	return nil
}

func (m *Masquerade) logApplied(cfg Config, msg string, attrs ...any) {
	level := slog.LevelInfo
	if m.last != nil && m.last.Enabled == cfg.Enabled &&
		slices.Equal(m.last.PodCIDRs, cfg.PodCIDRs) && slices.Equal(m.last.ClusterCIDRs, cfg.ClusterCIDRs) {
		level = slog.LevelDebug
	}
	m.log.Log(context.Background(), level, msg, attrs...)
	c := Config{PodCIDRs: slices.Clone(cfg.PodCIDRs), ClusterCIDRs: slices.Clone(cfg.ClusterCIDRs), Enabled: cfg.Enabled}
	m.last = &c
}

// split validates cidrs and returns them per family, sorted, without any prefix another
// covers: an interval set refuses overlapping elements.
func split(field string, cidrs []netip.Prefix) (v4, v6 []netip.Prefix, err error) {
	for _, p := range cidrs {
		switch {
		case !p.IsValid():
			return nil, nil, fmt.Errorf("egress: %s: invalid prefix", field)
		case p.Masked() != p:
			return nil, nil, fmt.Errorf("egress: %s: %s has host bits set (want %s)", field, p, p.Masked())
		case p.Addr().Is4In6():
			return nil, nil, fmt.Errorf("egress: %s: %s is an IPv4-mapped IPv6 prefix", field, p)
		case p.Addr().Is4():
			v4 = append(v4, p)
		default:
			v6 = append(v6, p)
		}
	}
	return collapse(v4), collapse(v6), nil
}

func collapse(ps []netip.Prefix) []netip.Prefix {
	// Shorter prefixes first, so a covering prefix is kept before those it covers.
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Bits() - b.Bits(); c != 0 {
			return c
		}
		return a.Addr().Compare(b.Addr())
	})
	var out []netip.Prefix
	for _, p := range ps {
		if !slices.ContainsFunc(out, func(q netip.Prefix) bool { return q.Contains(p.Addr()) }) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}
