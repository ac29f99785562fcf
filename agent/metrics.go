package agent

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/policy"
)

// Metrics are the agent's Prometheus metrics, in a registry of their own.
type Metrics struct {
	Registry          *prometheus.Registry
	reconcileDuration prometheus.Histogram
	reconcileErrors   prometheus.Counter
	routesInstalled   prometheus.Gauge
	routesLearned     prometheus.Gauge
	routesFailed      prometheus.Gauge
	peers             *prometheus.GaugeVec
	peerBFDUp         *prometheus.GaugeVec
	peerBFDFlaps      *prometheus.GaugeVec
	refused           prometheus.Gauge
	refusedTotal      prometheus.Gauge
	policyDropped     *prometheus.CounterVec
	policyHeld        prometheus.Counter
}

func newMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		reconcileDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "podroute_reconcile_duration_seconds",
			Help:    "Time one reconcile pass took (cluster state to BGP and kernel).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podroute_reconcile_errors_total",
			Help: "Reconcile passes that left something not applied.",
		}),
		routesInstalled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podroute_routes_installed",
			Help: "Agent routes in the kernel (learned routes and blackholes).",
		}),
		routesLearned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podroute_routes_learned",
			Help: "Best paths learned from BGP peers and accepted by the import filter.",
		}),
		routesFailed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podroute_routes_install_failed",
			Help: "Routes the kernel did not take in the last reconcile.",
		}),
		peers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podroute_bgp_peers",
			Help: "Configured BGP peers by session state.",
		}, []string{"state"}),
		peerBFDUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podroute_bgp_peer_bfd_up",
			Help: "1 when the BFD session with the BGP peer is up, 0 when it is not; only peers configured with BFD have a series.",
		}, []string{"peer", "kind"}),
		peerBFDFlaps: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			// A gauge: the count lives with the BFD session, which starts again (from 0)
			// with the agent or when the peer's BFD is turned off and on.
			Name: "podroute_bgp_peer_bfd_flaps",
			Help: "Times the BFD session with the BGP peer went from up to down since the session started; only peers configured with BFD have a series.",
		}, []string{"peer", "kind"}),
		refused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podroute_bgp_refused_prefixes",
			Help: "Distinct (prefix, peer) announcements refused by the import filter.",
		}),
		refusedTotal: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podroute_bgp_refused_announcements",
			Help: "Announcements refused by the import filter since start.",
		}),
		policyDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podroute_policy_dropped_packets_total",
			Help: "Packets to (ingress) or from (egress) pods of this node that no rule of the NetworkPolicies selecting the pod allowed. " +
				"A dropped packet counts for every policy that selects its pod in that direction, since none of them allowed it: " +
				"the sum over policies can exceed the packets dropped. Read from the kernel's counters every 15s.",
		}, []string{"namespace", "policy", "direction"}),
		policyHeld: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podroute_policy_held_packets_total",
			Help: "Packets dropped at a pod interface of this node the agent had not judged yet (see the NetworkPolicy docs: new pods are held until judged).",
		}),
	}
	m.Registry.MustRegister(m.reconcileDuration, m.reconcileErrors, m.routesInstalled, m.routesLearned,
		m.routesFailed, m.peers, m.peerBFDUp, m.peerBFDFlaps, m.refused, m.refusedTotal, m.policyDropped, m.policyHeld,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// setPeerBFD replaces the BFD gauge's series with one per peer running BFD, so peers that
// went or dropped BFD lose theirs.
func (m *Metrics) setPeerBFD(states []bgp.PeerState) {
	m.peerBFDUp.Reset()
	m.peerBFDFlaps.Reset()
	for _, s := range states {
		if s.BFD == nil {
			continue
		}
		up := 0.0
		if s.BFDState == bgp.BFDStateUp {
			up = 1
		}
		m.peerBFDUp.WithLabelValues(s.Address.String(), s.Kind).Set(up)
		m.peerBFDFlaps.WithLabelValues(s.Address.String(), s.Kind).Set(float64(s.BFDFlaps))
	}
}

// policyDropsEvery is how often the policy drop counters are read from the kernel: one nft
// listing of the table's rules, without its sets.
const policyDropsEvery = 15 * time.Second

// countDrops reads the drop counters of the policy table periodically, off the policy loop,
// until ctx ends.
func (p *networkPolicy) countDrops(ctx context.Context) {
	read := p.readDrops
	if read == nil {
		read = policy.ReadDrops
	}
	dc := newDropCounter(p.metrics)
	t := time.NewTicker(policyDropsEvery)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, policyDropsEvery)
		drops, err := read(rctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		p.said.setErr("policy-drops", err, "NetworkPolicy drop counters not read", "err")
		if err == nil {
			dc.update(drops, p.last.Load())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// dropCounter turns the kernel's per-chain drop counters into per-policy Prometheus counters.
// A chain's counter starts at zero when the chain is made and goes when it is deleted (a
// policy change makes new chains, see policy's doc), so what is added is the growth of each
// chain since the last read.
type dropCounter struct {
	m *Metrics
	// last is each chain's counter at the last read; nil before the first read, whose
	// counters are a previous agent's to have counted, not this one's.
	last map[string]uint64
	// owners are the policies behind each chain still in the kernel, remembered while it
	// is: a chain the last pass no longer wants keeps its owners until it is deleted.
	owners map[string][]string
	pass   *policyPass
	series map[[3]string]bool
}

func newDropCounter(m *Metrics) *dropCounter {
	return &dropCounter{m: m, owners: map[string][]string{}, series: map[[3]string]bool{}}
}

func (d *dropCounter) update(drops policy.Drops, pass *policyPass) {
	if pass != nil && pass != d.pass {
		d.pass = pass
		for chain, pols := range policy.ChainPolicies(pass.in, pass.rs) {
			d.owners[chain] = pols
		}
		d.forgetGonePolicies(pass.in)
	}
	for chain, n := range drops {
		var delta uint64
		switch prev, seen := d.last[chain]; {
		case d.last == nil:
		case !seen || n < prev: // new since the last read, or made anew under the same name
			delta = n
		default:
			delta = n - prev
		}
		if delta == 0 {
			continue
		}
		if chain == policy.HoldChain {
			d.m.policyHeld.Add(float64(delta))
			continue
		}
		dir, _, _ := strings.Cut(chain, "-")
		for _, key := range d.owners[chain] {
			ns, name, _ := strings.Cut(key, "/")
			d.m.policyDropped.WithLabelValues(ns, name, dir).Add(float64(delta))
			d.series[[3]string{ns, name, dir}] = true
		}
	}
	d.last = map[string]uint64{}
	for chain, n := range drops {
		d.last[chain] = n
	}
	for chain := range d.owners {
		if _, ok := drops[chain]; !ok && !d.wanted(chain) {
			delete(d.owners, chain)
		}
	}
}

// wanted: the last pass's ruleset has the chain (it may not be in the kernel yet).
func (d *dropCounter) wanted(chain string) bool {
	if d.pass == nil {
		return false
	}
	_, ok := d.pass.rs.Chains[chain]
	return ok
}

// forgetGonePolicies drops the series of policies that no longer exist, so a cluster whose
// policies come and go does not pile up series.
func (d *dropCounter) forgetGonePolicies(in *policy.Input) {
	exist := map[string]bool{}
	for _, np := range in.Policies {
		if np != nil {
			exist[np.Namespace+"/"+np.Name] = true
		}
	}
	for s := range d.series {
		if !exist[s[0]+"/"+s[1]] {
			d.m.policyDropped.DeleteLabelValues(s[0], s[1], s[2])
			delete(d.series, s)
		}
	}
}
