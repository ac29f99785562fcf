package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/config/oc"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"github.com/osrg/gobgp/v3/pkg/server"
)

var startMu sync.Mutex

type lifecycle int

const (
	stateNew lifecycle = iota
	stateRunning
	stateStopped
)

type advertisement struct {
	communities []Community
	path        *api.Path
}

type peerProblem struct {
	msg string
	at  time.Time
}

// router implements Router with an embedded GoBGP server.
type router struct {
	cfg      Config
	log      *slog.Logger
	refusals *refusals

	// opMu serialises configuration changes so GoBGP's state and ours change together.
	// It may be held while calling GoBGP; mu never is (GoBGP calls back into us).
	opMu sync.Mutex
	srv  *server.BgpServer

	mu              sync.Mutex
	state           lifecycle
	done            chan struct{}
	stopWatch       context.CancelFunc
	neighbors       map[netip.Addr]Neighbor
	problems        map[netip.Addr]peerProblem
	advertised      map[netip.Prefix]advertisement
	filter          ImportFilter
	subs            map[chan struct{}]struct{}
	restartingUntil time.Time
}

// New validates cfg and returns a Router backed by GoBGP. Nothing runs until Start.
func New(cfg Config) (Router, error) {
	if err := validateConfig(&cfg); err != nil {
		return nil, fmt.Errorf("bgp: %w", err)
	}
	f, err := cfg.ImportFilter.normalize()
	if err != nil {
		return nil, fmt.Errorf("bgp: %w", err)
	}
	l := cfg.Logger
	if l == nil {
		l = slog.Default()
	}
	return &router{
		cfg:        cfg,
		log:        l,
		refusals:   newRefusals(l),
		done:       make(chan struct{}),
		neighbors:  map[netip.Addr]Neighbor{},
		problems:   map[netip.Addr]peerProblem{},
		advertised: map[netip.Prefix]advertisement{},
		filter:     f,
		subs:       map[chan struct{}]struct{}{},
	}, nil
}

func validateConfig(c *Config) error {
	if c.ASN == 0 {
		return fieldErr("Config.ASN", "required")
	}
	if !c.RouterID.IsValid() || !c.RouterID.Unmap().Is4() || c.RouterID.IsUnspecified() {
		return fieldErr("Config.RouterID", "must be a non-zero IPv4 address, got %v", c.RouterID)
	}
	c.RouterID = c.RouterID.Unmap()
	if c.ListenPort < -1 || c.ListenPort > 65535 {
		return fieldErr("Config.ListenPort", "%d is outside -1..65535", c.ListenPort)
	}
	for i, a := range c.ListenAddresses {
		if !a.IsValid() {
			return fieldErr(fmt.Sprintf("Config.ListenAddresses[%d]", i), "invalid address")
		}
	}
	if c.NextHopIPv4.IsValid() {
		if !c.NextHopIPv4.Unmap().Is4() || c.NextHopIPv4.IsUnspecified() {
			return fieldErr("Config.NextHopIPv4", "%s is not a usable IPv4 address", c.NextHopIPv4)
		}
		c.NextHopIPv4 = c.NextHopIPv4.Unmap()
	}
	if c.NextHopIPv6.IsValid() && (!c.NextHopIPv6.Is6() || c.NextHopIPv6.Is4In6() || c.NextHopIPv6.IsUnspecified() || c.NextHopIPv6.Zone() != "") {
		return fieldErr("Config.NextHopIPv6", "%s is not a usable global IPv6 address", c.NextHopIPv6)
	}
	if err := wholeSeconds("Config.DeferralTime", c.DeferralTime, time.Second, 65535*time.Second); err != nil {
		return err
	}
	return nil
}

// guard turns a panic escaping GoBGP into an error for the caller.
func guard(op string, err *error) {
	if v := recover(); v != nil {
		*err = fmt.Errorf("bgp: %s: internal error: %v", op, v)
	}
}

func (r *router) running() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.state {
	case stateNew:
		return errors.New("bgp: router not started")
	case stateStopped:
		return errors.New("bgp: router stopped")
	}
	return nil
}

