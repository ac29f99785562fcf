package routes

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const main = unix.RT_TABLE_MAIN

func gateways(kr netlink.Route) []string {
	var out []string
	if kr.Gw != nil {
		out = append(out, kr.Gw.String())
	}
	for _, nh := range kr.MultiPath {
		out = append(out, nh.Gw.String())
	}
	slices.Sort(out)
	return out
}

// one asserts that exactly one route exists for prefix and returns it.
func one(t *testing.T, l *lab, prefix string) netlink.Route {
	t.Helper()
	rs := l.routes(main, prefix)
	if len(rs) != 1 {
		t.Fatalf("%s: want 1 route, got %d: %v", prefix, len(rs), rs)
	}
	return rs[0]
}

func none(t *testing.T, l *lab, prefix string) {
	t.Helper()
	if rs := l.routes(main, prefix); len(rs) != 0 {
		t.Fatalf("%s: want no route, got %v", prefix, rs)
	}
}

func wantAgentRoute(t *testing.T, l *lab, prefix string, gws ...string) netlink.Route {
	t.Helper()
	kr := one(t, l, prefix)
	if kr.Protocol != Protocol || kr.Type != unix.RTN_UNICAST {
		t.Fatalf("%s: want unicast proto %d, got type %d proto %d", prefix, Protocol, kr.Type, kr.Protocol)
	}
	slices.Sort(gws)
	if got := gateways(kr); !slices.Equal(got, gws) {
		t.Fatalf("%s: gateways %v, want %v", prefix, got, gws)
	}
	return kr
}

func TestInstallECMPAndIdempotence(t *testing.T) {
	l := newLab(t)
	r := l.reconciler(Options{})
	desired := []Route{
		rt("10.244.1.0/24", gwA),
		rt("10.244.2.0/24", gwB, gwA),
		{Prefix: netip.MustParsePrefix("10.244.3.0/24"), NextHops: []NextHop{{Gateway: gwC, LinkIndex: l.up1}}},
	}
	wantCounts(t, reconcile(t, r, desired...), 3, 0, 0, 0, 0)

	kr := wantAgentRoute(t, l, "10.244.1.0/24", "192.168.50.2")
	if kr.LinkIndex != l.up0 || len(kr.MultiPath) != 0 {
		t.Fatalf("plain route: link %d multipath %v", kr.LinkIndex, kr.MultiPath)
	}
	ecmp := wantAgentRoute(t, l, "10.244.2.0/24", "192.168.50.2", "192.168.50.3")
	if len(ecmp.MultiPath) != 2 || ecmp.Gw != nil {
		t.Fatalf("ECMP should be one multipath route: %v", ecmp)
	}
	if kr := wantAgentRoute(t, l, "10.244.3.0/24", "192.168.51.2"); kr.LinkIndex != l.up1 {
		t.Fatalf("pinned link: got %d want %d", kr.LinkIndex, l.up1)
	}

	wantCounts(t, reconcile(t, r, desired...), 0, 0, 0, 3, 0)
	// Next-hop order is not a change.
	desired[1] = rt("10.244.2.0/24", gwA, gwB)
	slices.Reverse(desired)
	wantCounts(t, reconcile(t, r, desired...), 0, 0, 0, 3, 0)

	owned, err := r.Owned()
	if err != nil {
		t.Fatal(err)
	}
	want := []Route{
		{Prefix: netip.MustParsePrefix("10.244.1.0/24"), NextHops: []NextHop{{gwA, l.up0}}},
		{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHops: []NextHop{{gwA, l.up0}, {gwB, l.up0}}},
		{Prefix: netip.MustParsePrefix("10.244.3.0/24"), NextHops: []NextHop{{gwC, l.up1}}},
	}
	if !slices.EqualFunc(owned, want, sameRoute) {
		t.Fatalf("Owned() = %v, want %v", owned, want)
	}
}

