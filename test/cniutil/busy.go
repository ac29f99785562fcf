package cniutil

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// BusyPrefix starts the names of the links Busy makes; none is podroute's.
const BusyPrefix = "bz"

// Busy makes netns look, to netlink dumps, like a busy node: it fills it with links and
// addresses, so a dump of either takes several messages, then adds and removes a veth pair
// and an address in a loop until the test ends. A dump that spans such a change comes back
// flagged NLM_F_DUMP_INTR, which vishvananda/netlink returns as netlink.ErrDumpInterrupted
// (with data it cannot vouch for). Busy returns once plain dumps of links and of addresses
// in netns have been seen interrupted, and skips the test if they are not within a few
// hundred tries (a kernel that never flags these dumps).
func Busy(tb testing.TB, netns ns.NetNS) {
	tb.Helper()
	h, err := netlink.NewHandleAt(nsHandle(netns), unix.NETLINK_ROUTE)
	if err != nil {
		tb.Fatalf("busy: netlink handle: %v", err)
	}
	tb.Cleanup(h.Close)
	const pairs, addrs = 60, 300
	for i := range pairs {
		la := netlink.LinkAttrs{Name: fmt.Sprintf("%s%d", BusyPrefix, i)}
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: fmt.Sprintf("%s%dp", BusyPrefix, i)}); err != nil {
			tb.Fatalf("busy: add veth %s: %v", la.Name, err)
		}
	}
	holder, err := h.LinkByName(BusyPrefix + "0")
	if err != nil {
		tb.Fatalf("busy: %v", err)
	}
	addr := func(i int) *netlink.Addr {
		return &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(198, 18, byte(i>>8), byte(i)), Mask: net.CIDRMask(32, 32)}}
	}
	for i := range addrs {
		if err := h.AddrAdd(holder, addr(i)); err != nil {
			tb.Fatalf("busy: add address: %v", err)
		}
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		churn := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: BusyPrefix + "churn"}, PeerName: BusyPrefix + "churnp"}
		a := addr(addrs)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%4 == 0 {
				_ = h.LinkAdd(churn)
				_ = h.LinkDel(churn)
			}
			_ = h.AddrAdd(holder, a)
			_ = h.AddrDel(holder, a)
		}
	})
	tb.Cleanup(func() {
		close(stop)
		wg.Wait()
	})

	var linksCut, addrsCut bool
	err = netns.Do(func(ns.NetNS) error {
		for range 500 {
			if _, err := netlink.LinkList(); errors.Is(err, netlink.ErrDumpInterrupted) {
				linksCut = true
			}
			if _, err := netlink.AddrList(nil, netlink.FAMILY_ALL); errors.Is(err, netlink.ErrDumpInterrupted) {
				addrsCut = true
			}
			if linksCut && addrsCut {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("busy: %v", err)
	}
	if !linksCut || !addrsCut {
		tb.Skipf("busy: this kernel did not interrupt a dump while the tables changed (links: %v, addresses: %v)", linksCut, addrsCut)
	}
}

func nsHandle(n ns.NetNS) netns.NsHandle { return netns.NsHandle(n.Fd()) }