func (r *router) Start(ctx context.Context) (err error) {
	defer guard("start", &err)
	r.opMu.Lock()
	defer r.opMu.Unlock()
	r.mu.Lock()
	if r.state != stateNew {
		r.mu.Unlock()
		return errors.New("bgp: router already started")
	}
	r.mu.Unlock()

	// No GrpcListenAddress option: GoBGP then opens no gRPC port at all.
	srv := server.NewBgpServer(server.LoggerOption(&slogAdapter{l: r.log, onPeerProblem: r.notePeerProblem}))
	// Serve runs GoBGP's event loop; every API call below waits on it.
	go srv.Serve()

	global := &api.Global{
		Asn:        r.cfg.ASN,
		RouterId:   r.cfg.RouterID.String(),
		ListenPort: r.cfg.ListenPort,
		Families: []uint32{
			uint32(oc.AfiSafiTypeToIntMap[oc.AFI_SAFI_TYPE_IPV4_UNICAST]),
			uint32(oc.AfiSafiTypeToIntMap[oc.AFI_SAFI_TYPE_IPV6_UNICAST]),
		},
		// Report every equal-cost path, not only the best one. GoBGP keeps this in a
		// package variable, so it holds for every server in the process.
		UseMultiplePaths: true,
	}
	for _, a := range r.cfg.ListenAddresses {
		global.ListenAddresses = append(global.ListenAddresses, a.String())
	}
	// StartBgp writes GoBGP package variables (route selection options, multipath);
	// serialise it in case a process runs several routers.
	startMu.Lock()
	err = srv.StartBgp(ctx, &api.StartBgpRequest{Global: global})
	startMu.Unlock()
	if err != nil {
		srv.Stop()
		return fmt.Errorf("bgp: start GoBGP (AS %d, router ID %s, port %d): %w", r.cfg.ASN, r.cfg.RouterID, r.cfg.ListenPort, err)
	}
	r.srv = srv
	fail := func(err error) error {
		srv.Stop()
		r.srv = nil
		return err
	}
	if err := r.applyPoliciesLocked(ctx, true); err != nil {
		return fail(err)
	}

	wctx, cancel := context.WithCancel(context.Background())
	// The callbacks only set flags and count refusals: GoBGP queues events for a slow
	// watcher without bound.
	err = srv.WatchEvent(wctx, &api.WatchEventRequest{
		Peer: &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{
			{Type: api.WatchEventRequest_Table_Filter_BEST},
			{Type: api.WatchEventRequest_Table_Filter_EOR},
		}},
	}, func(*api.WatchEventResponse) { r.notify() })
	if err == nil {
		err = srv.WatchEvent(wctx, &api.WatchEventRequest{
			Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{
				{Type: api.WatchEventRequest_Table_Filter_ADJIN},
			}},
		}, r.onAdjIn)
	}
	if err != nil {
		cancel()
		return fail(fmt.Errorf("bgp: watch GoBGP events: %w", err))
	}

	r.mu.Lock()
	r.state = stateRunning
	r.stopWatch = cancel
	if r.cfg.Restarting {
		r.restartingUntil = time.Now().Add(r.deferralTime())
	}
	r.mu.Unlock()
	r.log.Info("bgp: started", "asn", r.cfg.ASN, "routerID", r.cfg.RouterID, "port", r.cfg.ListenPort, "restarting", r.cfg.Restarting)
	return nil
}

func (r *router) deferralTime() time.Duration {
	if r.cfg.DeferralTime == 0 {
		return defaultDeferralTime
	}
	return r.cfg.DeferralTime
}

func (r *router) Stop(graceful bool) (err error) {
	defer guard("stop", &err)
	r.mu.Lock()
	if r.state == stateStopped {
		r.mu.Unlock()
		return nil
	}
	wasRunning := r.state == stateRunning
	r.state = stateStopped
	close(r.done)
	if r.stopWatch != nil {
		r.stopWatch()
	}
	for ch := range r.subs {
		delete(r.subs, ch)
		close(ch)
	}
	var keys []sessionKey
	if graceful {
		keys = r.sessionKeysLocked()
	}
	r.mu.Unlock()
	if !wasRunning {
		return nil
	}

	r.opMu.Lock()
	defer r.opMu.Unlock()
	if graceful {
		// Cut the sessions before GoBGP gets a chance to send CEASE. Peers redial only
		// after their connect-retry delay (at least a second), long after StopBgp below
		// has closed the listeners and deconfigured the peers.
		n, aerr := abortSessions(keys)
		if aerr != nil {
			err = fmt.Errorf("bgp: graceful stop: abort sessions: %w", aerr)
		}
		r.log.Info("bgp: stopping for restart, sessions cut without notification", "sessions", n)
	} else {
		r.log.Info("bgp: stopping, peers will withdraw our routes")
	}
	// StopBgp returns once every peer is deconfigured. GoBGP's Serve goroutine has no
	// way to exit and stays parked on its channels.
	if serr := r.srv.StopBgp(context.Background(), &api.StopBgpRequest{}); serr != nil {
		err = errors.Join(err, fmt.Errorf("bgp: stop GoBGP: %w", serr))
	}
	return err
}

