package routes

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestDeleteKey: deleting through DeleteKey removes exactly the dumped route, never a route
// of another protocol, metric or type that shares its prefix, whatever order the kernel
// keeps them in. Default routes (dumped without a destination) and multipath routes
// included.
func TestDeleteKey(t *testing.T) {
	l := newLab(t)
	const static = unix.RTPROT_STATIC
	gw := func(a netip.Addr) []byte { return a.AsSlice() }
	// For each prefix, a route of another protocol of the same shape (next hops, type) with
	// a lower metric, which the kernel lists first: a delete that names only the prefix and
	// next hops takes it.
	routes := []*netlink.Route{
		{Dst: ipnet("0.0.0.0/0"), Gw: gw(gwA), Protocol: static, Priority: 100},
		{Dst: ipnet("0.0.0.0/0"), Gw: gw(gwA), Protocol: Protocol, Priority: 200},
		{Dst: ipnet("::/0"), Gw: gw(gw6A), Protocol: static, Priority: 100},
		{Dst: ipnet("::/0"), Gw: gw(gw6A), Protocol: Protocol, Priority: 200},
		{Dst: ipnet("10.244.7.0/24"), Type: unix.RTN_BLACKHOLE, Protocol: static, Priority: 10},
		{Dst: ipnet("10.244.7.0/24"), Type: unix.RTN_BLACKHOLE, Protocol: Protocol, Priority: 20},
		{Dst: ipnet("10.244.8.0/24"), Protocol: static, Priority: 10, MultiPath: []*netlink.NexthopInfo{
			{Gw: gw(gwA)}, {Gw: gw(gwB)}}},
		{Dst: ipnet("10.244.8.0/24"), Protocol: Protocol, Priority: 20, MultiPath: []*netlink.NexthopInfo{
			{Gw: gw(gwA)}, {Gw: gw(gwB)}}},
		{Dst: ipnet("fd00:10:244:7::/64"), Type: unix.RTN_BLACKHOLE, Protocol: static, Priority: 10},
		{Dst: ipnet("fd00:10:244:7::/64"), Type: unix.RTN_BLACKHOLE, Protocol: Protocol, Priority: 20},
	}
	for _, r := range routes {
		l.addKernel(r)
	}
	before := l.foreign(main)

	var ours []netlink.Route
	for _, kr := range l.all(main) {
		if kr.Protocol == Protocol {
			ours = append(ours, kr)
		}
	}
	if len(ours) != 5 {
		t.Fatalf("dumped %d protocol %d routes, want 5: %v", len(ours), Protocol, ours)
	}
	for i := range ours {
		if err := l.h.RouteDel(DeleteKey(&ours[i])); err != nil {
			t.Fatalf("delete %s: %v", describeRoute(&ours[i]), err)
		}
	}

	for _, kr := range l.all(main) {
		if kr.Protocol == Protocol {
			t.Errorf("still present: %s", describeRoute(&kr))
		}
	}
	if after := l.foreign(main); !slices.Equal(after, before) {
		t.Errorf("other protocols' routes changed:\nbefore %q\nafter  %q", before, after)
	}

	// Deleting again names a route that is gone: the kernel says so rather than taking
	// another route of the prefix.
	for i := range ours {
		if err := l.h.RouteDel(DeleteKey(&ours[i])); err == nil {
			t.Errorf("second delete of %s succeeded", describeRoute(&ours[i]))
		}
	}
	if after := l.foreign(main); !slices.Equal(after, before) {
		t.Errorf("a second delete hit another route:\nbefore %q\nafter  %q", before, after)
	}
}

func describeRoute(kr *netlink.Route) string {
	return fmt.Sprintf("%s type %d proto %d metric %d", kernelPrefix(kr), kr.Type, kr.Protocol, kr.Priority)
}
