// Package routes owns podroute's kernel routes: the protocol number that marks them as
// podroute's and the reconciler that keeps the kernel in line with what podroute wants.
package routes

import "github.com/vishvananda/netlink"

// Protocol marks every route podroute installs (the CNI plugin's host routes to pods and the
// agent's BGP-learned and blackhole routes), so podroute can always tell its own routes from
// anyone else's and never touches the others. 201 is not reserved in iproute2's rt_protos.
//
// The two owners tell their routes apart by shape: the plugin's are unicast, scope link, on a
// podroute host veth, with no gateway; the agent's have a gateway, several next hops, or are
// blackholes. The gateway is the decisive test (the kernel reports every IPv6 route as scope
// universe): a protocol-201 route with neither a gateway on every next hop nor the blackhole
// type is never the agent's, so the plugin must not install gateway routes with Protocol in the host namespace.
const Protocol netlink.RouteProtocol = 201