func (r *router) sessionKeysLocked() []sessionKey {
	keys := make([]sessionKey, 0, len(r.neighbors))
	for _, n := range r.neighbors {
		keys = append(keys, r.sessionKey(n))
	}
	return keys
}

func (r *router) sessionKey(n Neighbor) sessionKey {
	var listen uint16
	switch {
	case r.cfg.ListenPort == 0:
		listen = 179
	case r.cfg.ListenPort > 0:
		listen = uint16(r.cfg.ListenPort)
	}
	return sessionKey{remote: n.Address, remotePort: n.port(), local: n.LocalAddress, listenPort: listen}
}

func (r *router) Subscribe(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	r.mu.Lock()
	if r.state == stateStopped {
		r.mu.Unlock()
		close(ch)
		return ch
	}
	r.subs[ch] = struct{}{}
	done := r.done
	r.mu.Unlock()
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		r.mu.Lock()
		if _, ok := r.subs[ch]; ok {
			delete(r.subs, ch)
			close(ch)
		}
		r.mu.Unlock()
	}()
	return ch
}

// notify wakes every subscriber without ever blocking: a pending signal already covers
// this change.
func (r *router) notify() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for ch := range r.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// onAdjIn sees every path received from a peer before import policy, to account
// refusals with a reason, and every withdrawal, which ends a refusal.
func (r *router) onAdjIn(resp *api.WatchEventResponse) {
	t := resp.GetTable()
	if t == nil {
		return
	}
	r.mu.Lock()
	f := r.filter
	r.mu.Unlock()
	for _, p := range t.Paths {
		prefix, ok := pathPrefix(p)
		if !ok {
			continue
		}
		peer, err := netip.ParseAddr(p.NeighborIp)
		if err != nil {
			continue
		}
		if p.IsWithdraw {
			// The peer no longer announces it: a refusal of it is over, and is logged
			// again if the peer announces it again.
			r.refusals.forget(prefix, peer.Unmap())
			continue
		}
		if reason := f.classify(peer, prefix); reason != "" {
			r.refusals.record(prefix, peer.Unmap(), reason)
		}
	}
}

func (r *router) notePeerProblem(key, msg string, fields gobgplog.Fields) {
	addr, err := netip.ParseAddr(key)
	if err != nil {
		return
	}
	addr = addr.Unmap()
	var b strings.Builder
	b.WriteString(msg)
	for _, k := range []string{"Code", "Subcode", "Communicated-Reason", "Err", "Error", "Reason"} {
		if v, ok := fields[k]; ok && v != nil {
			fmt.Fprintf(&b, " %s=%v", k, v)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.neighbors[addr]; ok {
		r.problems[addr] = peerProblem{msg: b.String(), at: time.Now()}
	}
}

// applyPoliciesLocked installs the routing policy for the current filter and route
// reflector clients. Needs opMu.
func (r *router) applyPoliciesLocked(ctx context.Context, initial bool) error {
	r.mu.Lock()
	f := r.filter
	var clients, noExport []netip.Addr
	for a, n := range r.neighbors {
		if n.RouteReflectorClient {
			clients = append(clients, a)
		}
		if n.NoExport {
			noExport = append(noExport, a)
		}
	}
	r.mu.Unlock()
	slices.SortFunc(clients, netip.Addr.Compare)
	slices.SortFunc(noExport, netip.Addr.Compare)
	if err := r.srv.SetPolicies(ctx, f.policies(clients, noExport)); err != nil {
		return fmt.Errorf("bgp: set routing policy: %w", err)
	}
	if !initial {
		return nil
	}
	// SetPolicies keeps existing assignments, so they are made once.
	for _, a := range []struct {
		name string
		dir  api.PolicyDirection
	}{{importPolicyName, api.PolicyDirection_IMPORT}, {exportPolicyName, api.PolicyDirection_EXPORT}} {
		err := r.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
			Name:          "global",
			Direction:     a.dir,
			Policies:      []*api.Policy{{Name: a.name}},
			DefaultAction: api.RouteAction_REJECT,
		}})
		if err != nil {
			return fmt.Errorf("bgp: assign policy %s: %w", a.name, err)
		}
	}
	return nil
}

