package routes

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// lab is a throwaway network namespace with two uplinks (veth links standing for the node's
// NICs, each with a subnet on which peers are gateways) and a veth pair standing for a pod's
// host-side interface.
type lab struct {
	tb       testing.TB
	ns       ns.NetNS
	h        *netlink.Handle
	up0, up1 int // uplink indices
	veth     int // pod host-side veth index
}

var (
	gwA   = netip.MustParseAddr("192.168.50.2")
	gwB   = netip.MustParseAddr("192.168.50.3")
	gwC   = netip.MustParseAddr("192.168.51.2") // on uplink1
	gw6A  = netip.MustParseAddr("2001:db8:50::2")
	gw6B  = netip.MustParseAddr("2001:db8:50::3")
	gw6C  = netip.MustParseAddr("2001:db8:51::2") // on uplink1
	gwLL  = netip.MustParseAddr("fe80::2")
	noGW  = netip.MustParseAddr("172.16.0.1") // not on any connected subnet
	noGW6 = netip.MustParseAddr("2001:db8:99::1")
)

func newLab(tb testing.TB) *lab {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root to create network namespaces")
	}
	n, err := testutils.NewNS()
	if err != nil {
		tb.Fatalf("new netns: %v", err)
	}
	tb.Cleanup(func() {
		_ = n.Close()
		_ = testutils.UnmountNS(n)
	})
	h, err := netlink.NewHandleAt(netns.NsHandle(n.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		tb.Fatalf("netlink handle: %v", err)
	}
	tb.Cleanup(h.Close)
	l := &lab{tb: tb, ns: n, h: h}

	lo, err := h.LinkByName("lo")
	l.must(err)
	l.must(h.LinkSetUp(lo))
	l.up0 = l.uplink("uplink0", "192.168.50.1/24", "2001:db8:50::1/64")
	l.up1 = l.uplink("uplink1", "192.168.51.1/24", "2001:db8:51::1/64")

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vethpod0"}, PeerName: "vethpeer0"}
	l.must(h.LinkAdd(veth))
	for _, name := range []string{"vethpod0", "vethpeer0"} {
		link, err := h.LinkByName(name)
		l.must(err)
		l.must(h.LinkSetUp(link))
		if name == "vethpod0" {
			l.veth = link.Attrs().Index
		}
	}
	return l
}

func (l *lab) must(err error) {
	l.tb.Helper()
	if err != nil {
		l.tb.Fatal(err)
	}
}

func (l *lab) uplink(name string, addrs ...string) int {
	l.tb.Helper()
	// A veth pair whose peer is up, so the uplink has a carrier like a cabled NIC.
	l.must(l.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}))
	peer, err := l.h.LinkByName(name + "p")
	l.must(err)
	l.must(l.h.LinkSetUp(peer))
	link, err := l.h.LinkByName(name)
	l.must(err)
	for _, a := range addrs {
		addr, err := netlink.ParseAddr(a)
		l.must(err)
		addr.Flags = unix.IFA_F_NODAD // no duplicate address detection delay in tests
		l.must(l.h.AddrAdd(link, addr))
	}
	l.must(l.h.LinkSetUp(link))
	return link.Attrs().Index
}

func (l *lab) setLink(index int, up bool) {
	l.tb.Helper()
	link, err := l.h.LinkByIndex(index)
	l.must(err)
	if up {
		l.must(l.h.LinkSetUp(link))
	} else {
		l.must(l.h.LinkSetDown(link))
	}
}

func (l *lab) reconciler(opts Options) *Reconciler {
	l.tb.Helper()
	opts.NetNS = netns.NsHandle(l.ns.Fd())
	if opts.Logger == nil {
		opts.Logger = testLogger(l.tb)
	}
	r, err := NewReconciler(opts)
	l.must(err)
	l.tb.Cleanup(func() { _ = r.Close() })
	return r
}

// routes returns every route in the table (any protocol) for the prefix.
func (l *lab) routes(table int, prefix string) []netlink.Route {
	l.tb.Helper()
	p := netip.MustParsePrefix(prefix)
	var out []netlink.Route
	for _, kr := range l.all(table) {
		if kernelPrefix(&kr) == p {
			out = append(out, kr)
		}
	}
	return out
}

func (l *lab) all(table int) []netlink.Route {
	l.tb.Helper()
	var out []netlink.Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := l.h.RouteListFiltered(fam, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
		l.must(err)
		out = append(out, rs...)
	}
	return out
}

// foreign renders every route in the table that is neither an agent route nor a connected
// route (those come and go with link-local autoconfiguration), to show they were left exactly
// as they were.
func (l *lab) foreign(table int) []string {
	l.tb.Helper()
	var out []string
	for _, kr := range l.all(table) {
		if !isAgentRoute(&kr) && kr.Protocol != unix.RTPROT_KERNEL {
			out = append(out, fmt.Sprintf("%s type %d proto %d metric %d scope %d", kr, kr.Type, kr.Protocol, kr.Priority, kr.Scope))
		}
	}
	slices.Sort(out)
	return out
}

func (l *lab) addKernel(kr *netlink.Route) {
	l.tb.Helper()
	if err := l.h.RouteAdd(kr); err != nil {
		l.tb.Fatalf("add %s: %v", kr, err)
	}
}

// cniRoute is a pod host route as the CNI plugin installs it.
func (l *lab) cniRoute(pod string) *netlink.Route {
	p := netip.MustParsePrefix(pod)
	return &netlink.Route{Dst: toIPNet(p), LinkIndex: l.veth, Scope: netlink.SCOPE_LINK, Protocol: Protocol}
}

func ipnet(s string) *net.IPNet { return toIPNet(netip.MustParsePrefix(s)) }

func rt(prefix string, gws ...netip.Addr) Route {
	r := Route{Prefix: netip.MustParsePrefix(prefix)}
	for _, g := range gws {
		r.NextHops = append(r.NextHops, NextHop{Gateway: g})
	}
	return r
}

func blackhole(prefix string) Route {
	return Route{Prefix: netip.MustParsePrefix(prefix), Blackhole: true}
}

func reconcile(tb testing.TB, r *Reconciler, desired ...Route) Result {
	tb.Helper()
	res, err := r.Reconcile(desired)
	if err != nil {
		tb.Fatalf("Reconcile: %v", err)
	}
	return res
}

func wantCounts(tb testing.TB, res Result, added, replaced, removed, unchanged, errs int) {
	tb.Helper()
	if res.Added != added || res.Replaced != replaced || res.Removed != removed ||
		res.Unchanged != unchanged || len(res.Errors) != errs {
		tb.Fatalf("got added=%d replaced=%d removed=%d unchanged=%d errors=%d (%v); want %d/%d/%d/%d/%d",
			res.Added, res.Replaced, res.Removed, res.Unchanged, len(res.Errors), res.Err(),
			added, replaced, removed, unchanged, errs)
	}
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(tb testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
