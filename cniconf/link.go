package cniconf

import (
	"fmt"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
)

// LinkMTU returns the MTU of the interface holding ifaceAddr, the node's address, so pods get
// the uplink's MTU and their packets leave the node unfragmented.
func LinkMTU(ifaceAddr netip.Addr) (int, error) {
	if !ifaceAddr.IsValid() {
		return 0, fmt.Errorf("cniconf: LinkMTU: invalid address")
	}
	addr := ifaceAddr.Unmap()
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlinksafe.AddrList(nil, family)
	if err != nil {
		return 0, fmt.Errorf("cniconf: listing addresses: %w", err)
	}
	for _, a := range addrs {
		got, ok := netip.AddrFromSlice(a.IP)
		if !ok || got.Unmap() != addr.WithZone("") {
			continue
		}
		link, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			return 0, fmt.Errorf("cniconf: interface %d holding %s: %w", a.LinkIndex, addr, err)
		}
		return link.Attrs().MTU, nil
	}
	return 0, fmt.Errorf("cniconf: no interface holds %s", addr)
}