func (r *router) UpdateImportFilter(ctx context.Context, f ImportFilter) (err error) {
	defer guard("update import filter", &err)
	nf, err := f.normalize()
	if err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.running(); err != nil {
		return err
	}
	r.mu.Lock()
	r.filter = nf
	addrs := make([]netip.Addr, 0, len(r.neighbors))
	for a := range r.neighbors {
		addrs = append(addrs, a)
	}
	r.mu.Unlock()
	if err := r.applyPoliciesLocked(ctx, false); err != nil {
		return err
	}
	// Forget refusals the new filter allows, and account paths already held that it
	// now refuses (they will not be announced again).
	r.refusals.retain(func(p netip.Prefix, peer netip.Addr) bool { return nf.classify(peer, p) != "" })
	for _, a := range addrs {
		for _, fam := range []*api.Family{familyIPv4, familyIPv6} {
			err := r.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_ADJ_IN, Name: a.String(), Family: fam, EnableOnlyBinary: true},
				func(d *api.Destination) {
					for _, p := range d.Paths {
						if prefix, ok := pathPrefix(p); ok {
							if reason := nf.classify(a, prefix); reason != "" {
								r.refusals.note(prefix, a, reason)
							}
						}
					}
				})
			if err != nil {
				r.log.Debug("bgp: list adj-rib-in", "peer", a, "err", err)
			}
		}
	}
	// Re-run the import policy over everything received so far.
	if err := r.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: "all", Soft: true, Direction: api.ResetPeerRequest_IN}); err != nil {
		return fmt.Errorf("bgp: re-apply import policy: %w", err)
	}
	return nil
}

func (r *router) localRestarting(n Neighbor) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return n.GracefulRestart && time.Now().Before(r.restartingUntil)
}

func normalizeNeighbor(n Neighbor) Neighbor {
	n.Address = n.Address.Unmap()
	if n.LocalAddress.IsValid() {
		n.LocalAddress = n.LocalAddress.Unmap()
	}
	return n
}

// beginNeighborOp normalises and validates n and takes the lock that serialises neighbour
// operations; the caller must call unlock.
func (r *router) beginNeighborOp(n Neighbor) (_ Neighbor, unlock func(), err error) {
	n = normalizeNeighbor(n)
	if err := n.validateFor(&r.cfg); err != nil {
		return n, nil, fmt.Errorf("bgp: neighbor %v: %w", n.Address, err)
	}
	r.opMu.Lock()
	if err := r.running(); err != nil {
		r.opMu.Unlock()
		return n, nil, err
	}
	return n, r.opMu.Unlock, nil
}

func (r *router) AddNeighbor(ctx context.Context, n Neighbor) (err error) {
	defer guard("add neighbor", &err)
	n, unlock, err := r.beginNeighborOp(n)
	if err != nil {
		return err
	}
	defer unlock()
	r.mu.Lock()
	_, exists := r.neighbors[n.Address]
	r.mu.Unlock()
	if exists {
		return fmt.Errorf("bgp: neighbor %s already configured", n.Address)
	}
	if n.shapesPolicy() {
		// The export policy must allow reflection (or forbid export) before the session
		// can come up.
		r.mu.Lock()
		r.neighbors[n.Address] = n
		r.mu.Unlock()
		if err := r.applyPoliciesLocked(ctx, false); err != nil {
			r.mu.Lock()
			delete(r.neighbors, n.Address)
			r.mu.Unlock()
			return err
		}
	}
	if n.Password != "" {
		if err := md5Supported(); err != nil {
			return fmt.Errorf("bgp: neighbor %s: %w", n.Address, &FieldError{Field: "Neighbor.Password", Reason: err.Error()})
		}
	}
	if err := r.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: n.toAPI(&r.cfg, r.localRestarting(n))}); err != nil {
		r.mu.Lock()
		delete(r.neighbors, n.Address)
		r.mu.Unlock()
		if n.shapesPolicy() {
			_ = r.applyPoliciesLocked(ctx, false)
		}
		return fmt.Errorf("bgp: add neighbor %s (AS %d): %w", n.Address, n.ASN, err)
	}
	r.mu.Lock()
	r.neighbors[n.Address] = n
	r.mu.Unlock()
	r.log.Info("bgp: neighbor added", "peer", n.Address, "asn", n.ASN, "kind", n.Kind, "gracefulRestart", n.GracefulRestart)
	return nil
}

