package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/cniconf"
	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/egress"
	"github.com/podroute/podroute/routes"
)

// Agent is one node's podroute agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	nodes *cluster.Watcher
	// settings and status are nil when the agent runs without the podroute CRDs' client.
	settings *config.Watcher
	status   *config.StatusWriter
	statusCh chan config.Settings // latest settings whose status is not written yet
	kernel   *routes.Reconciler
	masq     *egress.Masquerade
	metrics  *Metrics
	started  time.Time

	// newRouter builds the BGP speaker.
	newRouter func(bgp.Config) (bgp.Router, error)

	mu         sync.Mutex // guards everything below; the API reads it
	router     bgp.Router
	routerCfg  bgp.Config
	me         self
	meErr      error
	peers      map[netip.Addr]peerSpec
	advertised map[netip.Prefix]string // prefix -> communities it was advertised with
	filter     *bgp.ImportFilter
	cniPath    string
	cniWritten bool
	egressDone *egress.Config
	egressAt   time.Time
	restarting bool // routes from a previous run were in the kernel at start
	swept      bool // ...and have been reconciled away since BGP resynchronised
	installErr map[netip.Prefix]string
	installed  map[netip.Prefix]bool
	learned    int
	lastRun    time.Time
	lastErr    error
	problems   []string  // configuration problems of the last pass, for the API
	metricsAt  time.Time // last refresh of the peer gauges
	// topologyProblems are the peers the last BGP pass left out, and why.
	topologyProblems []string
	// said logs each problem once while it lasts.
	said *problemLog
	// kubeProxy is the last check of kube-proxy (watchKubeProxy), every kubeProxyEvery.
	kubeProxy      kubeProxyState
	kubeProxyEvery time.Duration
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
		cfg:        cfg,
		log:        log,
		nodes:      cluster.NewWatcher(client, log.With("component", "nodes")),
		metrics:    newMetrics(),
		newRouter:  bgp.New,
		peers:      map[netip.Addr]peerSpec{},
		advertised: map[netip.Prefix]string{},
		installErr: map[netip.Prefix]string{},
		installed:  map[netip.Prefix]bool{},
		said:       newProblemLog(log),

		kubeProxyEvery: kubeProxyEvery,
	}
	if dyn != nil {
		defaults := cfg.defaults()
		a.settings = config.NewWatcher(dyn, config.Options{
			Defaults: &defaults,
			Nodes:    a.nodes.Nodes,
			Logger:   log.With("component", "config"),
		})
		a.status = config.NewStatusWriter(dyn, client.CoreV1(), cfg.NodeName, log.With("component", "status"))
		a.statusCh = make(chan config.Settings, 1)
	}
	return a, nil
}

