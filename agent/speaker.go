package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"

	"github.com/podroute/podroute/bgp"
)

// speaker owns the BGP speaker's lifecycle and its import filter: it starts the speaker,
// restarts it when the node's BGP identity changes, and keeps the import filter in line with
// the sessions wanted. The reconcilers after it use the speaker it holds.
type speaker struct {
	newRouter func(bgp.Config) (bgp.Router, error)
	log       *slog.Logger

	router bgp.Router
	cfg    bgp.Config
	// generation counts speakers started: a reconciler that sees it change knows the speaker
	// it configured is gone, with everything it had applied.
	generation int
	// filter is the import filter in force; filterCurrent says it is the one last wanted.
	filter        *bgp.ImportFilter
	filterCurrent bool
}

func (s *speaker) name() string { return "speaker" }

// current is the running speaker, or nil, and its generation.
func (s *speaker) current() (bgp.Router, int) { return s.router, s.generation }

func (s *speaker) reconcile(ctx context.Context, d *desired) error {
	want := d.speaker
	if s.router != nil && !sameIdentity(s.cfg, want) {
		s.log.Info("BGP identity changed: restarting the speaker", "asn", want.ASN, "routerID", want.RouterID)
		s.stop()
	}
	if s.router == nil {
		r, err := s.newRouter(want)
		if err != nil {
			return fmt.Errorf("BGP speaker: %w", err)
		}
		if err := r.Start(ctx); err != nil {
			return fmt.Errorf("start BGP speaker: %w", err)
		}
		s.log.Info("BGP speaker started", "asn", want.ASN, "routerID", want.RouterID, "listen", want.ListenAddresses, "restarting", want.Restarting)
		f := want.ImportFilter
		s.router, s.cfg, s.filter, s.filterCurrent = r, want, &f, true
		s.generation++
	}
	if s.filter != nil && reflect.DeepEqual(*s.filter, d.filter) {
		s.filterCurrent = true
		return nil
	}
	if err := s.router.UpdateImportFilter(ctx, d.filter); err != nil {
		s.filterCurrent = false
		return fmt.Errorf("import filter: %w", err)
	}
	f := d.filter
	s.filter, s.filterCurrent = &f, true
	return nil
}

// stop stops the speaker the way a restart wants it (no CEASE: graceful-restart peers keep
// this node's routes while it comes back).
func (s *speaker) stop() {
	if s.router == nil {
		return
	}
	if err := s.router.Stop(true); err != nil {
		s.log.Warn("stop BGP speaker", "err", err)
	}
	s.router, s.filter, s.filterCurrent = nil, nil, false
}

func (s *speaker) report(snap *snapshot) {
	snap.router = s.router
}

// speakerConfig is the speaker's identity for this node.
func speakerConfig(cfg *Config, me self, filter bgp.ImportFilter, restarting bool, log *slog.Logger) bgp.Config {
	c := bgp.Config{
		ASN:          me.ASN,
		RouterID:     me.RouterID,
		ListenPort:   cfg.BGPPort,
		NextHopIPv4:  me.V4,
		NextHopIPv6:  me.V6,
		ImportFilter: filter,
		Restarting:   restarting,
		Logger:       log,
	}
	c.ListenAddresses = cfg.ListenAddresses
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
