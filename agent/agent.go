package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/cniconf"
	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/egress"
	"github.com/podroute/podroute/policy"
	"github.com/podroute/podroute/routes"
	"github.com/podroute/podroute/services"
)

// Agent is one node's podroute agent: it turns the Kubernetes objects into the desired state
// of this node (desire) and hands it to its reconcilers, each owning one part of the node
// (CNI config, egress rules, BGP speaker, peers, advertisements, kernel routes), on every
// change and periodically.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	nodes nodeSource
	// dyn reads podroute's resources; nil without the CRDs' client.
	dyn dynamic.Interface
	// settings and status are nil when the agent runs without the podroute CRDs' client.
	settings settingsSource
	status   *config.StatusWriter
	statusCh chan config.Settings // latest settings whose status is not written yet
	// election picks the one agent that writes status; nil: this agent writes.
	election *election
	// policy enforces NetworkPolicy on a loop of its own; nil when off.
	policy *networkPolicy
	// services are the cluster's Services and EndpointSlices, for Service address
	// advertisement; nil when off.
	services serviceSource
	// svcEvents are Events on Services about what of them is not advertised; nil without
	// an API client to write them.
	svcEvents *serviceEvents
	// local holds a Local Service's address back until kube-proxy forwards to the local
	// endpoints; nil without kube-proxy checks.
	local   *localCheck
	metrics *Metrics
	// kick asks the loop for a pass, for changes that come from no watch (kube-proxy
	// found or lost).
	kick chan struct{}

	// newRouter builds the BGP speaker.
	newRouter func(bgp.Config) (bgp.Router, error)
	// restarting: routes of a previous run were in the kernel at start.
	restarting bool

	// The loop's own state: only Run's goroutine touches it.
	speaker     *speaker
	reconcilers []reconciler
	me          self // the last usable view of this node
	svcDecision serviceDecision
	metricsAt   time.Time // last refresh of the peer gauges
	said        *problemLog

	// snap is the last pass's snapshot, for the local API.
	snap atomic.Pointer[snapshot]
	// kubeProxy is the last check of kube-proxy (watchKubeProxy), every kubeProxyEvery.
	kubeProxy      atomic.Pointer[kubeProxyState]
	kubeProxyEvery time.Duration
}

// nodeSource is the cluster's Nodes as routing sees them (cluster.Watcher).
type nodeSource interface {
	Run(ctx context.Context)
	Synced() bool
	Changed() <-chan struct{}
	Nodes() []cluster.Node
	Health() (ok bool, lastError string, since time.Time)
}

// settingsSource is the cluster's BGP configuration: BGPPeers and the BGPConfiguration
// (config.Watcher).
type settingsSource interface {
	Run(ctx context.Context)
	Changed() <-chan struct{}
	Snapshot() config.Settings
}

// New builds an agent; Run starts it. dyn reads podroute's BGPPeer and BGPConfiguration
// resources; nil runs the agent on its flags alone.
func New(cfg Config, client kubernetes.Interface, dyn dynamic.Interface, log *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{
		cfg:       cfg,
		log:       log,
		nodes:     cluster.NewWatcher(client, log.With("component", "nodes")),
		metrics:   newMetrics(),
		newRouter: bgp.New,
		dyn:       dyn,
		said:      newProblemLog(log),
		kick:      make(chan struct{}, 1),

		kubeProxyEvery: kubeProxyEvery,
	}
	a.snap.Store(&snapshot{})
	a.kubeProxy.Store(&kubeProxyState{})
	if cfg.NetworkPolicy {
		plog := log.With("component", "policy")
		a.policy = &networkPolicy{source: cluster.NewPolicyWatcher(client, cfg.NodeName, plog), log: plog, said: a.said, metrics: a.metrics, logDrops: cfg.PolicyLogDrops}
	}
	if cfg.ServiceAdvertisement {
		a.services = services.NewWatcher(client, log.With("component", "services"))
		if cfg.KubeProxyMetricsAddress != "" {
			a.local = newLocalCheck(log.With("component", "services"), a.poke)
		}
	}
	if dyn != nil {
		defaults := cfg.defaults()
		a.settings = config.NewWatcher(dyn, config.Options{
			Defaults: &defaults,
			Nodes:    a.nodes.Nodes,
			Logger:   log.With("component", "config"),
		})
		a.status = config.NewStatusWriter(dyn, client.CoreV1(), cfg.NodeName, log.With("component", "status"))
		if a.services != nil {
			a.svcEvents = &serviceEvents{recorder: a.status.Recorder()}
		}
		a.statusCh = make(chan config.Settings, 1)
		if cfg.LeaseNamespace != "" {
			e, err := newElection(client, cfg.LeaseNamespace, cfg.NodeName)
			if err != nil {
				return nil, err
			}
			a.election = e
		}
	}
	return a, nil
}