func TestChangesAreReplaced(t *testing.T) {
	l := newLab(t)
	r := l.reconciler(Options{})
	steps := []struct {
		v4, v6 Route
		check  func()
	}{
		{rt("10.244.1.0/24", gwA), rt("2001:db8:244:1::/64", gw6A), nil},
		{rt("10.244.1.0/24", gwB), rt("2001:db8:244:1::/64", gw6B), func() {
			wantAgentRoute(t, l, "10.244.1.0/24", gwB.String())
			wantAgentRoute(t, l, "2001:db8:244:1::/64", gw6B.String())
		}},
		{rt("10.244.1.0/24", gwA, gwC), rt("2001:db8:244:1::/64", gw6A, gw6C), func() {
			wantAgentRoute(t, l, "10.244.1.0/24", gwA.String(), gwC.String())
			wantAgentRoute(t, l, "2001:db8:244:1::/64", gw6A.String(), gw6C.String())
		}},
		{blackhole("10.244.1.0/24"), blackhole("2001:db8:244:1::/64"), func() {
			for _, p := range []string{"10.244.1.0/24", "2001:db8:244:1::/64"} {
				if kr := one(t, l, p); kr.Type != unix.RTN_BLACKHOLE || kr.Protocol != Protocol {
					t.Fatalf("%s: want blackhole proto 201, got %v", p, kr)
				}
			}
		}},
		{rt("10.244.1.0/24", gwB), rt("2001:db8:244:1::/64", gw6B), func() {
			wantAgentRoute(t, l, "10.244.1.0/24", gwB.String())
			wantAgentRoute(t, l, "2001:db8:244:1::/64", gw6B.String())
		}},
	}
	for i, s := range steps {
		res := reconcile(t, r, s.v4, s.v6)
		if i == 0 {
			wantCounts(t, res, 2, 0, 0, 0, 0)
		} else {
			wantCounts(t, res, 0, 2, 0, 0, 0)
		}
		if s.check != nil {
			s.check()
		}
		wantCounts(t, reconcile(t, r, s.v4, s.v6), 0, 0, 0, 2, 0)
	}
}

func TestOnlyAgentRoutesAreTouched(t *testing.T) {
	l := newLab(t)
	// Routes that are not the agent's: an operator's static route, a boot route, the CNI
	// plugin's pod routes (protocol 201, no gateway), a protocol-201 unreachable route, and an
	// agent-shaped route in another table.
	l.addKernel(&netlink.Route{Dst: ipnet("10.99.0.0/16"), Gw: gwA.AsSlice(), Protocol: unix.RTPROT_STATIC})
	l.addKernel(&netlink.Route{Dst: ipnet("10.98.0.0/16"), Gw: gwA.AsSlice(), Protocol: unix.RTPROT_BOOT})
	l.addKernel(&netlink.Route{Dst: ipnet("2001:db8:98::/48"), Gw: gw6A.AsSlice(), Protocol: unix.RTPROT_STATIC})
	l.addKernel(l.cniRoute("10.244.0.7/32"))
	l.addKernel(l.cniRoute("2001:db8:244::7/128"))
	l.addKernel(&netlink.Route{Dst: ipnet("10.97.0.0/16"), Type: unix.RTN_UNREACHABLE, Protocol: Protocol})
	l.addKernel(&netlink.Route{Dst: ipnet("10.96.0.0/16"), Gw: gwA.AsSlice(), Protocol: Protocol, Table: 100})
	before := l.foreign(main)
	before100 := l.all(100)

	r := l.reconciler(Options{})
	check := func() {
		t.Helper()
		if got := l.foreign(main); !slices.Equal(got, before) {
			t.Fatalf("foreign routes changed:\n got %v\nwant %v", got, before)
		}
		if got := l.all(100); len(got) != len(before100) {
			t.Fatalf("table 100 changed: %v", got)
		}
	}
	wantCounts(t, reconcile(t, r), 0, 0, 0, 0, 0)
	check()
	a, b, c := rt("10.244.1.0/24", gwA), rt("10.244.2.0/24", gwB), rt("2001:db8:244:2::/64", gw6A)
	wantCounts(t, reconcile(t, r, a, b, c), 3, 0, 0, 0, 0)
	check()
	wantCounts(t, reconcile(t, r, a, c), 0, 0, 1, 2, 0)
	none(t, l, "10.244.2.0/24")
	wantAgentRoute(t, l, "10.244.1.0/24", gwA.String())
	check()
	wantCounts(t, reconcile(t, r), 0, 0, 2, 0, 0)
	check()
	if owned, err := r.Owned(); err != nil || len(owned) != 0 {
		t.Fatalf("Owned() = %v, %v; want none", owned, err)
	}
}

