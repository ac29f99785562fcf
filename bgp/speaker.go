// The speaker's lifecycle: New, Start and Stop of the embedded GoBGP server, its event
// watchers and Subscribe.

package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/config/oc"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"

	"github.com/podroute/podroute/bfd"
)

var startMu sync.Mutex

type lifecycle int

const (
	stateNew lifecycle = iota
	stateRunning
	stateStopped
)

type advertisement struct {
	attrs Attributes
	path  *apiutil.Path
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
	// bfd runs the neighbours' BFD sessions (not GoBGP's BFD: see bfd.go).
	bfd *bfd.Server
	// filterResets counts the neighbours an import filter update re-judged (soft reset in).
	filterResets atomic.Uint64

	mu         sync.Mutex
	state      lifecycle
	done       chan struct{}
	stopWatch  context.CancelFunc
	neighbors  map[netip.Addr]Neighbor
	problems   map[netip.Addr]peerProblem
	advertised map[netip.Prefix]advertisement
	// externalOnly lists the prefixes the export policy keeps from internal neighbours,
	// IPv4 then IPv6. It changes before an external-only path is added and after it is
	// deleted, so it can hold a prefix not (or not yet) advertised.
	externalOnly [2]map[netip.Prefix]struct{}
	// prepend maps each prefix whose path the export policy prepends towards external
	// neighbours to its count (1..MaxASPathPrepend), IPv4 then IPv6; prependSizes counts
	// the prefixes of each family and count. Like externalOnly it changes before the path
	// is added and after it is deleted.
	prepend         [2]map[netip.Prefix]uint8
	prependSizes    [2][MaxASPathPrepend + 1]int
	filter          ImportFilter
	subs            map[chan struct{}]struct{}
	restartingUntil time.Time
	// watching holds the peers watchRestart follows.
	watching map[netip.Addr]bool
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
		cfg:          cfg,
		log:          l,
		refusals:     newRefusals(l),
		done:         make(chan struct{}),
		neighbors:    map[netip.Addr]Neighbor{},
		problems:     map[netip.Addr]peerProblem{},
		advertised:   map[netip.Prefix]advertisement{},
		externalOnly: [2]map[netip.Prefix]struct{}{{}, {}},
		prepend:      [2]map[netip.Prefix]uint8{{}, {}},
		filter:       f,
		subs:         map[chan struct{}]struct{}{},
		watching:     map[netip.Addr]bool{},
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
	// GoBGP logs through slog; the handler in between notes each peer's last problem.
	// A nil level variable leaves levels to podroute's handler.
	gl := slog.New(newPeerProblemHandler(r.log.Handler(), r.notePeerProblem))
	srv := server.NewBgpServer(server.LoggerOption(gl, nil))
	// Serve runs GoBGP's event loop until StopBgp; every API call below waits on it.
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
	r.bfd = r.newBFD()
	fail := func(err error) error {
		r.bfd.Close(false)
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
	err = srv.WatchEvent(wctx, server.WatchEventMessageCallbacks{
		OnBestPath: func([]*apiutil.Path, time.Time) { r.notify() },
		OnPathEor:  func(*apiutil.Path, time.Time) { r.notify() },
		OnPeerUpdate: func(ev *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
			if ev.Type == apiutil.PEER_EVENT_STATE && ev.Peer.State.SessionState == bgp.BGP_FSM_ESTABLISHED {
				go r.startBFD(ev.Peer.State.NeighborAddress.Unmap())
			}
			r.notify()
		},
	}, server.WatchBestPath(false), server.WatchEor(false), server.WatchPeer())
	if err == nil {
		// Paths as received, before import policy, and the peers' own withdrawals.
		err = srv.WatchEvent(wctx, server.WatchEventMessageCallbacks{OnPathUpdate: r.onAdjIn}, server.WatchUpdate(false, "", ""))
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
		// StopBgp with AllowGracefulRestart closes graceful-restart sessions without a
		// NOTIFICATION, but it deconfigures the peers one at a time, and each
		// deconfiguration drops that peer's routes and sends the withdrawals to the peers
		// still connected: a route reflector would withdraw the reflected routes from its
		// clients before their own sessions close. Cutting every session first leaves
		// nothing to send them on. Peers redial only after their connect-retry delay (at
		// least a second), long after StopBgp has closed the listeners.
		n, aerr := abortSessions(keys)
		if aerr != nil {
			err = fmt.Errorf("bgp: graceful stop: abort sessions: %w", aerr)
		}
		r.log.Info("bgp: stopping for restart, sessions cut without notification", "sessions", n)
		// Then BFD, with AdminDown: a deliberate stop, which peers do not take for a
		// failure (see adminDownDelay).
		time.Sleep(adminDownDelay)
		r.bfd.Close(true)
	} else {
		r.log.Info("bgp: stopping, peers will withdraw our routes")
	}
	// StopBgp returns once every peer is deconfigured and GoBGP's Serve loop has ended.
	// AllowGracefulRestart also keeps the CEASE from a session accepted after the cut.
	// GoBGP's own BFD loop (unused) ends only in BgpServer.Stop, which would run StopBgp
	// again; it stays parked, with no socket.
	if serr := r.srv.StopBgp(context.Background(), &api.StopBgpRequest{AllowGracefulRestart: graceful}); serr != nil {
		err = errors.Join(err, fmt.Errorf("bgp: stop GoBGP: %w", serr))
	}
	r.bfd.Close(true) // after the CEASEs of a shutdown; a no-op after a restart's stop
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
func (r *router) onAdjIn(paths []*apiutil.Path, _ time.Time) {
	r.mu.Lock()
	f := r.filter
	r.mu.Unlock()
	for _, p := range paths {
		prefix, ok := pathPrefix(p)
		peer := p.PeerAddress.Unmap()
		if !ok || !peer.IsValid() {
			continue
		}
		if p.Withdrawal {
			// The peer no longer announces it: a refusal of it is over, and is logged
			// again if the peer announces it again.
			r.refusals.forget(prefix, peer)
			continue
		}
		if reason := f.classify(peer, prefix); reason != "" {
			r.refusals.record(prefix, peer, reason)
		}
	}
}

func (r *router) notePeerProblem(key, msg string, fields map[string]any) {
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
