package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// openNetNS opens CNI_NETNS, naming the variable when it is unusable.
func openNetNS(path string) (ns.NetNS, error) {
	podNS, err := ns.GetNS(path)
	if err != nil {
		var notExist ns.NSPathNotExistErr
		if errors.As(err, &notExist) {
			return nil, invalidEnv("CNI_NETNS", "%s does not exist", path)
		}
		return nil, invalidEnv("CNI_NETNS", "%s is not a network namespace: %v", path, err)
	}
	return podNS, nil
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	podNS, err := openNetNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()

	l := newPodLink(args, conf.MTU, podNS)
	if err := clearHostSide(l); err != nil {
		return err
	}
	podMAC, err := randomMAC()
	if err != nil {
		return err
	}

	addrs := addressesFor(conf)
	ips, err := addrs.Add(args)
	if err != nil {
		return err
	}
	var host netlink.Link
	// Anything that fails from here on undoes all of it: a runtime may never call DEL for an
	// ADD that failed, so nothing half-made may stay behind.
	done := false
	defer func() {
		if done {
			return
		}
		if host != nil {
			if err := netlink.LinkDel(host); err != nil && !isGone(err) {
				fmt.Fprintf(os.Stderr, "podroute: rollback: delete %s: %v\n", l.hostName, err)
			}
		}
		if err := addrs.Del(args); err != nil {
			fmt.Fprintf(os.Stderr, "podroute: rollback: release addresses of %s: %v\n", args.ContainerID, err)
		}
	}()

	v4, v6 := families(ips)
	if v6 && conf.MTU < minMTUv6 {
		return invalidConfig("mtu", "%d is below %d, the minimum for the IPv6 address IPAM returned", conf.MTU, minMTUv6)
	}
	host, err = l.create(podMAC)
	if err != nil {
		return err
	}
	if err := enableForwarding(v4, v6); err != nil {
		return err
	}
	if err := configureHost(host, v4, v6); err != nil {
		return err
	}
	if err := routeToPod(host, ips, podMAC); err != nil {
		return err
	}
	if err := configurePod(podNS, args.IfName, ips); err != nil {
		return err
	}
	done = true
	return types.PrintResult(buildResult(conf, host, args, podMAC, ips), conf.CNIVersion)
}

// clearHostSide removes what an earlier ADD of this attachment, or an older sandbox of the
// same pod, left on the host under the same interface name, so ADD is idempotent and a pod
// restart never trips over its own past.
func clearHostSide(l *podLink) error {
	link, who, err := l.classify()
	if err != nil {
		return err
	}
	switch who {
	case notFound:
		return nil
	case foreign:
		return ifaceTaken("host interface %s exists and is not podroute's (alias %q)", l.hostName, link.Attrs().Alias)
	}
	if err := netlink.LinkDel(link); err != nil {
		return kernelErr("delete leftover host interface %s: %v", l.hostName, err)
	}
	return nil
}

func buildResult(conf *Config, host netlink.Link, args *skel.CmdArgs, podMAC net.HardwareAddr, ips []netip.Addr) *current.Result {
	podIdx := 1
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: host.Attrs().Name, Mac: HostMAC.String()},
			{Name: args.IfName, Mac: podMAC.String(), Sandbox: args.Netns},
		},
		DNS: conf.DNS,
	}
	for _, ip := range ips {
		gw, def := GatewayV4, defaultV4
		if ip.Is6() {
			gw, def = GatewayV6, defaultV6
		}
		res.IPs = append(res.IPs, &current.IPConfig{Interface: &podIdx, Address: *hostPrefix(ip), Gateway: gw.AsSlice()})
		res.Routes = append(res.Routes, &types.Route{Dst: *def, GW: gw.AsSlice()})
	}
	return res
}