func TestLeftoversAreSwept(t *testing.T) {
	l := newLab(t)
	// An earlier agent left two routes for one prefix at different metrics and one for a
	// prefix no longer wanted.
	l.addKernel(&netlink.Route{Dst: ipnet("10.244.1.0/24"), Gw: gwA.AsSlice(), Protocol: Protocol})
	l.addKernel(&netlink.Route{Dst: ipnet("10.244.1.0/24"), Gw: gwB.AsSlice(), Protocol: Protocol, Priority: 50})
	l.addKernel(&netlink.Route{Dst: ipnet("10.244.9.0/24"), Type: unix.RTN_BLACKHOLE, Protocol: Protocol})
	r := l.reconciler(Options{})
	wantCounts(t, reconcile(t, r, rt("10.244.1.0/24", gwA)), 0, 0, 2, 1, 0)
	wantAgentRoute(t, l, "10.244.1.0/24", gwA.String())
	none(t, l, "10.244.9.0/24")
}

func TestBlackholeWithPodRoute(t *testing.T) {
	l := newLab(t)
	l.addKernel(l.cniRoute("10.244.5.7/32"))
	l.addKernel(l.cniRoute("2001:db8:245::7/128"))
	r := l.reconciler(Options{})
	wantCounts(t, reconcile(t, r, blackhole("10.244.5.0/24"), blackhole("2001:db8:245::/64")), 2, 0, 0, 0, 0)
	for _, p := range []string{"10.244.5.0/24", "2001:db8:245::/64"} {
		if kr := one(t, l, p); kr.Type != unix.RTN_BLACKHOLE || kr.Protocol != Protocol {
			t.Fatalf("%s: want blackhole proto 201, got %v", p, kr)
		}
	}
	for _, pod := range []string{"10.244.5.7", "2001:db8:245::7"} {
		got, err := l.h.RouteGet(net.ParseIP(pod))
		if err != nil || len(got) != 1 || got[0].LinkIndex != l.veth {
			t.Fatalf("route get %s: %v %v; want via pod veth %d", pod, got, err, l.veth)
		}
	}
	// A free address in the pod CIDR must not leave the node.
	for _, free := range []string{"10.244.5.8", "2001:db8:245::8"} {
		if got, err := l.h.RouteGet(net.ParseIP(free)); err == nil {
			t.Fatalf("route get %s: got %v, want blackhole error", free, got)
		}
	}
	wantCounts(t, reconcile(t, r, blackhole("10.244.5.0/24"), blackhole("2001:db8:245::/64")), 0, 0, 0, 2, 0)
	wantCounts(t, reconcile(t, r), 0, 0, 2, 0, 0)
	one(t, l, "10.244.5.7/32")
	one(t, l, "2001:db8:245::7/128")
}

func TestHandDeletedRouteComesBack(t *testing.T) {
	l := newLab(t)
	r := l.reconciler(Options{})
	desired := []Route{rt("10.244.1.0/24", gwA), rt("10.244.2.0/24", gwA, gwB), rt("2001:db8:244:1::/64", gw6A)}
	wantCounts(t, reconcile(t, r, desired...), 3, 0, 0, 0, 0)
	for _, p := range []string{"10.244.1.0/24", "10.244.2.0/24", "2001:db8:244:1::/64"} {
		kr := one(t, l, p)
		l.must(l.h.RouteDel(&kr))
	}
	wantCounts(t, reconcile(t, r, desired...), 3, 0, 0, 0, 0)
	wantAgentRoute(t, l, "10.244.2.0/24", gwA.String(), gwB.String())
}

func TestLinkFlap(t *testing.T) {
	l := newLab(t)
	r := l.reconciler(Options{})
	desired := []Route{rt("10.244.1.0/24", gwA), rt("10.244.3.0/24", gwC)}
	wantCounts(t, reconcile(t, r, desired...), 2, 0, 0, 0, 0)

	l.setLink(l.up1, false)
	none(t, l, "10.244.3.0/24") // the kernel flushed it with the link
	res, err := r.Reconcile(desired)
	if err != nil {
		t.Fatalf("link down must not be fatal: %v", err)
	}
	wantCounts(t, res, 0, 0, 0, 1, 1)
	if e := res.Errors[0]; e.Route.Prefix.String() != "10.244.3.0/24" || !errors.Is(e, unix.ENETUNREACH) {
		t.Fatalf("want ENETUNREACH for 10.244.3.0/24, got %v", e)
	}

	l.setLink(l.up1, true)
	wantCounts(t, reconcile(t, r, desired...), 1, 0, 0, 1, 0)
	wantAgentRoute(t, l, "10.244.3.0/24", gwC.String())
}

