package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/services"
)

// originated originates this node's routes: its pod CIDRs, to every neighbour with the
// attributes of spec.advertisements.podCIDRs, and the Service addresses it serves
// (services.Desired), to external neighbours only: every node's kube-proxy serves Service
// addresses itself, so they are never sent to other nodes (bgp.Attributes.ExternalOnly),
// and the import filter refuses them from peers. A pod CIDR wins over a Service range
// configured on top of it. A prefix is advertised when it is new or its attributes changed
// (Advertise replaces, so that is one call), withdrawn when no longer wanted, and an
// unchanged one is never resent.
type originated struct {
	speaker *speaker
	log     *slog.Logger

	generation int
	applied    map[netip.Prefix]origin
}

// origin is one originated prefix: a pod CIDR (service nil) or a Service address.
type origin struct {
	attrs   bgp.Attributes
	service *services.Advertisement
}

func (o origin) same(p origin) bool {
	return o.attrs.ExternalOnly == p.attrs.ExternalOnly && o.attrs.ASPathPrepend == p.attrs.ASPathPrepend &&
		slices.Equal(o.attrs.Communities, p.attrs.Communities)
}

func (o *originated) name() string { return "advertisements" }

// wanted is what d asks to originate. Until the Services and EndpointSlices were listed
// once the Service addresses already out stay as they are, so a restarted agent never
// withdraws, for want of a list, what its peers still hold from its previous run.
func (o *originated) wanted(d *desired) map[netip.Prefix]origin {
	want := make(map[netip.Prefix]origin, len(d.me.PodCIDRs)+len(d.services))
	if d.servicesSynced {
		for i := range d.services {
			adv := &d.services[i]
			want[adv.Prefix] = origin{
				attrs:   bgp.Attributes{Communities: adv.Communities, ASPathPrepend: adv.ASPathPrepend, ExternalOnly: true},
				service: adv,
			}
		}
	} else {
		for p, og := range o.applied {
			if og.service != nil {
				want[p] = og
			}
		}
	}
	pod := d.settings.Configuration.Advertisements.PodCIDRs
	for _, p := range d.me.PodCIDRs {
		want[p] = origin{attrs: bgp.Attributes{Communities: pod.Communities, ASPathPrepend: pod.ASPathPrepend}}
	}
	return want
}

func (o *originated) reconcile(ctx context.Context, d *desired) error {
	r, gen := o.speaker.current()
	if r == nil {
		return nil
	}
	if gen != o.generation || o.applied == nil {
		o.generation, o.applied = gen, map[netip.Prefix]origin{}
	}
	want := o.wanted(d)
	var errs []error
	for _, p := range sortedKeys(want) {
		og := want[p]
		if old, had := o.applied[p]; had && old.same(og) {
			o.applied[p] = og // the Services behind it may have changed
			continue
		}
		if err := r.Advertise(ctx, p, og.attrs); err != nil {
			errs = append(errs, fmt.Errorf("advertise %s: %w", og.what(p), err))
			continue
		}
		o.applied[p] = og
		o.log.Info("advertising "+og.what(p), og.logAttrs()...)
	}
	for _, p := range sortedKeys(o.applied) {
		if _, ok := want[p]; ok {
			continue
		}
		og := o.applied[p]
		if err := r.Withdraw(ctx, p); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", og.what(p), err))
			continue
		}
		o.log.Info("withdrew "+og.what(p), og.logAttrs()...)
		delete(o.applied, p)
	}
	return errors.Join(errs...)
}

// what names the prefix for logs and errors: "pod CIDR 10.244.1.0/24", "Service address
// 198.51.100.7/32".
func (o origin) what(p netip.Prefix) string {
	if o.service == nil {
		return "pod CIDR " + p.String()
	}
	return "Service address " + p.String()
}

func (o origin) logAttrs() []any {
	attrs := []any{"communities", fmt.Sprint(o.attrs.Communities), "asPathPrepend", o.attrs.ASPathPrepend}
	if o.service != nil {
		attrs = append(attrs, "class", o.service.Class, "services", o.service.Services)
	}
	return attrs
}

func (o *originated) report(s *snapshot) {
	for _, p := range sortedKeys(o.applied) {
		if og := o.applied[p]; og.service == nil {
			s.Advertised = append(s.Advertised, p)
		} else {
			s.ServiceRoutes = append(s.ServiceRoutes, *og.service)
		}
	}
}

func sortedKeys[V any](m map[netip.Prefix]V) []netip.Prefix {
	keys := make([]netip.Prefix, 0, len(m))
	for p := range m {
		keys = append(keys, p)
	}
	slices.SortFunc(keys, netip.Prefix.Compare)
	return keys
}
