package cni

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podroute/podroute/routes"
)

// The pod's gateway is link-local and the same in every pod: the host side answers for it, so
// the host side needs no IP address of its own and no subnet is spent on gateways.
var (
	GatewayV4 = netip.MustParseAddr("169.254.1.1")
	// GatewayV6 is the EUI-64 link-local address of HostMAC.
	GatewayV6 = netip.MustParseAddr("fe80::ecee:eeff:feee:eeee")
	// HostMAC is every host veth's MAC address; each veth is point-to-point, so one is enough.
	HostMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}
)

const addrGenModeNone = 1 // IN6_ADDR_GEN_MODE_NONE: no automatic link-local on the host side

// podLink describes one attachment's veth pair.
type podLink struct {
	hostName string
	owner    string // OwnerAlias of the attachment
	ifName   string
	mtu      int
	podNS    ns.NetNS
}

// newPodLink names the attachment's host interface from the pod (CNI_ARGS) and records who
// owns it. podNS may be nil when the netns is gone (DEL).
func newPodLink(args *skel.CmdArgs, mtu int, podNS ns.NetNS) *podLink {
	k8s := parseK8sArgs(args.Args)
	return &podLink{
		hostName: HostVethName(k8s.PodNamespace, k8s.PodName, args.ContainerID, args.IfName),
		owner:    OwnerAlias(args.ContainerID, args.IfName),
		ifName:   args.IfName,
		mtu:      mtu,
		podNS:    podNS,
	}
}

// ownership says how an existing host-side interface relates to an attachment.
type ownership int

const (
	notFound ownership = iota
	ours               // this attachment's, possibly half-made by an ADD that died
	stale              // another sandbox's of the same pod: a leftover
	foreign            // not podroute's
)

// classify decides who owns the host interface named l.hostName. An ADD killed between creating
// the veth and setting its alias leaves an empty alias; the veth is still this attachment's if
// its peer lives in this attachment's netns.
func (l *podLink) classify() (netlink.Link, ownership, error) {
	link, err := netlinksafe.LinkByName(l.hostName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, notFound, nil
		}
		return nil, notFound, kernelErr("look up host interface %s: %v", l.hostName, err)
	}
	alias := link.Attrs().Alias
	switch {
	case alias == l.owner:
		return link, ours, nil
	case IsPodrouteAlias(alias):
		return link, stale, nil
	case alias != "" || link.Type() != "veth":
		return link, foreign, nil
	}
	if l.podNS != nil {
		if id, err := netlink.GetNetNsIdByFd(int(l.podNS.Fd())); err == nil && id >= 0 && id == link.Attrs().NetNsID {
			return link, ours, nil
		}
	}
	return link, stale, nil
}

// create makes the veth pair with the pod end born in the pod's netns (never moved: a move
// costs milliseconds and a window where the pod end sits in the host). The pod end's MAC is
// chosen here so the host's neighbour entry and route can be made without entering the pod.
// The host end is born in HostVethGroup (IFLA_GROUP in the same RTM_NEWLINK), so there is no
// moment at which it exists outside the group the NetworkPolicy hold matches.
func (l *podLink) create(podMAC net.HardwareAddr) (netlink.Link, error) {
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name:         l.hostName,
			MTU:          l.mtu,
			HardwareAddr: HostMAC,
			Group:        HostVethGroup,
		},
		PeerName:         l.ifName,
		PeerNamespace:    netlink.NsFd(int(l.podNS.Fd())),
		PeerMTU:          uint32(l.mtu),
		PeerHardwareAddr: podMAC,
	}
	if err := netlink.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			// The host name was cleared just before, so the pod end's name is the one taken.
			return nil, ifaceTaken("CNI_IFNAME: interface %q already exists in the pod's network namespace", l.ifName)
		}
		return nil, kernelErr("create veth %s (pod end %s): %v", l.hostName, l.ifName, err)
	}
	// The alias cannot ride along in RTM_NEWLINK (the kernel ignores it there), so it is set
	// straight after; classify covers a death in between.
	if err := netlink.LinkSetAlias(veth, l.owner); err != nil {
		return veth, kernelErr("set alias on %s: %v", l.hostName, err)
	}
	link, err := netlinksafe.LinkByName(l.hostName)
	if err != nil {
		return veth, kernelErr("look up new veth %s: %v", l.hostName, err)
	}
	return link, nil
}

