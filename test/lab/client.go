package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/podroute/podroute/test/kube"
)

// Host is a machine outside the cluster behind a router: a network namespace on a
// point-to-point link of its own to that router, with its default routes through it. It
// runs no BGP and is no node: what reaches it from the cluster went through the router.
type Host struct {
	Name string
	*NetNS
	// Link joins the router (A, .1 and ::1) and the host (B, .2 and ::2); the host's address
	// is Link.BIPv4 and Link.BIPv6, its gateway Link.AIPv4 and Link.AIPv6.
	Link *Link
	// PrefixV4 and PrefixV6 are the link's subnets: what the rest of the network must route
	// to the router to reach the host.
	PrefixV4, PrefixV6 netip.Prefix
}

// AddHost creates a host behind router r on a link of its own (198.19.L.0/24 and
// 2001:db8:ffLL::/64, numbered like Connect's links), with default routes via r. The router
// has the link's subnets as connected routes. Everything is removed in t.Cleanup.
func (l *Lab) AddHost(t testing.TB, name string, r *Router) *Host {
	t.Helper()
	netns, err := CreateNetNS(fmt.Sprintf("%s-%s", l.Name, name))
	if err != nil {
		t.Fatalf("lab: host %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(); err != nil {
			t.Errorf("lab: %v", err)
		}
	})
	l.topo.mu.Lock()
	l.topo.linkSeq++
	seq := l.topo.linkSeq
	l.topo.mu.Unlock()
	k := &Link{
		A: r, Interface: fmt.Sprintf("link%d", seq),
		AIPv4: netip.AddrFrom4([4]byte{198, 19, byte(seq), 1}),
		BIPv4: netip.AddrFrom4([4]byte{198, 19, byte(seq), 2}),
		AIPv6: netip.MustParseAddr(fmt.Sprintf("2001:db8:ff%02x::1", seq)),
		BIPv6: netip.MustParseAddr(fmt.Sprintf("2001:db8:ff%02x::2", seq)),
	}
	h := &Host{
		Name: name, NetNS: netns, Link: k,
		PrefixV4: netip.PrefixFrom(k.AIPv4, 24).Masked(),
		PrefixV6: netip.PrefixFrom(k.AIPv6, 64).Masked(),
	}
	if err := r.IP(
		[]string{"link", "add", k.Interface, "type", "veth", "peer", "name", k.Interface, "netns", netns.Name},
		[]string{"addr", "add", k.AIPv4.String() + "/24", "dev", k.Interface},
		[]string{"addr", "add", k.AIPv6.String() + "/64", "dev", k.Interface, "nodad"},
		[]string{"link", "set", k.Interface, "up"},
	); err != nil {
		t.Fatalf("lab: host %s: link to %s: %v", name, r.Name, err)
	}
	if err := netns.IP(
		[]string{"addr", "add", k.BIPv4.String() + "/24", "dev", k.Interface},
		[]string{"addr", "add", k.BIPv6.String() + "/64", "dev", k.Interface, "nodad"},
		[]string{"link", "set", k.Interface, "up"},
		[]string{"route", "add", "default", "via", k.AIPv4.String()},
		[]string{"-6", "route", "add", "default", "via", k.AIPv6.String()},
	); err != nil {
		t.Fatalf("lab: host %s: %v", name, err)
	}
	t.Logf("lab: host %s behind %s: %s and %s", name, r.Name, k.BIPv4, k.BIPv6)
	return h
}

// Addr is the host's address of the family of v6.
func (h *Host) Addr(v6 bool) netip.Addr {
	if v6 {
		return h.Link.BIPv6
	}
	return h.Link.BIPv4
}

// Dialer dials from inside the host's namespace (for an http.Transport's DialContext).
func (h *Host) Dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	return kube.DialerIn(h.Path)
}
