package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/podroute/podroute/agentapi"
	"github.com/podroute/podroute/bgp"
)

// Version is set at build time.
var Version = "dev"

var _ agentapi.Source = (*Agent)(nil)

// peerMetricsEvery bounds how often the peer gauges are refreshed.
const peerMetricsEvery = 5 * time.Second

var errNoSpeaker = errors.New("BGP speaker not started yet")

// Status implements agentapi.Source.
func (a *Agent) Status() agentapi.Status {
	watchOK, watchErr, _ := a.nodes.Health()
	snap := a.snap.Load()
	kp := a.kubeProxy.Load()
	s := agentapi.Status{
		Node:             a.cfg.NodeName,
		ASN:              snap.Me.ASN,
		CNIConfig:        snap.CNIConfig,
		CNIConfigWritten: snap.CNIWritten,
		APIWatchHealthy:  watchOK,
		BGPStarted:       snap.router != nil,
		LastReconcile:    snap.LastRun,
		Version:          Version,
		Routes: agentapi.Counts{
			Learned:    snap.Learned,
			Installed:  len(snap.Installed),
			Advertised: len(snap.Advertised),
			Failed:     len(snap.InstallErrors),
		},
	}
	if snap.Me.RouterID.IsValid() {
		s.RouterID = snap.Me.RouterID.String()
	}
	if !watchOK {
		s.APIWatchError = watchErr
	}
	for _, p := range snap.Me.PodCIDRs {
		s.PodCIDRs = append(s.PodCIDRs, p.String())
	}
	if snap.MeErr != nil {
		s.NodeProblem = snap.MeErr.Error()
	}
	if snap.LastErr != nil {
		s.LastReconcileErr = snap.LastErr.Error()
	}
	s.Problems = slices.Clone(snap.Problems)
	if kp.Problem != "" {
		s.Problems = append(s.Problems, kp.Problem)
	}
	s.KubeProxyMode = kp.Mode
	if a.policy != nil {
		var problems []string
		s.NetworkPolicy, problems = a.policy.report()
		s.Problems = append(s.Problems, problems...)
	}
	s.StatusWriter = a.status != nil && (a.election == nil || a.election.Leading())
	if snap.router != nil {
		s.Routes.Refused = len(snap.router.Refusals())
	}
	s.NotReadyReasons = a.notReady(snap, watchOK)
	s.Ready = len(s.NotReadyReasons) == 0
	return s
}

func (a *Agent) notReady(snap *snapshot, watchOK bool) []string {
	var why []string
	if !watchOK {
		why = append(why, "Kubernetes API watch not healthy")
	}
	if len(snap.Me.PodCIDRs) == 0 {
		reason := "no pod CIDR for this node yet"
		if snap.MeErr != nil {
			reason = snap.MeErr.Error()
		}
		why = append(why, reason)
	}
	if snap.router == nil {
		why = append(why, "BGP speaker not started")
	}
	if a.cfg.InstallCNI && !snap.CNIWritten {
		why = append(why, "CNI config not written")
	}
	return why
}

