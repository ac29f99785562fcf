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
	var podNS ns.NetNS
	if args.Netns != "" {
		if n, err := ns.GetNS(args.Netns); err == nil {
			defer n.Close()
			podNS = n
		}
	}
	l := newPodLink(args, conf.MTU, podNS)
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