// randomMAC returns a locally administered unicast MAC address.
func randomMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("random MAC: %w", err)
	}
	mac[0] = mac[0]&0xfe | 0x02
	return mac, nil
}

func ifaceTaken(format string, a ...any) error {
	return typesError(ErrCodeInterfaceTaken, fmt.Sprintf(format, a...))
}

// configureHost readies the host end: the IPv6 gateway address without DAD (a tentative
// address answers nothing for a second or more), proxy ARP for the IPv4 gateway, then up.
func configureHost(link netlink.Link, v4, v6 bool) error {
	name := link.Attrs().Name
	if v6 {
		if err := netlink.LinkSetIP6AddrGenMode(link, addrGenModeNone); err != nil {
			return kernelErr("%s: disable automatic IPv6 link-local: %v", name, err)
		}
		addr := &netlink.Addr{
			IPNet: &net.IPNet{IP: GatewayV6.AsSlice(), Mask: net.CIDRMask(64, 128)},
			Flags: unix.IFA_F_NODAD,
			Scope: unix.RT_SCOPE_LINK,
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return kernelErr("%s: add gateway %s: %v", name, GatewayV6, err)
		}
	}
	if v4 {
		if err := writeSysctl(filepath.Join("/proc/sys/net/ipv4/conf", name, "proxy_arp"), "1"); err != nil {
			return err
		}
		if err := writeSysctl(filepath.Join("/proc/sys/net/ipv4/neigh", name, "proxy_delay"), "0"); err != nil {
			return err
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return kernelErr("%s: set up: %v", name, err)
	}
	return nil
}

// configurePod sets the pod end's addresses (/32, /128), routes via the link-local gateway and
// permanent neighbour entries for the gateway, so the first packet needs no ARP or NDP. Only
// the pod's first podroute interface gets routes: a second one (another ifname) must not take
// the pod's default route away from the first.
func configurePod(podNS ns.NetNS, ifName string, ips []netip.Addr) error {
	return podNS.Do(func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return kernelErr("pod interface %s: %v", ifName, err)
		}
		idx := link.Attrs().Index
		for _, ip := range ips {
			addr := &netlink.Addr{IPNet: hostPrefix(ip)}
			if ip.Is6() {
				addr.Flags = unix.IFA_F_NODAD
			}
			if err := netlink.AddrReplace(link, addr); err != nil {
				return kernelErr("pod interface %s: add %s: %v", ifName, addr.IPNet, err)
			}
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return kernelErr("pod interface %s: set up: %v", ifName, err)
		}
		v4, v6 := families(ips)
		if v4 {
			if err := permanentNeigh(idx, GatewayV4, HostMAC); err != nil {
				return err
			}
			if !hasDefaultRoute(netlink.FAMILY_V4) {
				if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: hostPrefix(GatewayV4), Scope: netlink.SCOPE_LINK}); err != nil {
					return kernelErr("pod: route to gateway %s: %v", GatewayV4, err)
				}
				if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: defaultV4, Gw: GatewayV4.AsSlice()}); err != nil {
					return kernelErr("pod: default route via %s: %v", GatewayV4, err)
				}
			}
		}
		if v6 {
			if err := permanentNeigh(idx, GatewayV6, HostMAC); err != nil {
				return err
			}
			if !hasDefaultRoute(netlink.FAMILY_V6) {
				if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: defaultV6, Gw: GatewayV6.AsSlice()}); err != nil {
					return kernelErr("pod: default route via %s: %v", GatewayV6, err)
				}
			}
			waitLocalRoutes(ips)
		}
		return nil
	})
}