func (r *router) UpdateNeighbor(ctx context.Context, n Neighbor) (err error) {
	defer guard("update neighbor", &err)
	n, unlock, err := r.beginNeighborOp(n)
	if err != nil {
		return err
	}
	defer unlock()
	r.mu.Lock()
	old, exists := r.neighbors[n.Address]
	if exists {
		r.neighbors[n.Address] = n
	}
	r.mu.Unlock()
	if !exists {
		return fmt.Errorf("bgp: neighbor %s not configured", n.Address)
	}
	rollback := func() {
		r.mu.Lock()
		r.neighbors[n.Address] = old
		r.mu.Unlock()
	}
	rrChanged := old.RouteReflectorClient != n.RouteReflectorClient || old.NoExport != n.NoExport
	// Hold and keepalive times are agreed in OPEN: a change takes effect only on a new session.
	timersChanged := old.HoldTime != n.HoldTime || old.KeepaliveTime != n.KeepaliveTime
	if rrChanged {
		if err := r.applyPoliciesLocked(ctx, false); err != nil {
			rollback()
			return err
		}
	}
	resp, err := r.srv.UpdatePeer(ctx, &api.UpdatePeerRequest{Peer: n.toAPI(&r.cfg, r.localRestarting(n))})
	if err != nil {
		rollback()
		if rrChanged {
			_ = r.applyPoliciesLocked(ctx, false)
		}
		return fmt.Errorf("bgp: update neighbor %s: %w", n.Address, err)
	}
	if resp.GetNeedsSoftResetIn() {
		if err := r.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: n.Address.String(), Soft: true, Direction: api.ResetPeerRequest_IN}); err != nil {
			return fmt.Errorf("bgp: update neighbor %s: soft reset: %w", n.Address, err)
		}
	}
	if rrChanged {
		if err := r.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: n.Address.String(), Soft: true, Direction: api.ResetPeerRequest_OUT}); err != nil {
			return fmt.Errorf("bgp: update neighbor %s: soft reset: %w", n.Address, err)
		}
	}
	if timersChanged {
		// Cut the session without a NOTIFICATION: a graceful-restart peer keeps our routes
		// while the session comes back with the new timers.
		if _, err := abortSessions([]sessionKey{r.sessionKey(n)}); err != nil {
			return fmt.Errorf("bgp: update neighbor %s: restart session for new timers: %w", n.Address, err)
		}
	}
	r.log.Info("bgp: neighbor updated", "peer", n.Address, "asn", n.ASN, "kind", n.Kind, "sessionRestarted", timersChanged)
	return nil
}

func (r *router) RemoveNeighbor(ctx context.Context, addr netip.Addr) (err error) {
	defer guard("remove neighbor", &err)
	addr = addr.Unmap()
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.running(); err != nil {
		return err
	}
	r.mu.Lock()
	n, exists := r.neighbors[addr]
	r.mu.Unlock()
	if !exists {
		return fmt.Errorf("bgp: neighbor %v not configured", addr)
	}
	if err := r.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
		return fmt.Errorf("bgp: remove neighbor %s: %w", addr, err)
	}
	r.mu.Lock()
	delete(r.neighbors, addr)
	delete(r.problems, addr)
	r.mu.Unlock()
	r.refusals.retain(func(_ netip.Prefix, peer netip.Addr) bool { return peer != addr })
	if n.shapesPolicy() {
		if err := r.applyPoliciesLocked(ctx, false); err != nil {
			return err
		}
	}
	r.log.Info("bgp: neighbor removed", "peer", addr)
	return nil
}