// Run reconciles until ctx ends. On the way out it stops the BGP speaker the way a restart
// wants it (no CEASE: graceful-restart peers keep our routes) and leaves kernel routes in
// place, so an upgrade or a crash costs no traffic.
func (a *Agent) Run(ctx context.Context) error {
	a.started = time.Now()
	kernel, err := routes.NewReconciler(routes.Options{Logger: a.log.With("component", "routes")})
	if err != nil {
		return fmt.Errorf("kernel routes: %w", err)
	}
	defer kernel.Close()
	a.kernel = kernel
	owned, err := kernel.Owned()
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
	if a.cfg.Masquerade {
		if a.masq, err = egress.New(a.log.With("component", "egress")); err != nil {
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

	if a.cfg.KubeProxyMetricsAddress != "" {
		go a.watchKubeProxy(ctx)
	}
	go a.nodes.Run(ctx)
	var settingsChanged <-chan struct{}
	if a.settings != nil {
		go a.settings.Run(ctx)
		go a.writeStatuses(ctx)
		defer a.status.Shutdown()
		settingsChanged = a.settings.Changed()
	}
	kernelEvents, err := kernel.Watch(ctx)
	if err != nil {
		a.log.Warn("watching kernel routes failed; relying on periodic resync", "err", err)
	}
	tick := time.NewTicker(a.cfg.ResyncInterval)
	defer tick.Stop()
	var bgpEvents <-chan struct{}
	defer a.stopRouter()

	for {
		a.reconcile(ctx)
		if bgpEvents == nil {
			if r := a.currentRouter(); r != nil {
				bgpEvents = r.Subscribe(ctx)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-a.nodes.Changed():
		case <-settingsChanged:
		case _, ok := <-bgpEvents:
			if !ok {
				bgpEvents = nil
			}
		case _, ok := <-kernelEvents:
			if !ok {
				kernelEvents, _ = kernel.Watch(ctx)
			}
		case <-tick.C:
		}
	}
}

func (a *Agent) currentRouter() bgp.Router {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.router
}

func (a *Agent) stopRouter() {
	a.mu.Lock()
	r := a.router
	a.router = nil
	a.mu.Unlock()
	if r != nil {
		if err := r.Stop(true); err != nil {
			a.log.Warn("stop BGP speaker", "err", err)
		}
	}
}

// reconcile is one pass: read the cluster, compute what this node wants, apply it. Every
// step is idempotent, and a failing step does not stop the others.
// passTimeout bounds the API and nft calls of one pass, so a hung call cannot stop the loop.
const passTimeout = 2 * time.Minute

func (a *Agent) reconcile(ctx context.Context) {
	t0 := time.Now()
	pctx, cancel := context.WithTimeout(ctx, passTimeout)
	defer cancel()
	err := a.reconcileOnce(pctx)
	a.updatePeerMetrics(pctx)
	d := time.Since(t0)
	a.metrics.reconcileDuration.Observe(d.Seconds())
	a.mu.Lock()
	a.lastRun, a.lastErr = time.Now(), err
	a.mu.Unlock()
	if err != nil {
		a.metrics.reconcileErrors.Inc()
	}
	a.said.setErr("reconcile", err, "reconcile incomplete", "err")
}

func (a *Agent) reconcileOnce(ctx context.Context) error {
	if !a.nodes.Synced() {
		return errors.New("waiting for the first list of Nodes from the Kubernetes API")
	}
	s := a.settingsSnapshot()
	if !s.Synced {
		return errors.New("waiting for the first list of BGPPeers and BGPConfiguration")
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
	defer func() {
		a.mu.Lock()
		a.problems = problems
		a.mu.Unlock()
	}()
	me, meErr := findSelf(&cfg, nodes)
	a.mu.Lock()
	a.meErr = meErr
	if meErr == nil || (len(me.PodCIDRs) > 0 && (me.V4.IsValid() || me.V6.IsValid())) {
		a.me = me
	}
	me = a.me
	a.mu.Unlock()
	if meErr == nil {
		if err := overlaps(me, nodes); err != nil {
			meErr = err
			a.mu.Lock()
			a.meErr = err
			a.mu.Unlock()
		}
	}
	a.said.setErr("self", meErr, "this node cannot be fully served yet", "reason", "node", a.cfg.NodeName)
	if len(me.PodCIDRs) == 0 {
		return meErr // nothing can be advertised or configured without a pod CIDR
	}

	var errs []error
	if err := a.reconcileCNI(me); err != nil {
		errs = append(errs, err)
	}
	if err := a.reconcileEgress(ctx, &cfg, me); err != nil {
		errs = append(errs, err)
	}
	if err := a.reconcileBGP(ctx, &cfg, s, me, nodes); err != nil {
		errs = append(errs, err)
	}
	if err := a.reconcileKernel(ctx, me); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (a *Agent) reconcileCNI(me self) error {
	if !a.cfg.InstallCNI {
		return nil
	}
	mtu := a.cfg.MTU
	if mtu == 0 {
		addr := me.V4
		if !addr.IsValid() {
			addr = me.V6
		}
		m, err := cniconf.LinkMTU(addr)
		if err != nil {
			return fmt.Errorf("CNI config: MTU of the interface holding %s: %w (set --mtu)", addr, err)
		}
		mtu = m
	}
	path, changed, err := cniconf.Write(a.cfg.CNI, cniconf.NodeNetwork{PodCIDRs: me.PodCIDRs, MTU: mtu})
	if err != nil {
		return fmt.Errorf("CNI config: %w", err)
	}
	if changed {
		a.log.Info("wrote CNI config", "path", path, "podCIDRs", me.PodCIDRs, "mtu", mtu)
	}
	a.mu.Lock()
	a.cniPath, a.cniWritten = path, true
	a.mu.Unlock()
	return nil
}

// egressResync re-applies the masquerade rules now and then even when nothing changed, so a
// flushed ruleset comes back.
const egressResync = 5 * time.Minute

func (a *Agent) reconcileEgress(ctx context.Context, cfg *Config, me self) error {
	if a.masq == nil {
		return nil
	}
	want := egress.Config{PodCIDRs: me.PodCIDRs, ClusterCIDRs: cfg.ClusterCIDRs, Enabled: true}
	a.mu.Lock()
	same := a.egressDone != nil && reflect.DeepEqual(*a.egressDone, want) && time.Since(a.egressAt) < egressResync
	a.mu.Unlock()
	if same {
		return nil
	}
	if err := a.masq.Sync(ctx, want); err != nil {
		return fmt.Errorf("egress masquerade: %w", err)
	}
	a.mu.Lock()
	a.egressDone, a.egressAt = &want, time.Now()
	a.mu.Unlock()
	return nil
}

// routerConfig is the speaker's identity; a change needs a new speaker.
func (a *Agent) routerConfig(me self, filter bgp.ImportFilter) bgp.Config {
	c := bgp.Config{
		ASN:          me.ASN,
		RouterID:     me.RouterID,
		ListenPort:   a.cfg.BGPPort,
		NextHopIPv4:  me.V4,
		NextHopIPv6:  me.V6,
		ImportFilter: filter,
		Restarting:   a.restarting,
		Logger:       a.log.With("component", "bgp"),
	}
	c.ListenAddresses = a.cfg.ListenAddresses
	if len(c.ListenAddresses) == 0 {
		for _, ip := range []netip.Addr{me.V4, me.V6} {
			if ip.IsValid() {
				c.ListenAddresses = append(c.ListenAddresses, ip)
			}
		}
	}
	return c
}

func sameIdentity(a, b bgp.Config) bool {
	return a.ASN == b.ASN && a.RouterID == b.RouterID && a.ListenPort == b.ListenPort &&
		a.NextHopIPv4 == b.NextHopIPv4 && a.NextHopIPv6 == b.NextHopIPv6 &&
		slices.Equal(a.ListenAddresses, b.ListenAddresses)
}

func (a *Agent) reconcileBGP(ctx context.Context, cfg *Config, s config.Settings, me self, nodes []cluster.Node) error {
	t := nodeTopology(cfg, s, me, me.Node, nodes)
	t.addExternal(cfg, s, me, me.Node)
	filter := importFilter(cfg, me, nodes, t.origin)
	want := a.routerConfig(me, filter)

	a.mu.Lock()
	r, cur := a.router, a.routerCfg
	a.mu.Unlock()
	if r != nil && !sameIdentity(cur, want) {
		a.log.Info("BGP identity changed: restarting the speaker", "asn", want.ASN, "routerID", want.RouterID)
		a.stopRouter()
		a.mu.Lock()
		a.peers, a.advertised, a.filter = map[netip.Addr]peerSpec{}, map[netip.Prefix]string{}, nil
		a.mu.Unlock()
		r = nil
	}
	if r == nil {
		nr, err := a.newRouter(want)
		if err != nil {
			return fmt.Errorf("BGP speaker: %w", err)
		}
		if err := nr.Start(ctx); err != nil {
			return fmt.Errorf("start BGP speaker: %w", err)
		}
		a.log.Info("BGP speaker started", "asn", want.ASN, "routerID", want.RouterID, "listen", want.ListenAddresses, "restarting", want.Restarting)
		f := filter
		a.mu.Lock()
		a.router, a.routerCfg, a.filter = nr, want, &f
		a.mu.Unlock()
		r = nr
	}

	var errs []error
	a.mu.Lock()
	applied := a.filter
	a.mu.Unlock()
	filterOK := true
	if applied == nil || !reflect.DeepEqual(*applied, filter) {
		if err := r.UpdateImportFilter(ctx, filter); err != nil {
			errs = append(errs, fmt.Errorf("import filter: %w", err))
			filterOK = false
		} else {
			f := filter
			a.mu.Lock()
			a.filter = &f
			a.mu.Unlock()
		}
	}

	wantPeers := t.peers
	a.said.set("peer", t.problems, "peer left out", "reason")
	a.mu.Lock()
	a.topologyProblems = t.problems
	a.mu.Unlock()
	if !filterOK {
		// A new mesh peer must not come up before the filter restricting it to its own
		// pod CIDRs is in place; add it on a later pass.
		a.mu.Lock()
		maps.DeleteFunc(wantPeers, func(addr netip.Addr, _ peerSpec) bool { _, have := a.peers[addr]; return !have })
		a.mu.Unlock()
	}
	errs = append(errs, a.applyPeers(ctx, r, wantPeers)...)
	errs = append(errs, a.applyAdvertisements(ctx, r, me.PodCIDRs, s.Configuration.Communities)...)
	return errors.Join(errs...)
}

func (a *Agent) applyPeers(ctx context.Context, r bgp.Router, want map[netip.Addr]peerSpec) []error {
	a.mu.Lock()
	have := maps.Clone(a.peers)
	a.mu.Unlock()
	var errs []error
	for addr, p := range want {
		old, exists := have[addr]
		switch {
		case !exists:
			if err := r.AddNeighbor(ctx, p.Neighbor); err != nil {
				errs = append(errs, fmt.Errorf("add neighbor %s (node %s): %w", addr, p.Node, err))
				continue
			}
			a.log.Info("BGP neighbor added", "peer", addr, "node", p.Node, "bgpPeer", p.Peer, "asn", p.Neighbor.ASN, "kind", p.Neighbor.Kind)
		case !reflect.DeepEqual(old.Neighbor, p.Neighbor):
			if err := r.UpdateNeighbor(ctx, p.Neighbor); err != nil {
				errs = append(errs, fmt.Errorf("update neighbor %s (node %s): %w", addr, p.Node, err))
				continue
			}
			a.log.Info("BGP neighbor updated", "peer", addr, "node", p.Node, "bgpPeer", p.Peer, "changed", changedFields(old.Neighbor, p.Neighbor))
		}
		a.mu.Lock()
		a.peers[addr] = p
		a.mu.Unlock()
	}
	for addr, p := range have {
		if _, ok := want[addr]; ok {
			continue
		}
		if err := r.RemoveNeighbor(ctx, addr); err != nil {
			errs = append(errs, fmt.Errorf("remove neighbor %s (node %s): %w", addr, p.Node, err))
			continue
		}
		a.log.Info("BGP neighbor removed", "peer", addr, "node", p.Node)
		a.mu.Lock()
		delete(a.peers, addr)
		a.mu.Unlock()
	}
	return errs
}

func (a *Agent) applyAdvertisements(ctx context.Context, r bgp.Router, want []netip.Prefix, comms []bgp.Community) []error {
	var errs []error
	a.mu.Lock()
	have := maps.Clone(a.advertised)
	a.mu.Unlock()
	key := fmt.Sprint(comms)
	for _, p := range want {
		if k, ok := have[p]; ok && k == key {
			continue
		}
		// Advertise replaces an earlier advertisement, so a change of communities is one call.
		if err := r.Advertise(ctx, p, comms...); err != nil {
			errs = append(errs, fmt.Errorf("advertise %s: %w", p, err))
			continue
		}
		a.log.Info("advertising pod CIDR", "prefix", p, "communities", key)
		a.mu.Lock()
		a.advertised[p] = key
		a.mu.Unlock()
	}
	for p := range have {
		if slices.Contains(want, p) {
			continue
		}
		if err := r.Withdraw(ctx, p); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", p, err))
			continue
		}
		a.log.Info("withdrew pod CIDR", "prefix", p)
		a.mu.Lock()
		delete(a.advertised, p)
		a.mu.Unlock()
	}
	return errs
}

// settingsSnapshot is the cluster's BGP configuration, or the flags' when the agent runs
// without the CRDs' client.
func (a *Agent) settingsSnapshot() config.Settings {
	if a.settings == nil {
		return config.Settings{Synced: true, Configuration: a.cfg.defaults()}
	}
	return a.settings.Snapshot()
}

func (a *Agent) reconcileKernel(ctx context.Context, me self) error {
	r := a.currentRouter()
	var learned []bgp.Route
	if r != nil {
		var err error
		if learned, err = r.Routes(ctx); err != nil {
			return fmt.Errorf("read learned routes: %w", err)
		}
	}
	desired := kernelRoutes(me, learned)

	a.mu.Lock()
	keep := a.restarting && !a.swept
	a.mu.Unlock()
	if keep {
		synced := false
		if r != nil {
			synced, _ = r.Synced(ctx)
		}
		if synced || time.Since(a.started) > a.cfg.StaleTimeout {
			a.log.Info("BGP resynchronised after restart: sweeping stale routes", "endOfRIB", synced)
			a.mu.Lock()
			a.swept = true
			a.mu.Unlock()
		} else {
			owned, err := a.kernel.Owned()
			if err != nil {
				return fmt.Errorf("read podroute routes: %w", err)
			}
			desired = keepStale(desired, owned)
		}
	}

	res, err := a.kernel.Reconcile(desired)
	if err != nil {
		return fmt.Errorf("kernel routes: %w", err)
	}
	failed := map[netip.Prefix]string{}
	for _, e := range res.Errors {
		failed[e.Route.Prefix] = e.Error()
	}
	installed := make(map[netip.Prefix]bool, len(desired))
	for _, d := range desired {
		if _, bad := failed[d.Prefix]; !bad {
			installed[d.Prefix] = true
		}
	}
	a.mu.Lock()
	a.installErr, a.installed, a.learned = failed, installed, len(learned)
	a.mu.Unlock()
	a.metrics.routesInstalled.Set(float64(len(installed)))
	a.metrics.routesLearned.Set(float64(len(learned)))
	a.metrics.routesFailed.Set(float64(len(failed)))
	if res.Changed() > 0 {
		a.log.Info("kernel routes reconciled", "added", res.Added, "replaced", res.Replaced, "removed", res.Removed, "failed", len(failed))
	}
	if len(failed) > 0 {
		return fmt.Errorf("kernel routes: %d of %d not installed: %w", len(failed), len(desired), res.Err())
	}
	return nil
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
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-a.statusCh:
			wctx, cancel := context.WithTimeout(ctx, statusTimeout)
			err := a.status.Sync(wctx, s)
			a.said.setErr("status", err, "could not write the status of podroute resources", "err")
			cancel()
		}
	}
}

// changedFields names the fields that differ between two neighbours (never their values: one
// may be a password).
func changedFields(a, b bgp.Neighbor) []string {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	var out []string
	for i := range va.NumField() {
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, va.Type().Field(i).Name)
		}
	}
	return out
}