// hasDefaultRoute tells whether the pod already has a default route of the family: the pod's
// other podroute interface keeps its own.
func hasDefaultRoute(family int) bool { return len(defaultRoutes(family)) > 0 }

// defaultRoutes lists the current netns's default routes of a family.
func defaultRoutes(family int) []netlink.Route {
	rs, err := netlinksafe.RouteList(nil, family)
	if err != nil {
		return nil
	}
	var out []netlink.Route
	for _, r := range rs {
		if r.Dst == nil {
			out = append(out, r)
		} else if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			out = append(out, r)
		}
	}
	return out
}

// localRouteWait bounds the wait for the kernel to make IPv6 addresses usable.
const localRouteWait = 10 * time.Second

// waitLocalRoutes waits until each IPv6 address has its local route. The kernel adds it from
// its address-configuration work queue, even for NODAD addresses, and under load that lags:
// until then packets to the pod are dropped. A pod whose route is still late after the bound
// is returned anyway; it becomes reachable moments later.
func waitLocalRoutes(ips []netip.Addr) {
	deadline := time.Now().Add(localRouteWait)
	pause := 100 * time.Microsecond
	for _, ip := range ips {
		if !ip.Is6() {
			continue
		}
		filter := &netlink.Route{Table: unix.RT_TABLE_LOCAL, Dst: hostPrefix(ip)}
		for {
			rs, err := netlinksafe.RouteListFiltered(netlink.FAMILY_V6, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
			if err == nil && len(rs) > 0 {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "podroute: local route for %s not ready after %s; continuing\n", ip, localRouteWait)
				return
			}
			time.Sleep(pause)
			pause = min(2*pause, 10*time.Millisecond)
		}
	}
}

// routeToPod installs the host's route to each pod address, marked as podroute's, and a
// permanent neighbour entry for it. RouteReplace also takes over a route a dead sandbox left
// for a reused address.
func routeToPod(host netlink.Link, ips []netip.Addr, podMAC net.HardwareAddr) error {
	idx := host.Attrs().Index
	for _, ip := range ips {
		if err := permanentNeigh(idx, ip, podMAC); err != nil {
			return err
		}
		r := HostRoute(idx, ip)
		if err := netlink.RouteReplace(r); err != nil {
			return kernelErr("host route %s dev %s: %v", r.Dst, host.Attrs().Name, err)
		}
	}
	return nil
}

// HostRoute is the host's route to one pod address.
func HostRoute(linkIndex int, ip netip.Addr) *netlink.Route {
	return &netlink.Route{
		LinkIndex: linkIndex,
		Dst:       hostPrefix(ip),
		Scope:     netlink.SCOPE_LINK,
		Protocol:  routes.Protocol,
	}
}

func permanentNeigh(linkIndex int, ip netip.Addr, mac net.HardwareAddr) error {
	family := netlink.FAMILY_V4
	if ip.Is6() {
		family = netlink.FAMILY_V6
	}
	n := &netlink.Neigh{LinkIndex: linkIndex, Family: family, State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac}
	if err := netlink.NeighSet(n); err != nil {
		return kernelErr("neighbour %s lladdr %s: %v", ip, mac, err)
	}
	return nil
}

// enableForwarding turns on the forwarding the routed path needs, writing only when it is off.
func enableForwarding(v4, v6 bool) error {
	if v4 {
		if err := writeSysctl("/proc/sys/net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
	}
	if v6 {
		if err := writeSysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1"); err != nil {
			return err
		}
	}
	return nil
}

func writeSysctl(path, value string) error {
	if cur, err := os.ReadFile(path); err == nil && len(cur) > 0 && string(cur[:len(cur)-1]) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return kernelErr("sysctl %s=%s: %v", path, value, err)
	}
	return nil
}

var (
	defaultV4 = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	defaultV6 = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
)

func hostPrefix(ip netip.Addr) *net.IPNet {
	return &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}
}

func families(ips []netip.Addr) (v4, v6 bool) {
	for _, ip := range ips {
		if ip.Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	return v4, v6
}