func (r *router) Advertise(ctx context.Context, prefix netip.Prefix, communities ...Community) (err error) {
	defer guard("advertise", &err)
	if !prefix.IsValid() {
		return errors.New("bgp: advertise: invalid prefix")
	}
	prefix = unmapPrefix(prefix)
	if prefix != prefix.Masked() {
		return fmt.Errorf("bgp: advertise %s: host bits set", prefix)
	}
	comms := slices.Clone(communities)
	slices.Sort(comms)
	comms = slices.Compact(comms)
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.running(); err != nil {
		return err
	}
	r.mu.Lock()
	old, had := r.advertised[prefix]
	r.mu.Unlock()
	if had && slices.Equal(old.communities, comms) {
		return nil
	}
	path, err := r.buildPath(prefix, comms)
	if err != nil {
		return fmt.Errorf("bgp: advertise %s: %w", prefix, err)
	}
	// Same prefix from the same (local) source: GoBGP replaces the old path.
	if _, err := r.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path}); err != nil {
		return fmt.Errorf("bgp: advertise %s: %w", prefix, err)
	}
	r.mu.Lock()
	r.advertised[prefix] = advertisement{communities: comms, path: path}
	r.mu.Unlock()
	return nil
}

// buildPath makes the local path for prefix. The next hop is set explicitly when
// configured: GoBGP keeps a local path's explicit next hop towards iBGP and eBGP peers
// alike, and only fills in the session's local address for an unspecified one, which
// for an IPv6 prefix over an IPv4 session would be an IPv4 address in MP_REACH_NLRI.
func (r *router) buildPath(prefix netip.Prefix, comms []Community) (*api.Path, error) {
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	var nlri bgp.AddrPrefixInterface
	if prefix.Addr().Is4() {
		nlri = bgp.NewIPAddrPrefix(uint8(prefix.Bits()), prefix.Addr().String())
		nh := "0.0.0.0"
		if r.cfg.NextHopIPv4.IsValid() {
			nh = r.cfg.NextHopIPv4.String()
		}
		attrs = append(attrs, bgp.NewPathAttributeNextHop(nh))
	} else {
		nlri = bgp.NewIPv6AddrPrefix(uint8(prefix.Bits()), prefix.Addr().String())
		nh := "::"
		if r.cfg.NextHopIPv6.IsValid() {
			nh = r.cfg.NextHopIPv6.String()
		}
		attrs = append(attrs, bgp.NewPathAttributeMpReachNLRI(nh, []bgp.AddrPrefixInterface{nlri}))
	}
	if len(comms) > 0 {
		vals := make([]uint32, len(comms))
		for i, c := range comms {
			vals[i] = uint32(c)
		}
		attrs = append(attrs, bgp.NewPathAttributeCommunities(vals))
	}
	return apiutil.NewPath(nlri, false, attrs, time.Now())
}

func (r *router) Withdraw(ctx context.Context, prefix netip.Prefix) (err error) {
	defer guard("withdraw", &err)
	if !prefix.IsValid() {
		return errors.New("bgp: withdraw: invalid prefix")
	}
	prefix = unmapPrefix(prefix)
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.running(); err != nil {
		return err
	}
	r.mu.Lock()
	adv, had := r.advertised[prefix]
	r.mu.Unlock()
	if !had {
		return nil
	}
	if err := r.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: adv.path.Family, Path: adv.path}); err != nil {
		return fmt.Errorf("bgp: withdraw %s: %w", prefix, err)
	}
	r.mu.Lock()
	delete(r.advertised, prefix)
	r.mu.Unlock()
	return nil
}

func (r *router) Refusals() []Refusal { return r.refusals.list() }

func (r *router) Routes(ctx context.Context) (routes []Route, err error) {
	defer guard("routes", &err)
	if err := r.running(); err != nil {
		return nil, err
	}
	for _, fam := range []*api.Family{familyIPv4, familyIPv6} {
		var derr error
		err := r.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: fam, EnableOnlyBinary: true},
			func(d *api.Destination) {
				rt, ok, err := r.route(d)
				if err != nil {
					derr = errors.Join(derr, err)
				} else if ok {
					routes = append(routes, rt)
				}
			})
		if err != nil {
			return nil, fmt.Errorf("bgp: list routes: %w", err)
		}
		if derr != nil {
			return nil, fmt.Errorf("bgp: list routes: %w", derr)
		}
	}
	slices.SortFunc(routes, func(a, b Route) int { return comparePrefix(a.Prefix, b.Prefix) })
	return routes, nil
}

// pathInfo is what best-path comparison and Route need from a path.
type pathInfo struct {
	path      Path
	local     bool
	ibgp      bool
	asPathLen int
	origin    uint8
}

