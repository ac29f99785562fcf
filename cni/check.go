package cni

import (
	"fmt"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/podroute/podroute/routes"
)

// cmdCheck verifies that what ADD built is still there and says precisely what is not.
func cmdCheck(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return invalidConfig("prevResult", "missing: CHECK needs the result of ADD")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
	}
	var ips []netip.Addr
	for _, ipc := range prev.IPs {
		ip, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return invalidConfig("prevResult.ips", "invalid address %v", ipc.Address)
		}
		ips = append(ips, ip.Unmap())
	}
	if len(ips) == 0 {
		return invalidConfig("prevResult.ips", "no address to check")
	}
	podNS, err := openNetNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()

	l := newPodLink(args, conf.MTU, podNS)
	host, who, err := l.classify()
	if err != nil {
		return err
	}
	if who != ours {
		return fmt.Errorf("host interface %s: missing for container %s interface %s", l.hostName, args.ContainerID, args.IfName)
	}
	if host.Attrs().Flags&1 == 0 { // net.FlagUp
		return fmt.Errorf("host interface %s: down", l.hostName)
	}
	if g := host.Attrs().Group; g != HostVethGroup {
		return fmt.Errorf("host interface %s: group %d, want %d (NetworkPolicy holds only veths of that group)", l.hostName, g, HostVethGroup)
	}
	for _, ip := range ips {
		if err := checkHostRoute(host, ip); err != nil {
			return err
		}
	}
	if err := checkPod(podNS, args.IfName, ips); err != nil {
		return err
	}
	return addressesFor(conf).Check(args, ips)
}

func checkHostRoute(host netlink.Link, ip netip.Addr) error {
	want := HostRoute(host.Attrs().Index, ip)
	got, err := netlinksafe.RouteListFiltered(familyOf(ip), &netlink.Route{Dst: want.Dst, Table: 0}, netlink.RT_FILTER_DST)
	if err != nil {
		return kernelErr("list routes to %s: %v", want.Dst, err)
	}
	for _, r := range got {
		if r.LinkIndex == want.LinkIndex && r.Protocol == routes.Protocol && r.Gw == nil {
			return nil
		}
	}
	return fmt.Errorf("host route %s dev %s proto %d: missing", want.Dst, host.Attrs().Name, routes.Protocol)
}

func checkPod(podNS ns.NetNS, ifName string, ips []netip.Addr) error {
	return podNS.Do(func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("pod interface %s: missing: %v", ifName, err)
		}
		addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return kernelErr("pod interface %s: list addresses: %v", ifName, err)
		}
		have := map[string]bool{}
		for _, a := range addrs {
			have[a.IPNet.String()] = true
		}
		for _, ip := range ips {
			if p := hostPrefix(ip).String(); !have[p] {
				return fmt.Errorf("pod interface %s: address %s missing", ifName, p)
			}
		}
		v4, v6 := families(ips)
		for _, fam := range []struct {
			on  bool
			gw  netip.Addr
			def string
		}{{v4, GatewayV4, "0.0.0.0/0"}, {v6, GatewayV6, "::/0"}} {
			// The pod's first podroute interface holds the default route (see configurePod).
			if fam.on && !hasDefaultVia(fam.gw) {
				return fmt.Errorf("pod route %s via %s: missing", fam.def, fam.gw)
			}
		}
		return nil
	})
}

func hasDefaultVia(gw netip.Addr) bool {
	for _, r := range defaultRoutes(familyOf(gw)) {
		if r.Gw != nil && r.Gw.Equal(gw.AsSlice()) {
			return true
		}
	}
	return false
}

func familyOf(ip netip.Addr) int {
	if ip.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}