func TestUnreachableGatewayIsPerRoute(t *testing.T) {
	l := newLab(t)
	r := l.reconciler(Options{})
	res := reconcile(t, r,
		rt("10.244.1.0/24", noGW),
		rt("10.244.2.0/24", gwA),
		rt("2001:db8:244:1::/64", noGW6),
		rt("2001:db8:244:2::/64", gw6A),
		rt("10.244.4.0/24", gwA, noGW), // one bad hop spoils the ECMP route
		Route{Prefix: netip.MustParsePrefix("10.244.5.0/24"), NextHops: []NextHop{{gwA, 99999}}},
	)
	wantCounts(t, res, 2, 0, 0, 0, 4)
	for _, e := range res.Errors {
		msg := e.Error()
		if !strings.Contains(msg, e.Route.Prefix.String()) || !strings.Contains(msg, e.Route.NextHops[len(e.Route.NextHops)-1].Gateway.String()) {
			t.Errorf("error does not name prefix and gateway: %v", msg)
		}
	}
	if e := res.Errors[0]; !errors.Is(e, unix.ENETUNREACH) {
		t.Errorf("want ENETUNREACH, got %v", e)
	}
	t.Logf("errors: %v", res.Err())
	wantAgentRoute(t, l, "10.244.2.0/24", gwA.String())
	wantAgentRoute(t, l, "2001:db8:244:2::/64", gw6A.String())
	none(t, l, "10.244.1.0/24")
	none(t, l, "10.244.4.0/24")
}

func TestIPv6AndDualStack(t *testing.T) {
	l := newLab(t)
	r := l.reconciler(Options{})
	desired := []Route{
		rt("2001:db8:244:1::/64", gw6A),
		{Prefix: netip.MustParsePrefix("2001:db8:244:2::/64"), NextHops: []NextHop{{gwLL, l.up0}}},
		rt("2001:db8:244:3::/64", gw6B, gw6C),
		{Prefix: netip.MustParsePrefix("2001:db8:244:4::/64"), NextHops: []NextHop{{gwLL, l.up0}, {gwLL, l.up1}}},
		rt("10.244.1.0/24", gwA),
	}
	wantCounts(t, reconcile(t, r, desired...), 5, 0, 0, 0, 0)
	wantAgentRoute(t, l, "2001:db8:244:1::/64", gw6A.String())
	if kr := wantAgentRoute(t, l, "2001:db8:244:2::/64", "fe80::2"); kr.LinkIndex != l.up0 {
		t.Fatalf("link-local next hop on link %d, want %d", kr.LinkIndex, l.up0)
	}
	if kr := wantAgentRoute(t, l, "2001:db8:244:3::/64", gw6B.String(), gw6C.String()); len(kr.MultiPath) != 2 {
		t.Fatalf("want one multipath route, got %v", kr)
	}
	wantAgentRoute(t, l, "2001:db8:244:4::/64", "fe80::2", "fe80::2")
	wantAgentRoute(t, l, "10.244.1.0/24", gwA.String())
	wantCounts(t, reconcile(t, r, desired...), 0, 0, 0, 5, 0)

	wantCounts(t, reconcile(t, r, desired[1:]...), 0, 0, 1, 4, 0)
	none(t, l, "2001:db8:244:1::/64")
	wantCounts(t, reconcile(t, r), 0, 0, 4, 0, 0)
}

