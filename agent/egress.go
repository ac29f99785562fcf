package agent

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"github.com/podroute/podroute/egress"
)

// masquerader is the egress rules' owner in the kernel (egress.Masquerade).
type masquerader interface {
	Sync(ctx context.Context, cfg egress.Config) error
}

// egressResync re-applies the masquerade rules now and then even when nothing changed, so a
// flushed ruleset comes back.
const egressResync = 5 * time.Minute

// egressRules masquerades pod traffic that leaves the cluster.
type egressRules struct {
	masq masquerader
	now  func() time.Time

	done *egress.Config // last applied
	at   time.Time
}

func (e *egressRules) name() string { return "egress" }

func (e *egressRules) reconcile(ctx context.Context, d *desired) error {
	want := egress.Config{PodCIDRs: d.me.PodCIDRs, ClusterCIDRs: d.cfg.ClusterCIDRs, Enabled: true}
	if e.done != nil && reflect.DeepEqual(*e.done, want) && e.now().Sub(e.at) < egressResync {
		return nil
	}
	if err := e.masq.Sync(ctx, want); err != nil {
		return fmt.Errorf("egress masquerade: %w", err)
	}
	e.done, e.at = &want, e.now()
	return nil
}

func (e *egressRules) report(*snapshot) {}