// Neighbors implements agentapi.Source.
func (a *Agent) Neighbors(advertised bool) ([]agentapi.Neighbor, error) {
	snap := a.snap.Load()
	r, peers := snap.router, snap.Peers
	nodeOf := make(map[netip.Addr]string, len(peers))
	for addr, p := range peers {
		nodeOf[addr] = p.Node
	}
	if r == nil {
		return nil, errNoSpeaker
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	states, err := r.Neighbors(ctx, advertised)
	if err != nil {
		return nil, err
	}
	out := make([]agentapi.Neighbor, 0, len(states))
	for _, ps := range states {
		n := agentapi.Neighbor{
			Address:    ps.Address.String(),
			ASN:        ps.ASN,
			Kind:       ps.Kind,
			Node:       nodeOf[ps.Address],
			State:      ps.State,
			Since:      ps.Since,
			Received:   ps.Received,
			Accepted:   ps.Accepted,
			Restarting: ps.PeerRestarting,
			BFD:        ps.BFDState,
		}
		if advertised {
			n.Advertised = &ps.Advertised
		}
		if ps.State != bgp.StateEstablished {
			n.LastError = ps.LastError
			if n.LastError == "" {
				n.LastError = silentPeerHint(peers[ps.Address].Neighbor)
			}
		}
		out = append(out, n)
	}
	return out, nil
}

// silentPeerHint explains a session that never came up with no error from the speaker: the
// peer never answered. With TCP MD5 that is also what a wrong password looks like, since the
// kernel drops unsigned or mis-signed segments without a word.
func silentPeerHint(n bgp.Neighbor) string {
	if n.Password != "" {
		return "no answer from the peer: is it up and configured for us? a TCP MD5 password mismatch looks the same (segments are dropped silently): check the password on both sides"
	}
	return "no answer from the peer: is it up, configured for us, and reachable on TCP port 179?"
}

// Routes implements agentapi.Source.
func (a *Agent) Routes() (agentapi.Routes, error) {
	snap := a.snap.Load()
	r := snap.router
	installed, failed := snap.Installed, snap.InstallErrors
	var adv []string
	for _, p := range snap.Advertised {
		adv = append(adv, p.String())
	}
	out := agentapi.Routes{Advertised: adv}
	for _, sr := range snap.ServiceRoutes {
		r := agentapi.ServiceRoute{Prefix: sr.Prefix.String(), Class: string(sr.Class), Services: slices.Clone(sr.Services), ASPathPrepend: sr.ASPathPrepend}
		for _, c := range sr.Communities {
			r.Communities = append(r.Communities, c.String())
		}
		out.Services = append(out.Services, r)
	}
	if r == nil {
		return out, errNoSpeaker
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	learned, err := r.Routes(ctx)
	if err != nil {
		return out, err
	}
	for _, lr := range learned {
		ar := agentapi.Route{Prefix: lr.Prefix.String(), Installed: installed[lr.Prefix], InstallError: failed[lr.Prefix]}
		for _, nh := range lr.NextHops {
			ar.NextHops = append(ar.NextHops, nh.String())
		}
		for _, p := range lr.Paths {
			if p.Best {
				ar.ASPath = p.ASPath
				ar.SourcePeer = p.SourcePeer.String()
			}
		}
		out.Routes = append(out.Routes, ar)
	}
	for _, f := range r.Refusals() {
		out.Refused = append(out.Refused, agentapi.Refusal{
			Prefix: f.Prefix.String(), Peer: f.Peer.String(), Reason: f.Reason,
			Count: f.Count, FirstSeen: f.FirstSeen, LastSeen: f.LastSeen,
		})
	}
	return out, nil
}

// Mount adds /metrics, /healthz and /readyz to the API server's mux.
func (a *Agent) Mount(handle func(pattern string, h http.Handler)) {
	handle("GET /metrics", promhttp.HandlerFor(a.metrics.Registry, promhttp.HandlerOpts{}))
	handle("GET /healthz", http.HandlerFunc(a.healthz))
	handle("GET /readyz", http.HandlerFunc(a.readyz))
}

// healthz fails when the reconcile loop has stopped turning: a wedged agent must be restarted.
func (a *Agent) healthz(w http.ResponseWriter, _ *http.Request) {
	last := a.snap.Load().LastRun
	limit := 3*a.cfg.ResyncInterval + 30*time.Second
	if !last.IsZero() && time.Since(last) > limit {
		writeProbe(w, http.StatusServiceUnavailable, []string{"no reconcile for " + time.Since(last).Round(time.Second).String()})
		return
	}
	writeProbe(w, http.StatusOK, nil)
}

func (a *Agent) readyz(w http.ResponseWriter, _ *http.Request) {
	s := a.Status()
	code := http.StatusOK
	if !s.Ready {
		code = http.StatusServiceUnavailable
	}
	writeProbe(w, code, s.NotReadyReasons)
}

func writeProbe(w http.ResponseWriter, code int, reasons []string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	status := "ok"
	if code != http.StatusOK {
		status = "not ok: " + strings.Join(reasons, "; ")
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"status": status, "reasons": reasons})
}

// updatePeerMetrics refreshes the peer and refusal gauges after each reconcile.
func (a *Agent) updatePeerMetrics(ctx context.Context, r bgp.Router) {
	if r == nil {
		return
	}
	// The gauges want the sessions' states only, not the prefix counts of Neighbors, which
	// cost the speaker a walk of every route per peer; and a pass comes with every Node
	// event, many a second on a route reflector while nodes join.
	if time.Since(a.metricsAt) < peerMetricsEvery {
		return
	}
	a.metricsAt = time.Now()
	states, err := r.Sessions(ctx)
	if err != nil {
		return
	}
	a.metrics.peers.Reset()
	for _, s := range states {
		a.metrics.peers.WithLabelValues(s.State).Inc()
	}
	a.metrics.setPeerBFD(states)
	refusals := r.Refusals()
	var total uint64
	for _, f := range refusals {
		total += f.Count
	}
	a.metrics.refused.Set(float64(len(refusals)))
	a.metrics.refusedTotal.Set(float64(total))
}
