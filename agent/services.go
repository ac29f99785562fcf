package agent

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/services"
)

// serviceSource is the cluster's Services and EndpointSlices (services.Watcher).
type serviceSource interface {
	Run(ctx context.Context)
	Synced() bool
	Changed() <-chan struct{}
	Generation() uint64
	Snapshot() services.Snapshot
}

// serviceDecision caches services.Desired: it is recomputed only when one of its inputs
// changed, not on every BGP or kernel event that starts a pass.
type serviceDecision struct {
	key      string
	routes   []services.Advertisement
	problems []string
	refusals []services.Refusal
}

// desireServices decides which Service addresses this node advertises. synced is false until
// the Services and EndpointSlices were listed once: until then nothing is advertised or
// withdrawn, so a restarted agent never withdraws, for want of a list, what its peers still
// hold from its previous run.
func (a *Agent) desireServices(cfg config.Configuration, nodes []cluster.Node, me self) (routes []services.Advertisement, problems []string, synced bool) {
	if a.services == nil || !a.services.Synced() {
		return nil, nil, false
	}
	serving := a.kubeProxyServes()
	excluded, found := false, false
	for i := range nodes {
		if nodes[i].Name == a.cfg.NodeName {
			_, excluded = nodes[i].Labels[services.LabelExcludeFromLB]
			found = true
		}
	}
	key := fmt.Sprint(a.services.Generation(), serving, excluded, found,
		cfg.ServiceClusterIPs, cfg.ServiceExternalIPs, cfg.ServiceLoadBalancerIPs, cfg.Advertisements)
	if a.svcDecision.key != key {
		// The generation is read before the snapshot: a change in between makes the next
		// pass decide again rather than keep a decision older than its key says.
		snap := a.services.Snapshot()
		r, p := services.Desired(services.Input{
			Services:  snap.Services,
			Endpoints: snap.Endpoints,
			Nodes:     nodes,
			NodeName:  a.cfg.NodeName,
			KubeProxy: serving,
			Config:    cfg,
		})
		a.svcDecision = serviceDecision{key: key, routes: r, problems: p, refusals: services.Refusals(snap.Services, cfg)}
	}
	if a.svcEvents != nil && a.writesStatus() {
		a.svcEvents.report(a.svcDecision.refusals)
	}
	routes = a.svcDecision.routes
	if a.local != nil {
		routes = a.local.filter(routes, me)
	}
	return routes, a.svcDecision.problems, true
}

// writesStatus tells whether this agent is the one writing the status of cluster-wide
// objects (and Events about them): the elected one, or every agent without election.
func (a *Agent) writesStatus() bool {
	return a.status != nil && (a.election == nil || a.election.Leading())
}

// Reasons of the Events on Services.
const (
	ReasonNotAdvertised     = "NotAdvertised"
	ReasonInvalidAnnotation = "InvalidAnnotation"
)

// serviceEvents tells a Service's owner, as a Warning Event on the Service, what of it is not
// advertised and why (services.Refusals): once per refusal while it lasts, said again if it
// comes back after clearing.
type serviceEvents struct {
	recorder record.EventRecorder
	said     map[string]bool
}

func (e *serviceEvents) report(rs []services.Refusal) {
	now := make(map[string]bool, len(rs))
	for _, r := range rs {
		k := r.Key()
		now[k] = true
		if e.said[k] {
			continue
		}
		reason := ReasonNotAdvertised
		if strings.HasPrefix(r.Field, "metadata.annotations") {
			reason = ReasonInvalidAnnotation
		}
		ref := &corev1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: r.Namespace, Name: r.Name, UID: r.UID}
		e.recorder.Event(ref, corev1.EventTypeWarning, reason, r.Message)
	}
	e.said = now
}

// kubeProxyServes tells whether this node's kube-proxy serves Service addresses: it answered
// with a mode (any mode captures LoadBalancer and external IPs). With the check turned off
// (no --kube-proxy-metrics-address) the operator vouches for it.
func (a *Agent) kubeProxyServes() bool {
	if a.cfg.KubeProxyMetricsAddress == "" {
		return true
	}
	return a.kubeProxy.Load().Mode != ""
}