func TestInvalidRoutes(t *testing.T) {
	l := newLab(t)
	r := l.reconciler(Options{})
	p := netip.MustParsePrefix
	bad := []Route{
		{},
		{Prefix: p("10.244.1.1/24"), NextHops: []NextHop{{Gateway: gwA}}},
		{Prefix: p("10.244.2.0/24")},
		{Prefix: p("10.244.3.0/24"), Blackhole: true, NextHops: []NextHop{{Gateway: gwA}}},
		{Prefix: p("2001:db8:244:1::/64"), NextHops: []NextHop{{Gateway: gwA}}},
		{Prefix: p("10.244.4.0/24"), NextHops: []NextHop{{Gateway: gw6A}}},
		{Prefix: p("2001:db8:244:2::/64"), NextHops: []NextHop{{Gateway: gwLL}}},
		{Prefix: p("10.244.5.0/24"), NextHops: []NextHop{{}}},
		{Prefix: p("10.244.6.0/24"), NextHops: []NextHop{{Gateway: netip.IPv4Unspecified()}}},
		{Prefix: p("2001:db8:244:3::/64"), NextHops: []NextHop{{Gateway: gwLL.WithZone("uplink0"), LinkIndex: l.up0}}},
		{Prefix: p("10.244.7.0/24"), NextHops: []NextHop{{Gateway: gwA, LinkIndex: -1}}},
		{Prefix: p("10.244.8.0/24"), NextHops: []NextHop{{Gateway: netip.MustParseAddr("::ffff:192.168.50.2")}}},
		{Prefix: p("10.244.9.0/24"), NextHops: []NextHop{{Gateway: gwA}}}, // valid ...
		{Prefix: p("10.244.9.0/24"), NextHops: []NextHop{{Gateway: gwB}}}, // ... but a conflicting duplicate
		{Prefix: p("10.244.9.0/24"), NextHops: []NextHop{{Gateway: gwA}}}, // identical duplicates are fine
	}
	res := reconcile(t, r, bad...)
	wantCounts(t, res, 1, 0, 0, 0, len(bad)-2)
	for _, e := range res.Errors {
		if !errors.Is(e, ErrInvalidRoute) {
			t.Errorf("want ErrInvalidRoute, got %v", e)
		}
	}
	wantAgentRoute(t, l, "10.244.9.0/24", gwA.String())

	// A prefix whose desired version turns invalid keeps what the kernel has.
	res = reconcile(t, r, Route{Prefix: p("10.244.9.0/24"), NextHops: []NextHop{{Gateway: gw6A}}})
	wantCounts(t, res, 0, 0, 0, 0, 1)
	wantAgentRoute(t, l, "10.244.9.0/24", gwA.String())
}

func TestConflictsWithOtherOwners(t *testing.T) {
	l := newLab(t)
	l.addKernel(&netlink.Route{Dst: ipnet("10.244.7.0/24"), Gw: gwA.AsSlice(), Protocol: unix.RTPROT_STATIC})
	l.addKernel(&netlink.Route{Dst: ipnet("10.244.8.0/24"), Gw: gwA.AsSlice(), Protocol: unix.RTPROT_STATIC, Priority: 100})
	l.addKernel(&netlink.Route{Dst: ipnet("10.244.9.0/24"), Type: unix.RTN_BLACKHOLE, Protocol: unix.RTPROT_STATIC})
	l.addKernel(l.cniRoute("10.244.10.5/32"))
	l.addKernel(&netlink.Route{Dst: ipnet("2001:db8:244:7::/64"), Gw: gw6A.AsSlice(), Protocol: unix.RTPROT_STATIC})
	l.addKernel(&netlink.Route{Dst: ipnet("2001:db8:244:8::/64"), Gw: gw6A.AsSlice(), Protocol: unix.RTPROT_STATIC, Priority: 2048})
	before := l.foreign(main)

	r := l.reconciler(Options{})
	desired := []Route{
		rt("10.244.7.0/24", gwB),
		rt("10.244.8.0/24", gwB),
		rt("10.244.9.0/24", gwB),
		rt("10.244.10.5/32", gwB),
		rt("2001:db8:244:7::/64", gw6B),
		rt("2001:db8:244:8::/64", gw6B),
		rt("10.244.11.0/24", gwB),
	}
	for pass := range 2 {
		res := reconcile(t, r, desired...)
		if pass == 0 {
			wantCounts(t, res, 1, 0, 0, 0, 6)
		} else {
			wantCounts(t, res, 0, 0, 0, 1, 6)
		}
		for _, e := range res.Errors {
			if !errors.Is(e, ErrConflict) {
				t.Errorf("want ErrConflict, got %v", e)
			}
		}
		if got := l.foreign(main); !slices.Equal(got, before) {
			t.Fatalf("foreign routes changed:\n got %v\nwant %v", got, before)
		}
		for _, d := range desired[:6] {
			for _, kr := range l.routes(main, d.Prefix.String()) {
				if isAgentRoute(&kr) {
					t.Fatalf("agent route installed next to another owner's: %v", kr)
				}
			}
		}
	}
	t.Logf("conflicts: %v", reconcile(t, r, desired...).Err())
	wantCounts(t, reconcile(t, r), 0, 0, 1, 0, 0)
	if got := l.foreign(main); !slices.Equal(got, before) {
		t.Fatalf("foreign routes changed by empty reconcile")
	}
}

