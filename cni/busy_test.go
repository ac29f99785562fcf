package cni

import (
	"net/netip"
	"os"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/podroute/podroute/test/cniutil"
)

// TestDumpsOnABusyNode: GC and CHECK list links, addresses and routes with dumps the kernel
// interrupts when a table changes meanwhile. On a busy node they retry, instead of failing
// with code 102 ("dump interrupted").
func TestDumpsOnABusyNode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Close(); _ = testutils.UnmountNS(netns) })

	// A pod interface as ADD leaves it, for CHECK to look at; this namespace is both the
	// node (GC) and the pod (CHECK).
	ips := []netip.Addr{netip.MustParseAddr("10.244.1.5")}
	err = netns.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0host"})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := configurePod(netns, "eth0", ips); err != nil {
		t.Fatal(err)
	}
	if err := checkPod(netns, "eth0", ips); err != nil {
		t.Fatalf("CHECK of the pod interface on a quiet node: %v", err)
	}

	cniutil.Busy(t, netns)

	gc := &skel.CmdArgs{StdinData: []byte(`{"cniVersion":"1.1.0","name":"podnet","type":"podroute",` +
		`"ipam":{"type":"podroute-ipam","ranges":[[{"subnet":"10.244.1.0/24"}]],"dataDir":"` + t.TempDir() + `"},` +
		`"cni.dev/valid-attachments":[]}`)}
	for i := range 50 {
		if err := netns.Do(func(ns.NetNS) error { return cmdGC(gc) }); err != nil {
			t.Fatalf("GC #%d on a busy node: %v", i+1, err)
		}
		if err := checkPod(netns, "eth0", ips); err != nil {
			t.Fatalf("CHECK #%d on a busy node: %v", i+1, err)
		}
	}
}