// route builds the Route for one destination. GoBGP lists a destination's paths best
// first but marks only the first as best (its multipath marking in ListPath compares
// whole paths including the source), so the multipath set is recomputed here with the
// criteria GoBGP uses for it (table.Path.Compare): local vs learned, iBGP vs eBGP,
// LOCAL_PREF, AS_PATH length, ORIGIN, MED.
func (r *router) route(d *api.Destination) (Route, bool, error) {
	var infos []pathInfo
	var prefix netip.Prefix
	for _, p := range d.Paths {
		if p.IsWithdraw || p.IsNexthopInvalid {
			continue
		}
		pfx, ok := pathPrefix(p)
		if !ok {
			return Route{}, false, fmt.Errorf("undecodable prefix in %q", d.Prefix)
		}
		prefix = pfx
		info, err := r.decodePath(p)
		if err != nil {
			return Route{}, false, fmt.Errorf("%s: %w", pfx, err)
		}
		infos = append(infos, info)
	}
	if len(infos) == 0 || infos[0].local {
		// Nothing usable, or our own prefix wins: nothing to install.
		return Route{}, false, nil
	}
	best := infos[0]
	rt := Route{Prefix: prefix}
	for i, in := range infos {
		if i > 0 && (in.local || !sameCost(best, in)) {
			continue
		}
		in.path.Best = i == 0
		rt.Paths = append(rt.Paths, in.path)
		if in.path.NextHop.IsValid() && !slices.Contains(rt.NextHops, in.path.NextHop) {
			rt.NextHops = append(rt.NextHops, in.path.NextHop)
		}
	}
	slices.SortFunc(rt.NextHops, netip.Addr.Compare)
	return rt, true, nil
}

func sameCost(a, b pathInfo) bool {
	return a.local == b.local && a.ibgp == b.ibgp && a.path.LocalPref == b.path.LocalPref &&
		a.asPathLen == b.asPathLen && a.origin == b.origin && a.path.MED == b.path.MED
}

func (r *router) decodePath(p *api.Path) (pathInfo, error) {
	attrs, err := apiutil.GetNativePathAttributes(p)
	if err != nil {
		return pathInfo{}, fmt.Errorf("decode path attributes: %w", err)
	}
	in := pathInfo{path: Path{LocalPref: 100, Stale: p.Stale}}
	if a, err := netip.ParseAddr(p.NeighborIp); err == nil {
		in.path.SourcePeer = a.Unmap()
	} else {
		in.local = true // GoBGP reports a local path's missing source as "<nil>"
	}
	if a, err := netip.ParseAddr(p.SourceId); err == nil {
		in.path.SourceRouterID = a.Unmap()
	}
	in.ibgp = p.SourceAsn != 0 && p.SourceAsn == r.cfg.ASN
	for _, a := range attrs {
		switch a := a.(type) {
		case *bgp.PathAttributeNextHop:
			in.path.NextHop = ipToAddr(a.Value)
		case *bgp.PathAttributeMpReachNLRI:
			in.path.NextHop = ipToAddr(a.Nexthop)
		case *bgp.PathAttributeAsPath:
			for _, seg := range a.Value {
				in.asPathLen += seg.ASLen()
				in.path.ASPath = append(in.path.ASPath, seg.GetAS()...)
			}
		case *bgp.PathAttributeLocalPref:
			in.path.LocalPref = a.Value
		case *bgp.PathAttributeMultiExitDisc:
			in.path.MED = a.Value
		case *bgp.PathAttributeOrigin:
			in.origin = a.Value
		case *bgp.PathAttributeCommunities:
			for _, c := range a.Value {
				in.path.Communities = append(in.path.Communities, Community(c))
			}
		}
	}
	return in, nil
}

func ipToAddr(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || a.IsUnspecified() {
		return netip.Addr{}
	}
	return a.Unmap()
}

// pathPrefix extracts an IPv4/IPv6 unicast prefix from an API path.
func pathPrefix(p *api.Path) (netip.Prefix, bool) {
	if p.Family == nil {
		return netip.Prefix{}, false
	}
	nlri, err := apiutil.GetNativeNlri(p)
	if err != nil {
		return netip.Prefix{}, false
	}
	var ip net.IP
	var bits uint8
	switch n := nlri.(type) {
	case *bgp.IPAddrPrefix:
		ip, bits = n.Prefix, n.Length
	case *bgp.IPv6AddrPrefix:
		ip, bits = n.Prefix, n.Length
	default:
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Prefix{}, false
	}
	if p.Family.Afi == api.Family_AFI_IP {
		a = a.Unmap()
	}
	pfx := netip.PrefixFrom(a, int(bits))
	return pfx, pfx.IsValid()
}

