package agent

import (
	"net/netip"
	"time"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/services"
)

// snapshot is what the local API shows: the agent's state after its last pass, built by the
// loop from every reconciler's report and published whole (Agent.snap). It is never changed
// once published, so the API reads it without taking the loop's time or lock.
type snapshot struct {
	Me    self
	MeErr error
	// Problems are configuration problems of the last pass (invalid objects, overrides,
	// peers left out), for the API.
	Problems []string

	CNIConfig  string
	CNIWritten bool

	// router is the running speaker (nil before it starts), for live reads of sessions and
	// routes; bgp.Router is safe for concurrent use.
	router     bgp.Router
	Peers      map[netip.Addr]peerSpec
	Advertised []netip.Prefix
	// ServiceRoutes are the Service addresses advertised, by prefix.
	ServiceRoutes []services.Advertisement

	Installed     map[netip.Prefix]bool
	InstallErrors map[netip.Prefix]string
	Learned       int

	LastRun time.Time
	LastErr error
}
