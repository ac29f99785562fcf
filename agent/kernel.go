package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/routes"
)

// routeTable is the kernel's routing table as far as podroute owns it (routes.Reconciler).
type routeTable interface {
	Owned() ([]routes.Route, error)
	Reconcile(desired []routes.Route) (routes.Result, error)
}

// kernelRoutes installs the routes BGP learned, and a blackhole for each of this node's pod
// CIDRs. After a restart it keeps the routes a previous run left until BGP has
// resynchronised (or staleTimeout passed), so a restart removes nothing still in use.
type kernelRoutes struct {
	speaker *speaker
	table   routeTable
	log     *slog.Logger
	metrics *Metrics
	now     func() time.Time
	started time.Time
	// restarting: routes of a previous run were in the kernel at start; swept: they have
	// been reconciled away since BGP resynchronised.
	restarting, swept bool
	staleTimeout      time.Duration

	installed map[netip.Prefix]bool
	failed    map[netip.Prefix]string
	learned   int
}

func (k *kernelRoutes) name() string { return "kernel-routes" }

func (k *kernelRoutes) reconcile(ctx context.Context, d *desired) error {
	r, _ := k.speaker.current()
	// After a restart, ask whether BGP has resynchronised before reading what it learned:
	// read the other way round, routes that arrived between the two reads (just before a
	// peer's End-of-RIB) would be missing from what is kept, and the sweep would delete
	// them for the moment until the next pass put them back.
	sweep, synced := false, false
	if k.restarting && !k.swept {
		if r != nil {
			synced, _ = r.Synced(ctx)
		}
		sweep = synced || k.now().Sub(k.started) > k.staleTimeout
	}
	var learned []bgp.Route
	if r != nil {
		var err error
		if learned, err = r.Routes(ctx); err != nil {
			return fmt.Errorf("read learned routes: %w", err)
		}
	}
	want := routesFor(d.me, learned)
	if k.restarting && !k.swept {
		if sweep {
			k.log.Info("BGP resynchronised after restart: sweeping stale routes", "endOfRIB", synced)
			k.swept = true
		} else {
			owned, err := k.table.Owned()
			if err != nil {
				return fmt.Errorf("read podroute routes: %w", err)
			}
			want = keepStale(want, owned)
		}
	}

	res, err := k.table.Reconcile(want)
	if err != nil {
		return fmt.Errorf("kernel routes: %w", err)
	}
	failed := map[netip.Prefix]string{}
	for _, e := range res.Errors {
		failed[e.Route.Prefix] = e.Error()
	}
	installed := make(map[netip.Prefix]bool, len(want))
	for _, w := range want {
		if _, bad := failed[w.Prefix]; !bad {
			installed[w.Prefix] = true
		}
	}
	k.installed, k.failed, k.learned = installed, failed, len(learned)
	k.metrics.routesInstalled.Set(float64(len(installed)))
	k.metrics.routesLearned.Set(float64(len(learned)))
	k.metrics.routesFailed.Set(float64(len(failed)))
	if res.Changed() > 0 {
		k.log.Info("kernel routes reconciled", "added", res.Added, "replaced", res.Replaced, "removed", res.Removed, "failed", len(failed))
	}
	if len(failed) > 0 {
		return fmt.Errorf("kernel routes: %d of %d not installed: %w", len(failed), len(want), res.Err())
	}
	return nil
}

func (k *kernelRoutes) report(s *snapshot) {
	s.Installed, s.InstallErrors, s.Learned = k.installed, k.failed, k.learned
}