func TestOtherTable(t *testing.T) {
	l := newLab(t)
	rm := l.reconciler(Options{})
	r100 := l.reconciler(Options{Table: 100})
	wantCounts(t, reconcile(t, rm, rt("10.244.1.0/24", gwA)), 1, 0, 0, 0, 0)
	wantCounts(t, reconcile(t, r100, rt("10.244.1.0/24", gwB), rt("2001:db8:244:1::/64", gw6A)), 2, 0, 0, 0, 0)
	wantCounts(t, reconcile(t, rm, rt("10.244.1.0/24", gwA)), 0, 0, 0, 1, 0)
	if rs := l.all(100); len(rs) != 2 {
		t.Fatalf("table 100: %v", rs)
	}
	wantCounts(t, reconcile(t, r100), 0, 0, 2, 0, 0)
	wantAgentRoute(t, l, "10.244.1.0/24", gwA.String())

	// Table ids above 255 travel in RTA_TABLE.
	r1000 := l.reconciler(Options{Table: 1000})
	wantCounts(t, reconcile(t, r1000, rt("10.244.1.0/24", gwB), blackhole("2001:db8:244:1::/64")), 2, 0, 0, 0, 0)
	wantCounts(t, reconcile(t, r1000, rt("10.244.1.0/24", gwB), blackhole("2001:db8:244:1::/64")), 0, 0, 0, 2, 0)
	if rs := l.all(1000); len(rs) != 2 || rs[0].Table != 1000 {
		t.Fatalf("table 1000: %v", rs)
	}
	wantCounts(t, reconcile(t, r1000), 0, 0, 2, 0, 0)
	wantCounts(t, reconcile(t, rm, rt("10.244.1.0/24", gwA)), 0, 0, 0, 1, 0)
	if _, err := NewReconciler(Options{Table: -1}); err == nil {
		t.Fatal("negative table accepted")
	}
}

func TestOnLink(t *testing.T) {
	l := newLab(t)
	r := l.reconciler(Options{OnLink: true})
	d := Route{Prefix: netip.MustParsePrefix("10.244.1.0/24"), NextHops: []NextHop{{noGW, l.up0}}}
	wantCounts(t, reconcile(t, r, d), 1, 0, 0, 0, 0)
	if kr := wantAgentRoute(t, l, "10.244.1.0/24", noGW.String()); kr.Flags&unix.RTNH_F_ONLINK == 0 {
		t.Fatalf("onlink flag missing: %v", kr)
	}
	wantCounts(t, reconcile(t, r, d), 0, 0, 0, 1, 0)
	wantCounts(t, reconcile(t, r, rt("10.244.2.0/24", gwA)), 0, 0, 1, 0, 1) // onlink needs a link
}

func TestWatch(t *testing.T) {
	l := newLab(t)
	r := l.reconciler(Options{})
	ctx, cancel := context.WithCancel(t.Context())
	sig, err := r.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	desired := []Route{rt("10.244.1.0/24", gwA), rt("10.244.3.0/24", gwC)}
	wantCounts(t, reconcile(t, r, desired...), 2, 0, 0, 0, 0)

	expect := func(what string) {
		t.Helper()
		select {
		case _, ok := <-sig:
			if !ok {
				t.Fatalf("%s: watch closed", what)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no signal", what)
		}
	}
	kr := one(t, l, "10.244.1.0/24")
	l.must(l.h.RouteDel(&kr))
	expect("hand deletion")
	wantCounts(t, reconcile(t, r, desired...), 1, 0, 0, 1, 0)

	l.setLink(l.up1, false)
	l.setLink(l.up1, true)
	expect("link up")
	wantCounts(t, reconcile(t, r, desired...), 1, 0, 0, 1, 0)

	cancel()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-sig:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("watch channel not closed after cancel")
		}
	}
}

func TestClosed(t *testing.T) {
	l := newLab(t)
	r := l.reconciler(Options{})
	l.must(r.Close())
	if _, err := r.Reconcile(nil); err == nil {
		t.Fatal("Reconcile after Close succeeded")
	}
	if _, err := r.Owned(); err == nil {
		t.Fatal("Owned after Close succeeded")
	}
	l.must(r.Close())
}