func (r *router) Neighbors(ctx context.Context) (out []PeerState, err error) {
	defer guard("neighbors", &err)
	if err := r.running(); err != nil {
		return nil, err
	}
	var peers []*api.Peer
	if err := r.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) { peers = append(peers, p) }); err != nil {
		return nil, fmt.Errorf("bgp: list neighbors: %w", err)
	}
	byAddr := make(map[netip.Addr]*api.Peer, len(peers))
	for _, p := range peers {
		if p.GetConf() == nil {
			continue
		}
		if a, err := netip.ParseAddr(p.Conf.NeighborAddress); err == nil {
			byAddr[a.Unmap()] = p
		}
	}
	accepted := r.acceptedCounts(ctx, byAddr)
	r.mu.Lock()
	for addr, n := range r.neighbors {
		ps := PeerState{Neighbor: n, State: StateIdle}
		ps.Password = ""
		if pr, ok := r.problems[addr]; ok {
			ps.LastError, ps.LastErrorTime = pr.msg, pr.at
		}
		if p, ok := byAddr[addr]; ok {
			fillPeerState(&ps, p)
			ps.Accepted = accepted[addr]
		}
		out = append(out, ps)
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Address.Less(out[j].Address) })
	return out, nil
}

// acceptedCounts counts, per peer, the received paths the import filter accepts.
// GoBGP's own "accepted" counter ignores the (global) import policy.
func (r *router) acceptedCounts(ctx context.Context, peers map[netip.Addr]*api.Peer) map[netip.Addr]uint64 {
	r.mu.Lock()
	f := r.filter
	r.mu.Unlock()
	out := make(map[netip.Addr]uint64, len(peers))
	for a, p := range peers {
		if p.GetState().GetSessionState() != api.PeerState_ESTABLISHED {
			continue
		}
		for _, fam := range []*api.Family{familyIPv4, familyIPv6} {
			_ = r.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_ADJ_IN, Name: a.String(), Family: fam, EnableOnlyBinary: true},
				func(d *api.Destination) {
					for _, path := range d.Paths {
						if pfx, ok := pathPrefix(path); ok && f.classify(a, pfx) == "" {
							out[a]++
						}
					}
				})
		}
	}
	return out
}

var sessionStates = map[api.PeerState_SessionState]string{
	api.PeerState_IDLE:        StateIdle,
	api.PeerState_CONNECT:     StateConnect,
	api.PeerState_ACTIVE:      StateActive,
	api.PeerState_OPENSENT:    StateOpenSent,
	api.PeerState_OPENCONFIRM: StateOpenConfirm,
	api.PeerState_ESTABLISHED: StateEstablished,
}

func fillPeerState(ps *PeerState, p *api.Peer) {
	if s, ok := sessionStates[p.GetState().GetSessionState()]; ok {
		ps.State = s
	}
	ts := p.GetTimers().GetState()
	if ps.State == StateEstablished {
		if t := ts.GetUptime(); t != nil {
			ps.Since = t.AsTime()
		}
	} else if t := ts.GetDowntime(); t != nil {
		ps.Since = t.AsTime()
	}
	ps.PeerRestarting = p.GetGracefulRestart().GetPeerRestarting()
	eor := ps.State == StateEstablished
	gr := p.GetGracefulRestart().GetEnabled()
	for _, af := range p.AfiSafis {
		if st := af.GetState(); st != nil {
			ps.Received += st.Received
			adv := st.Advertised
			// GoBGP counts the End-of-RIB marker it sends per family to a graceful-restart
			// peer as an advertised path.
			if gr && adv > 0 {
				adv--
			}
			ps.Advertised += adv
		}
		// A peer that announced graceful restart for a family promises End-of-RIB.
		if mp := af.GetMpGracefulRestart().GetState(); mp != nil && mp.Received && !mp.EndOfRibReceived {
			eor = false
		}
	}
	ps.EndOfRIB = eor
}

func (r *router) Synced(ctx context.Context) (bool, error) {
	peers, err := r.Neighbors(ctx)
	if err != nil {
		return false, err
	}
	for _, p := range peers {
		if !p.EndOfRIB {
			return false, nil
		}
	}
	return true, nil
}
