package cni

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// cmdDel removes the attachment's veth (its routes and neighbour entries go with it) and
// releases its addresses. Everything already gone is success: a runtime retries DEL and may
// call it for a pod whose netns, veth or reservations no longer exist.
func cmdDel(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	k8s := parseK8sArgs(args.Args)
	l := &podLink{
		hostName: HostVethName(k8s.PodNamespace, k8s.PodName, args.ContainerID, args.IfName),
		owner:    OwnerAlias(args.ContainerID, args.IfName),
		ifName:   args.IfName,
	}
	if args.Netns != "" {
		if podNS, err := ns.GetNS(args.Netns); err == nil {
			defer podNS.Close()
			l.podNS = podNS
		}
	}
	link, who, err := l.classify()
	if err != nil {
		return err
	}
	if who == ours {
		if err := netlink.LinkDel(link); err != nil && !isGone(err) {
			return kernelErr("delete host interface %s: %v", l.hostName, err)
		}
	}
	return addressesFor(conf).Del(args)
}