// Run reconciles until ctx ends. On the way out it stops the BGP speaker the way a restart
// wants it (no CEASE: graceful-restart peers keep our routes) and leaves kernel routes in
// place, so an upgrade or a crash costs no traffic.
func (a *Agent) Run(ctx context.Context) error {
	started := time.Now()
	table, err := routes.NewReconciler(routes.Options{Logger: a.log.With("component", "routes")})
	if err != nil {
		return fmt.Errorf("kernel routes: %w", err)
	}
	defer table.Close()
	owned, err := table.Owned()
	if err != nil {
		return fmt.Errorf("read podroute routes from the kernel: %w", err)
	}
	for _, r := range owned {
		if !r.Blackhole {
			a.restarting = true
		}
	}
	if a.restarting {
		a.log.Info("routes from a previous run found: keeping them until BGP resynchronises", "routes", len(owned), "staleTimeout", a.cfg.StaleTimeout)
	}
	var masq masquerader
	if a.cfg.Masquerade {
		if masq, err = egress.New(a.log.With("component", "egress")); err != nil {
			return fmt.Errorf("egress masquerade: %w", err)
		}
	}
	if a.cfg.InstallCNI && a.cfg.CNI.PluginSource != "" {
		if changed, err := cniconf.InstallPlugin(a.cfg.CNI); err != nil {
			return fmt.Errorf("install CNI plugins (--cni-plugin, --cni-portmap-plugin; --cni-portmap=false leaves portmap out): %w", err)
		} else if changed {
			a.log.Info("installed CNI plugins", "dir", a.cfg.CNI.BinDir, "portmap", !a.cfg.CNI.NoPortmap && a.cfg.CNI.PortmapSource != "")
		}
	}
	a.buildReconcilers(table, masq, started)
	if a.policy != nil {
		k, err := policy.New(a.policy.log)
		if err != nil {
			return fmt.Errorf("NetworkPolicy (--network-policy=false turns it off): %w", err)
		}
		a.policy.kernel = k
		go a.policy.source.Run(ctx)
		go a.policy.run(ctx)
	}

	if a.cfg.KubeProxyMetricsAddress != "" {
		go a.watchKubeProxy(ctx)
	}
	go a.nodes.Run(ctx)
	var servicesChanged <-chan struct{}
	if a.services != nil {
		go a.services.Run(ctx)
		servicesChanged = a.services.Changed()
		if a.local != nil {
			go a.local.run(ctx)
		}
	}
	var settingsChanged <-chan struct{}
	if a.settings != nil {
		go a.settings.Run(ctx)
		if a.election != nil {
			go a.election.run(ctx)
		}
		go a.writeStatuses(ctx)
		defer a.status.Shutdown()
		settingsChanged = a.settings.Changed()
	}
	kernelEvents, err := table.Watch(ctx)
	if err != nil {
		a.log.Warn("watching kernel routes failed; relying on periodic resync", "err", err)
	}
	tick := time.NewTicker(a.cfg.ResyncInterval)
	defer tick.Stop()
	var bgpEvents <-chan struct{}
	defer a.speaker.stop()

	for {
		a.pass(ctx)
		if bgpEvents == nil {
			if r, _ := a.speaker.current(); r != nil {
				bgpEvents = r.Subscribe(ctx)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-a.nodes.Changed():
		case <-settingsChanged:
		case <-servicesChanged:
		case <-a.kick:
		case _, ok := <-bgpEvents:
			if !ok {
				bgpEvents = nil
			}
		case _, ok := <-kernelEvents:
			if !ok {
				kernelEvents, _ = table.Watch(ctx)
			}
		case <-tick.C:
		}
	}
}

// poke asks the loop for a pass (coalesced), for changes no watch reports.
func (a *Agent) poke() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// buildReconcilers makes the reconcilers, in the order a pass runs them: the speaker and its
// neighbours first, so a joining node is ready for the sessions the running nodes are already
// dialling (a connection from a peer not configured yet is turned away, and its next attempt
// waits); then the node's own plumbing; the advertisements; the kernel routes last, from what
// BGP learned.
func (a *Agent) buildReconcilers(table routeTable, masq masquerader, started time.Time) {
	a.speaker = &speaker{newRouter: a.newRouter, log: a.log.With("component", "bgp")}
	a.reconcilers = []reconciler{a.speaker, &peers{speaker: a.speaker, log: a.log.With("component", "bgp")}}
	if a.cfg.InstallCNI {
		a.reconcilers = append(a.reconcilers, &cniConfig{opts: a.cfg.CNI, mtu: a.cfg.MTU, linkMTU: cniconf.LinkMTU, log: a.log.With("component", "cni")})
	}
	if masq != nil {
		a.reconcilers = append(a.reconcilers, &egressRules{masq: masq, now: time.Now})
	}
	a.reconcilers = append(a.reconcilers,
		&originated{speaker: a.speaker, log: a.log.With("component", "bgp")},
		&kernelRoutes{
			speaker: a.speaker, table: table, log: a.log.With("component", "routes"), metrics: a.metrics,
			now: time.Now, started: started, restarting: a.restarting, staleTimeout: a.cfg.StaleTimeout,
		},
	)
}

// passTimeout bounds the API and nft calls of one pass, so a hung call cannot stop the loop.
const passTimeout = 2 * time.Minute

// pass is one round: compute the desired state, run every reconciler, publish the snapshot.
func (a *Agent) pass(ctx context.Context) {
	t0 := time.Now()
	pctx, cancel := context.WithTimeout(ctx, passTimeout)
	defer cancel()
	snap := &snapshot{}
	err := a.reconcile(pctx, snap)
	a.updatePeerMetrics(pctx, snap.router)
	a.metrics.reconcileDuration.Observe(time.Since(t0).Seconds())
	snap.LastRun, snap.LastErr = time.Now(), err
	a.snap.Store(snap)
	if err != nil {
		a.metrics.reconcileErrors.Inc()
	}
	a.said.setErr("reconcile", err, "reconcile incomplete", "err")
}

func (a *Agent) reconcile(ctx context.Context, snap *snapshot) error {
	defer func() {
		for _, r := range a.reconcilers {
			r.report(snap)
		}
	}()
	// The desired state's own error (about this node) is in the snapshot's MeErr: the pass
	// error is what the reconcilers could not apply.
	d, err := a.desire(snap)
	if d == nil {
		return err
	}
	var errs []error
	for _, r := range a.reconcilers {
		if err := r.reconcile(ctx, d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// desire computes this node's desired state from the cluster's objects and the flags. It
// returns nil when nothing can be reconciled yet (no first list of the objects, or no pod
// CIDR for this node), with the reason; a non-nil state may come with an error about this
// node that still lets the rest proceed.
func (a *Agent) desire(snap *snapshot) (*desired, error) {
	snap.Me = a.me
	if !a.nodes.Synced() {
		return nil, errors.New("waiting for the first list of Nodes from the Kubernetes API")
	}
	s := a.settingsSnapshot()
	if !s.Synced {
		return nil, errors.New("waiting for the first list of BGPPeers and BGPConfiguration")
	}
	a.queueStatus(s)
	a.said.set("config", s.Problems, "BGP configuration", "problem")
	problems := slices.Clone(s.Problems)
	for _, ip := range s.InvalidPeers {
		problems = append(problems, fmt.Sprintf("BGPPeer %s ignored: %v", ip.Name, ip.Errors.ToAggregate()))
	}
	cfg := effective(&a.cfg, s)
	nodes, overrideProblems := withOverrides(a.nodes.Nodes())
	a.said.set("override", overrideProblems, "node override ignored", "reason")
	problems = append(problems, overrideProblems...)
	snap.Problems = problems

	me, meErr := findSelf(&cfg, nodes)
	// A node that lost its pod CIDR or address keeps being served as it was: better the last
	// good view than withdrawing everything on a transient edit.
	if meErr == nil || (len(me.PodCIDRs) > 0 && (me.V4.IsValid() || me.V6.IsValid())) {
		a.me = me
	}
	me = a.me
	if meErr == nil {
		meErr = overlaps(me, nodes)
	}
	snap.Me, snap.MeErr = me, meErr
	a.said.setErr("self", meErr, "this node cannot be fully served yet", "reason", "node", a.cfg.NodeName)
	if len(me.PodCIDRs) == 0 {
		return nil, meErr // nothing can be advertised or configured without a pod CIDR
	}

	t := nodeTopology(&cfg, s, me, me.Node, nodes)
	t.addExternal(&cfg, s, me, me.Node)
	a.said.set("peer", t.problems, "peer left out", "reason")
	snap.Problems = append(snap.Problems, t.problems...)
	filter := importFilter(&cfg, me, nodes, t.origin)
	svcRoutes, svcProblems, svcSynced := a.desireServices(s.Configuration, nodes, me)
	a.said.set("service", svcProblems, "Service address not advertised", "problem")
	snap.Problems = append(snap.Problems, svcProblems...)
	return &desired{
		cfg:            cfg,
		settings:       s,
		me:             me,
		nodes:          nodes,
		peers:          t.peers,
		filter:         filter,
		speaker:        speakerConfig(&cfg, me, filter, a.restarting, a.log.With("component", "bgp")),
		services:       svcRoutes,
		servicesSynced: svcSynced,
	}, meErr
}

// settingsSnapshot is the cluster's BGP configuration, or the flags' when the agent runs
// without the CRDs' client.
func (a *Agent) settingsSnapshot() config.Settings {
	if a.settings == nil {
		return config.Settings{Synced: true, Configuration: a.cfg.defaults()}
	}
	return a.settings.Snapshot()
}

// queueStatus hands the settings to the status writer, replacing any not yet written: status
// goes to the API server, rate-limited and possibly slow, and must never hold back routing.
func (a *Agent) queueStatus(s config.Settings) {
	if a.status == nil {
		return
	}
	select {
	case <-a.statusCh:
	default:
	}
	a.statusCh <- s
}

// statusTimeout bounds one round of status writes.
const statusTimeout = 30 * time.Second

func (a *Agent) writeStatuses(ctx context.Context) {
	var (
		latest  *config.Settings
		elected <-chan struct{}
	)
	if a.election != nil {
		elected = a.election.changed
	}
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-a.statusCh:
			latest = &s
		case <-elected:
		}
		if latest == nil || (a.election != nil && !a.election.Leading()) {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, statusTimeout)
		err := a.status.Sync(wctx, *latest)
		a.said.setErr("status", err, "could not write the status of podroute resources", "err")
		cancel()
	}
}
