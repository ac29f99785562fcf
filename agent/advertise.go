package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/podroute/podroute/bgp"
)

// advertisements originates this node's pod CIDRs, with the communities and AS-path
// prepending the BGPConfiguration asks for (spec.advertisements.podCIDRs). An unchanged
// advertisement is never resent.
type advertisements struct {
	speaker *speaker
	log     *slog.Logger

	generation int
	applied    map[netip.Prefix]string // prefix -> the attributes it went out with
}

func (a *advertisements) name() string { return "advertisements" }

func (a *advertisements) reconcile(ctx context.Context, d *desired) error {
	r, gen := a.speaker.current()
	if r == nil {
		return nil
	}
	if gen != a.generation || a.applied == nil {
		a.generation, a.applied = gen, map[netip.Prefix]string{}
	}
	pod := d.settings.Configuration.Advertisements.PodCIDRs
	attrs := bgp.Attributes{Communities: pod.Communities, ASPathPrepend: pod.ASPathPrepend}
	key := fmt.Sprint(attrs)
	var errs []error
	for _, p := range d.me.PodCIDRs {
		if k, ok := a.applied[p]; ok && k == key {
			continue
		}
		// Advertise replaces an earlier advertisement, so a change of attributes is one call.
		if err := r.Advertise(ctx, p, attrs); err != nil {
			errs = append(errs, fmt.Errorf("advertise %s: %w", p, err))
			continue
		}
		a.log.Info("advertising pod CIDR", "prefix", p, "communities", fmt.Sprint(attrs.Communities), "asPathPrepend", attrs.ASPathPrepend)
		a.applied[p] = key
	}
	for p := range a.applied {
		if slices.Contains(d.me.PodCIDRs, p) {
			continue
		}
		if err := r.Withdraw(ctx, p); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", p, err))
			continue
		}
		a.log.Info("withdrew pod CIDR", "prefix", p)
		delete(a.applied, p)
	}
	return errors.Join(errs...)
}

func (a *advertisements) report(s *snapshot) {
	for p := range a.applied {
		s.Advertised = append(s.Advertised, p)
	}
	slices.SortFunc(s.Advertised, netip.Prefix.Compare)
}
