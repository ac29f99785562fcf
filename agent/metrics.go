package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
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
	refused           prometheus.Gauge
	refusedTotal      prometheus.Gauge
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
		refused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podroute_bgp_refused_prefixes",
			Help: "Distinct (prefix, peer) announcements refused by the import filter.",
		}),
		refusedTotal: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podroute_bgp_refused_announcements",
			Help: "Announcements refused by the import filter since start.",
		}),
	}
	m.Registry.MustRegister(m.reconcileDuration, m.reconcileErrors, m.routesInstalled, m.routesLearned,
		m.routesFailed, m.peers, m.refused, m.refusedTotal,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
