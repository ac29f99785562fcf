package cni

import (
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/podroute/podroute/routes"
)

// cmdGC removes every host veth, host route and address reservation whose attachment is not in
// cni.dev/valid-attachments: what a runtime or a crash left behind.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	keep := make(map[string]bool, len(conf.ValidAttachments))
	for _, v := range conf.ValidAttachments {
		keep[OwnerAlias(v.ContainerID, v.IfName)] = true
	}
	links, err := netlinksafe.LinkList()
	if err != nil {
		return kernelErr("list interfaces: %v", err)
	}
	kept := map[int]bool{}
	var firstErr error
	for _, link := range links {
		a := link.Attrs()
		if link.Type() != "veth" || !strings.HasPrefix(a.Name, HostVethPrefix) || !IsPodrouteAlias(a.Alias) {
			continue
		}
		if keep[a.Alias] {
			kept[a.Index] = true
			continue
		}
		if err := netlink.LinkDel(link); err != nil && firstErr == nil && !isGone(err) {
			firstErr = kernelErr("delete host interface %s: %v", a.Name, err)
		}
	}
	if err := sweepPodRoutes(links, kept); err != nil && firstErr == nil {
		firstErr = err
	}
	if err := addressesFor(conf).GC(conf.ValidAttachments); err != nil && firstErr == nil {
		firstErr = err
	}
	return firstErr
}

// sweepPodRoutes deletes podroute host routes to pods on podroute veths that are not kept.
// Routes die with their interface, so this only catches what something else moved there; the
// agent's routes (gateways, multipath, blackholes) are never touched.
func sweepPodRoutes(links []netlink.Link, kept map[int]bool) error {
	podroute := map[int]bool{}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, HostVethPrefix) && l.Type() == "veth" {
			podroute[l.Attrs().Index] = true
		}
	}
	rs, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: routes.Protocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return kernelErr("list podroute routes: %v", err)
	}
	for i := range rs {
		r := &rs[i]
		if r.Gw != nil || len(r.MultiPath) > 0 || r.Type != 1 /* RTN_UNICAST */ || !podroute[r.LinkIndex] || kept[r.LinkIndex] {
			continue
		}
		if err := netlink.RouteDel(routes.DeleteKey(r)); err != nil && !isGone(err) {
			return kernelErr("delete host route %s: %v", r.Dst, err)
		}
	}
	return nil
}
