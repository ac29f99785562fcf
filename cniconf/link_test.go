package cniconf

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
)

func TestLinkMTU(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Close(); _ = testutils.UnmountNS(netns) })

	err = netns.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink0", MTU: 1400}, PeerName: "peer0"}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		link, err := netlink.LinkByName("uplink0")
		if err != nil {
			return err
		}
		for _, a := range []string{"192.0.2.10/24", "2001:db8::10/64"} {
			addr, err := netlink.ParseAddr(a)
			if err != nil {
				return err
			}
			addr.Flags = 0x02 // IFA_F_NODAD: usable at once
			if err := netlink.AddrAdd(link, addr); err != nil {
				return err
			}
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return err
		}
		for _, a := range []string{"192.0.2.10", "2001:db8::10", "::ffff:192.0.2.10"} {
			mtu, err := LinkMTU(netip.MustParseAddr(a))
			if err != nil {
				t.Errorf("LinkMTU(%s): %v", a, err)
			} else if mtu != 1400 {
				t.Errorf("LinkMTU(%s) = %d, want 1400", a, mtu)
			}
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		if mtu, err := LinkMTU(netip.MustParseAddr("127.0.0.1")); err != nil || mtu != 65536 {
			t.Errorf("LinkMTU(127.0.0.1) = %d, %v", mtu, err)
		}
		_, err = LinkMTU(netip.MustParseAddr("192.0.2.11"))
		if err == nil || !strings.Contains(err.Error(), "no interface holds 192.0.2.11") {
			t.Errorf("unheld address: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
