package agent

import (
	"context"
	"net/netip"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/services"
)

// desired is what this node wants, computed in one place from the Kubernetes objects at the
// start of a pass (Agent.desire). Reconcilers read it and never change it.
type desired struct {
	// cfg is the flags merged with the cluster's BGPConfiguration.
	cfg      Config
	settings config.Settings
	me       self
	// nodes are the cluster's Nodes with their per-node overrides applied.
	nodes []cluster.Node
	// peers are the BGP sessions wanted, by remote address.
	peers map[netip.Addr]peerSpec
	// filter is the import filter those sessions need.
	filter bgp.ImportFilter
	// speaker is the BGP speaker's identity; a change needs a new speaker.
	speaker bgp.Config
	// services are the Service addresses this node advertises; servicesSynced is false
	// until the Services were listed once (nothing is changed before).
	services       []services.Advertisement
	servicesSynced bool
}

// reconciler applies one slice of the desired state to the kernel or the BGP speaker. Each
// keeps what it last applied, so a pass touches only what changed, and each is idempotent,
// so a pass can be re-run after any failure or crash; a failing reconciler does not stop the
// ones after it. They run in the order of Agent.reconcilers, one at a time, on the agent's
// loop, so their state needs no lock; what the local API shows they publish through report
// into the snapshot the loop builds after each pass.
type reconciler interface {
	// name identifies the reconciler in logs and errors.
	name() string
	reconcile(ctx context.Context, d *desired) error
	// report adds what the reconciler last did to the snapshot.
	report(s *snapshot)
}
