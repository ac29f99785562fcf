package egress

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// lab is a pod, the node it runs on, and a router outside the cluster beyond the node's
// uplink, which also stands in for a pod on another node (10.244.2.2, fd00:10:244:2::2).
type lab struct {
	pod, node, outside ns.NetNS
}

func addAddrs(link netlink.Link, addrs ...string) error {
	for _, a := range addrs {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			return err
		}
		addr.Flags = 0x02 // IFA_F_NODAD: IPv6 addresses usable at once
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("adding %s to %s: %w", a, link.Attrs().Name, err)
		}
	}
	return nil
}

func addRoutes(routes ...[2]string) error {
	for _, r := range routes {
		_, dst, err := net.ParseCIDR(r[0])
		if err != nil {
			return err
		}
		if err := netlink.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP(r[1])}); err != nil {
			return fmt.Errorf("route %s via %s: %w", r[0], r[1], err)
		}
	}
	return nil
}

func setUp(names ...string) error {
	for _, n := range names {
		l, err := netlink.LinkByName(n)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}

// vethTo creates a veth in the current namespace named local whose peer, peer, is moved
// into other.
func vethTo(local, peer string, other ns.NetNS) (netlink.Link, error) {
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: local}, PeerName: peer}); err != nil {
		return nil, fmt.Errorf("veth %s: %w", local, err)
	}
	p, err := netlink.LinkByName(peer)
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetNsFd(p, int(other.Fd())); err != nil {
		return nil, err
	}
	return netlink.LinkByName(local)
}

func newLab(t *testing.T) *lab {
	l := &lab{pod: newNS(t), node: newNS(t), outside: newNS(t)}
	in(t, l.node, func() error {
		podSide, err := vethTo("pod0", "eth0", l.pod)
		if err != nil {
			return err
		}
		uplink, err := vethTo("uplink", "eth0", l.outside)
		if err != nil {
			return err
		}
		if err := addAddrs(podSide, "10.244.1.1/24", "fd00:10:244:1::1/64"); err != nil {
			return err
		}
		if err := addAddrs(uplink, "192.0.2.10/24", "2001:db8::10/64"); err != nil {
			return err
		}
		if err := setUp("lo", "pod0", "uplink"); err != nil {
			return err
		}
		for _, s := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(s, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		// The other node's pods are reached over the uplink.
		return addRoutes([2]string{"10.244.2.0/24", "192.0.2.1"}, [2]string{"fd00:10:244:2::/64", "2001:db8::1"})
	})
	in(t, l.pod, func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := addAddrs(eth0, "10.244.1.2/24", "fd00:10:244:1::2/64"); err != nil {
			return err
		}
		if err := setUp("lo", "eth0"); err != nil {
			return err
		}
		return addRoutes([2]string{"0.0.0.0/0", "10.244.1.1"}, [2]string{"::/0", "fd00:10:244:1::1"})
	})
	in(t, l.outside, func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := addAddrs(eth0, "192.0.2.1/24", "2001:db8::1/64"); err != nil {
			return err
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := addAddrs(lo, "10.244.2.2/32", "fd00:10:244:2::2/128"); err != nil {
			return err
		}
		if err := setUp("lo", "eth0"); err != nil {
			return err
		}
		// A route back to the pods, so unmasqueraded traffic is answered too.
		return addRoutes([2]string{"10.244.1.0/24", "192.0.2.10"}, [2]string{"fd00:10:244:1::/64", "2001:db8::10"})
	})
	return l
}

// sourceSeen connects over TCP from the pod to dst in the server namespace and returns
// the source address the server sees.
func sourceSeen(t *testing.T, from, server ns.NetNS, dst string) netip.Addr {
	t.Helper()
	var ln net.Listener
	in(t, server, func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(dst, "0"))
		return err
	})
	defer ln.Close()
	accepted := make(chan netip.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		defer c.Close()
		accepted <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	}()
	in(t, from, func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			return fmt.Errorf("dial %s: %w", ln.Addr(), err)
		}
		return c.Close()
	})
	select {
	case a, ok := <-accepted:
		if !ok {
			t.Fatalf("accept on %s failed", ln.Addr())
		}
		return a
	case <-time.After(5 * time.Second):
		t.Fatalf("no connection to %s", ln.Addr())
	}
	return netip.Addr{}
}

func TestTraffic(t *testing.T) {
	needRoot(t)
	l := newLab(t)
	m := newMasq(t, l.node)

	type check struct {
		name   string
		server ns.NetNS
		dst    string
		want   string
	}
	run := func(checks []check) {
		t.Helper()
		for _, c := range checks {
			if got := sourceSeen(t, l.pod, c.server, c.dst); got.String() != c.want {
				t.Errorf("%s: %s sees source %s, want %s", c.name, c.dst, got, c.want)
			}
		}
	}
	podToPod := []check{
		{"pod to remote pod", l.outside, "10.244.2.2", "10.244.1.2"},
		{"pod to remote pod v6", l.outside, "fd00:10:244:2::2", "fd00:10:244:1::2"},
		{"pod to its node", l.node, "192.0.2.10", "10.244.1.2"},
		{"pod to its node v6", l.node, "2001:db8::10", "fd00:10:244:1::2"},
	}

	syncCfg(t, l.node, m, dualStack)
	run(append([]check{
		{"egress", l.outside, "192.0.2.1", "192.0.2.10"},
		{"egress v6", l.outside, "2001:db8::1", "2001:db8::10"},
	}, podToPod...))

	off := dualStack
	off.Enabled = false
	syncCfg(t, l.node, m, off)
	run(append([]check{
		{"egress, masquerade off", l.outside, "192.0.2.1", "10.244.1.2"},
		{"egress v6, masquerade off", l.outside, "2001:db8::1", "fd00:10:244:1::2"},
	}, podToPod...))

	syncCfg(t, l.node, m, dualStack)
	run([]check{{"egress, masquerade on again", l.outside, "192.0.2.1", "192.0.2.10"}})
}
