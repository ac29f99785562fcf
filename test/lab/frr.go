package lab

// Racks and routers: L2 segments besides the fabric's own, and FRR routers (top-of-rack
// switches, spines) in namespaces of their own, on segments and on point-to-point links.
//
//	                      ┌──── link ────┐
//	                   [tor-1]         [tor-2]        routers: zebra + bgpd (FRR), one netns each
//	                      │ seg1          │ seg2
//	fabric netns:  ══ bridge seg1 ══   ══ bridge seg2 ══   ══ bridge fabric (192.0.2.0/24) ══
//	                  │        │         │        │
//	               node-1   node-2    node-3   node-4      nodes: uplink on their segment
//
// A segment is a Linux bridge in the fabric namespace with its own subnets (198.18.K.0/24 and
// 2001:db8:K::/64) and the fabric's address on it (.254 and ::fe), the default gateway of
// its nodes: through it they reach the API server relay at 192.0.2.254 (a local address of
// the fabric namespace, which forwards nothing between segments). Routers attach to segments
// (host addresses 1..9: .1, ::1) and to each other by veth links (198.19.L.0/24 and
// 2001:db8:ffLL::/64, .1 and .2); they forward, and their BGP sessions carry the pod CIDRs
// between racks.
//
// FRR's daemons run inside the router's namespace (ip netns exec) with -N <namespace name>:
// -N gives each router its own path space (vty sockets, pid files and zserv socket under
// /var/run/frr/<namespace name>) but does not itself enter the network namespace. The
// daemons drop privileges to user frr, so that directory, which also holds the generated
// configuration and the log, belongs to frr. Everything goes away in t.Cleanup; Sweep
// removes the directories of dead runs.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// FRRDaemonDir holds zebra, bgpd and bfdd (Debian's frr package).
	FRRDaemonDir = "/usr/lib/frr"
	// FRRRunDir is FRR's state directory; each router has FRRRunDir/<namespace name>.
	FRRRunDir = "/var/run/frr"
)

// Segment is an L2 segment (a rack): a Linux bridge in the fabric namespace.
type Segment struct {
	Name string
	// Index is 0 for the fabric's own segment (192.0.2.0/24, 2001:db8::/64), K for
	// 198.18.K.0/24 and 2001:db8:K::/64.
	Index              int
	Bridge             string
	PrefixV4, PrefixV6 netip.Prefix
	// GatewayV4 and GatewayV6 are the fabric namespace's addresses on the segment.
	GatewayV4, GatewayV6 netip.Addr
}

// Addr4 is the segment's IPv4 address with host number host.
func (s *Segment) Addr4(host int) netip.Addr {
	b := s.PrefixV4.Addr().As4()
	b[3] = byte(host)
	return netip.AddrFrom4(b)
}

// Addr6 is the segment's IPv6 address with interface identifier host (0x11 gives ...::11).
func (s *Segment) Addr6(host int) netip.Addr {
	b := s.PrefixV6.Addr().As16()
	b[14], b[15] = byte(host>>8), byte(host)
	return netip.AddrFrom16(b)
}

type topology struct {
	mu        sync.Mutex
	segments  []*Segment
	routers   map[string]*Router
	routerSeq int
	linkSeq   int
}

// DefaultSegment is the fabric's own segment: the bridge every node joins unless told
// otherwise (NodeOptions.Segment).
func (l *Lab) DefaultSegment() *Segment {
	l.topo.mu.Lock()
	defer l.topo.mu.Unlock()
	if len(l.topo.segments) == 0 {
		l.topo.segments = append(l.topo.segments, &Segment{
			Name: "fabric", Index: 0, Bridge: bridgeName,
			PrefixV4: FabricPrefixV4, PrefixV6: FabricPrefixV6,
			GatewayV4: FabricIPv4, GatewayV6: FabricIPv6,
		})
	}
	return l.topo.segments[0]
}

// AddSegment creates a new L2 segment (a rack's): a bridge in the fabric namespace with the
// next free 198.18.K.0/24 and 2001:db8:K::/64, the fabric holding .254 and ::fe on it.
func (l *Lab) AddSegment(t testing.TB, name string) *Segment {
	t.Helper()
	l.DefaultSegment()
	l.topo.mu.Lock()
	k := len(l.topo.segments)
	s := &Segment{
		Name: name, Index: k, Bridge: fmt.Sprintf("seg%d", k),
		PrefixV4: netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", k)),
		PrefixV6: netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x::/64", k)),
	}
	s.GatewayV4, s.GatewayV6 = s.Addr4(254), s.Addr6(0xfe)
	l.topo.segments = append(l.topo.segments, s)
	l.topo.mu.Unlock()
	if err := l.Fabric.IP(
		[]string{"link", "add", s.Bridge, "type", "bridge"},
		[]string{"addr", "add", netip.PrefixFrom(s.GatewayV4, 24).String(), "dev", s.Bridge},
		[]string{"addr", "add", netip.PrefixFrom(s.GatewayV6, 64).String(), "dev", s.Bridge, "nodad"},
		[]string{"link", "set", s.Bridge, "up"},
	); err != nil {
		t.Fatalf("lab: segment %s: %v", name, err)
	}
	t.Logf("lab: segment %s: bridge %s, %s and %s, gateway %s", name, s.Bridge, s.PrefixV4, s.PrefixV6, s.GatewayV4)
	return s
}

// RouterOptions configures AddRouter.
type RouterOptions struct {
	// ASN of the router (required).
	ASN uint32
	// RouterID defaults to 198.19.255.<n>, n numbering the lab's routers.
	RouterID netip.Addr
	// Host is the router's host number on each of its segments, 1..9 (default 1): two
	// routers on one segment need different ones.
	Host int
	// Segments the router attaches to (an interface "segK" on each, address Host).
	Segments []*Segment
	// Neighbors are configured from the start; see also AddNeighbor.
	Neighbors []Neighbor
	// Networks are originated with network statements.
	Networks []netip.Prefix
	// RedistributeConnected announces the router's connected subnets.
	RedistributeConnected bool
	// MultipathRelax lets paths through different neighbouring ASes share ECMP
	// (bgp bestpath as-path multipath-relax).
	MultipathRelax bool
	// MaximumPaths for eBGP and iBGP (default 8).
	MaximumPaths int
	// BGPLines are added verbatim under "router bgp".
	BGPLines []string
	// NoStart leaves FRR stopped (see Router.Start).
	NoStart bool
	// BFD starts bfdd too (between zebra and bgpd), for neighbours with Neighbor.BFD.
	BFD bool
}

// Neighbor is one BGP neighbour of a router. Both address families are activated on the
// session, whatever its transport's family.
type Neighbor struct {
	Address netip.Addr
	// ASN of the neighbour; 0 means "remote-as external" (any AS but the router's).
	ASN         uint32
	Description string
	// Password enables TCP MD5 (RFC 2385).
	Password string
	// ASOverride replaces the neighbour's AS with the router's in paths sent to it, so
	// nodes sharing a rack AS accept each other's routes.
	ASOverride           bool
	RouteReflectorClient bool
	NextHopSelf          bool
	Passive              bool
	// HoldTime in seconds (default 3; keepalive a third of it).
	HoldTime int
	// BFD runs a single-hop BFD session with the neighbour at bfdd's defaults (300ms x 3);
	// needs RouterOptions.BFD.
	BFD bool
	// BFDInterval and BFDMultiplier, when set, replace bfdd's defaults for this session
	// (receive and transmit interval, detect multiplier) through a bfd profile named after
	// them (BFDProfileName). FRR 8.4 takes whole milliseconds, 10 to 60000.
	BFDInterval   time.Duration
	BFDMultiplier int
	// BFDCheckControlPlane is "neighbor X bfd check-control-plane-failure": bfdd sends the C
	// bit set, and bgpd ignores a BFD down while the neighbour is in graceful restart if the
	// neighbour's packets had the C bit clear (its BFD shares fate with its control plane).
	BFDCheckControlPlane bool
}

// BFDProfileName is the name of the bfd profile neighbours with these timers use.
func BFDProfileName(interval time.Duration, multiplier int) string {
	return fmt.Sprintf("ms%dx%d", interval.Milliseconds(), multiplier)
}

// bfdProfile is the neighbour's profile name, "" for bfdd's defaults.
func (n Neighbor) bfdProfile() string {
	if !n.BFD || n.BFDInterval <= 0 {
		return ""
	}
	return BFDProfileName(n.BFDInterval, max(n.BFDMultiplier, 2))
}

// bfdProfileLines define the neighbour's bfd profile (at the configuration's top level).
func (n Neighbor) bfdProfileLines() []string {
	name := n.bfdProfile()
	if name == "" {
		return nil
	}
	ms := n.BFDInterval.Milliseconds()
	return []string{"bfd", " profile " + name,
		fmt.Sprintf("  detect-multiplier %d", max(n.BFDMultiplier, 2)),
		fmt.Sprintf("  receive-interval %d", ms),
		fmt.Sprintf("  transmit-interval %d", ms),
		" exit", "exit"}
}

// Router is an FRR router (zebra and bgpd, and bfdd with RouterOptions.BFD) in a namespace of its own.
type Router struct {
	Name string
	*NetNS
	ASN      uint32
	RouterID netip.Addr
	// Dir is FRR's path space for this router (FRRRunDir/<namespace name>): vty sockets,
	// pid files, ConfigPath and LogPath.
	Dir, ConfigPath, LogPath string

	lab  *Lab
	seq  int
	opts RouterOptions

	mu        sync.Mutex
	neighbors []Neighbor
	links     []*Link
	procs     []*frrProc
	saved     string // running configuration saved by Configure, used by the next Start
}

type frrProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// AddRouter creates a router's namespace, attaches it to its segments and (unless
// opts.NoStart) starts FRR with the generated configuration. Everything is removed in
// t.Cleanup; on failure FRR's log and BGP summary are printed first.
func (l *Lab) AddRouter(t testing.TB, name string, opts RouterOptions) *Router {
	t.Helper()
	if opts.ASN == 0 {
		t.Fatalf("lab: router %s: RouterOptions.ASN is required", name)
	}
	if opts.Host == 0 {
		opts.Host = 1
	}
	if opts.Host < 1 || opts.Host > 9 {
		t.Fatalf("lab: router %s: host number %d outside 1..9", name, opts.Host)
	}
	if opts.MaximumPaths == 0 {
		opts.MaximumPaths = 8
	}
	for _, p := range opts.daemons() {
		if _, err := os.Stat(filepath.Join(FRRDaemonDir, p)); err != nil {
			t.Fatalf("lab: router %s: %v (FRR is Debian's frr package)", name, err)
		}
	}
	l.topo.mu.Lock()
	if l.topo.routers == nil {
		l.topo.routers = map[string]*Router{}
	}
	if _, dup := l.topo.routers[name]; dup {
		l.topo.mu.Unlock()
		t.Fatalf("lab: a router named %s exists", name)
	}
	l.topo.routerSeq++
	seq := l.topo.routerSeq
	r := &Router{Name: name, ASN: opts.ASN, RouterID: opts.RouterID, lab: l, seq: seq, opts: opts}
	l.topo.routers[name] = r
	l.topo.mu.Unlock()
	if !r.RouterID.IsValid() {
		r.RouterID = netip.AddrFrom4([4]byte{198, 19, 255, byte(seq)})
	}
	r.neighbors = slices.Clone(opts.Neighbors)

	netns, err := CreateNetNS(fmt.Sprintf("%s-%s", l.Name, name))
	if err != nil {
		t.Fatalf("lab: router %s: %v", name, err)
	}
	r.NetNS = netns
	r.Dir = filepath.Join(FRRRunDir, netns.Name)
	r.ConfigPath = filepath.Join(r.Dir, "frr.conf")
	r.LogPath = filepath.Join(r.Dir, "frr.log")
	t.Cleanup(func() {
		if err := netns.Delete(); err != nil {
			t.Errorf("lab: %v", err)
		}
		_ = os.RemoveAll(r.Dir)
		l.topo.mu.Lock()
		delete(l.topo.routers, name)
		l.topo.mu.Unlock()
	})
	t.Cleanup(func() {
		if t.Failed() {
			if s, err := r.Vtysh("show bgp summary"); err == nil {
				t.Logf("lab: router %s: show bgp summary:\n%s", name, s)
			}
			t.Logf("lab: router %s: FRR log (%s):\n%s", name, r.LogPath, Tail(r.Log(), 80))
		}
		if err := r.Stop(); err != nil {
			t.Errorf("lab: router %s: %v", name, err)
		}
	})
	if err := frrDir(r.Dir); err != nil {
		t.Fatalf("lab: router %s: %v", name, err)
	}
	if err := netns.Do(func() error {
		for _, f := range []string{"ipv4/ip_forward", "ipv6/conf/all/forwarding", "ipv6/conf/default/keep_addr_on_down"} {
			if err := os.WriteFile("/proc/sys/net/"+f, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("lab: router %s: sysctl: %v", name, err)
	}
	for _, s := range opts.Segments {
		if err := r.attach(s); err != nil {
			t.Fatalf("lab: router %s: segment %s: %v", name, s.Name, err)
		}
	}
	if !opts.NoStart {
		if err := r.Start(); err != nil {
			t.Fatalf("lab: router %s: %v\n%s", name, err, Tail(r.Log(), 40))
		}
	}
	t.Logf("lab: router %s: AS %d, router ID %s, namespace %s", name, r.ASN, r.RouterID, netns.Name)
	return r
}

// frrDir creates dir (and FRRRunDir) owned by user and group frr, which FRR's daemons run as.
func frrDir(dir string) error {
	u, err := user.Lookup("frr")
	if err != nil {
		return fmt.Errorf("user frr: %w (FRR is Debian's frr package)", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, d := range []string{FRRRunDir, dir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := os.Chown(d, uid, gid); err != nil {
			return err
		}
	}
	return nil
}

func (r *Router) segPort(s *Segment) string { return fmt.Sprintf("r%ds%d", r.seq, s.Index) }

// SegmentInterface is the name of the router's interface on segment s.
func SegmentInterface(s *Segment) string { return fmt.Sprintf("seg%d", s.Index) }

func (r *Router) attach(s *Segment) error {
	port, ifname := r.segPort(s), SegmentInterface(s)
	if err := r.lab.Fabric.IP(
		[]string{"link", "add", port, "type", "veth", "peer", "name", ifname, "netns", r.NetNS.Name},
		[]string{"link", "set", port, "master", s.Bridge, "up"},
	); err != nil {
		return err
	}
	return r.IP(
		[]string{"addr", "add", netip.PrefixFrom(s.Addr4(r.opts.Host), s.PrefixV4.Bits()).String(), "dev", ifname},
		[]string{"addr", "add", netip.PrefixFrom(s.Addr6(r.opts.Host), s.PrefixV6.Bits()).String(), "dev", ifname, "nodad"},
		[]string{"link", "set", ifname, "up"},
	)
}

// Addr4 is the router's IPv4 address on segment s.
func (r *Router) Addr4(s *Segment) netip.Addr { return s.Addr4(r.opts.Host) }

// Addr6 is the router's IPv6 address on segment s.
func (r *Router) Addr6(s *Segment) netip.Addr { return s.Addr6(r.opts.Host) }

// SegmentPort sets the fabric end of the router's interface on s up or down: the router
// losing its rack.
func (r *Router) SegmentPort(s *Segment, up bool) error {
	return r.lab.Fabric.IP([]string{"link", "set", r.segPort(s), upDown(up)})
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

// Link is a point-to-point veth between two routers.
type Link struct {
	A, B         *Router
	Interface    string // the name of both ends
	AIPv4, BIPv4 netip.Addr
	AIPv6, BIPv6 netip.Addr
}

// Connect joins routers a and b with a veth link (198.19.L.1 and .2/24, 2001:db8:ffLL::1
// and ::2/64). It configures no BGP: see PeerRouters.
func (l *Lab) Connect(t testing.TB, a, b *Router) *Link {
	t.Helper()
	l.topo.mu.Lock()
	l.topo.linkSeq++
	seq := l.topo.linkSeq
	l.topo.mu.Unlock()
	k := &Link{
		A: a, B: b, Interface: fmt.Sprintf("link%d", seq),
		AIPv4: netip.AddrFrom4([4]byte{198, 19, byte(seq), 1}),
		BIPv4: netip.AddrFrom4([4]byte{198, 19, byte(seq), 2}),
		AIPv6: netip.MustParseAddr(fmt.Sprintf("2001:db8:ff%02x::1", seq)),
		BIPv6: netip.MustParseAddr(fmt.Sprintf("2001:db8:ff%02x::2", seq)),
	}
	if err := a.IP([]string{"link", "add", k.Interface, "type", "veth", "peer", "name", k.Interface, "netns", b.NetNS.Name}); err != nil {
		t.Fatalf("lab: link %s-%s: %v", a.Name, b.Name, err)
	}
	for _, end := range []struct {
		r      *Router
		v4, v6 netip.Addr
	}{{a, k.AIPv4, k.AIPv6}, {b, k.BIPv4, k.BIPv6}} {
		if err := end.r.IP(
			[]string{"addr", "add", end.v4.String() + "/24", "dev", k.Interface},
			[]string{"addr", "add", end.v6.String() + "/64", "dev", k.Interface, "nodad"},
			[]string{"link", "set", k.Interface, "up"},
		); err != nil {
			t.Fatalf("lab: link %s-%s: %v", a.Name, b.Name, err)
		}
	}
	a.mu.Lock()
	a.links = append(a.links, k)
	a.mu.Unlock()
	b.mu.Lock()
	b.links = append(b.links, k)
	b.mu.Unlock()
	return k
}

// Set sets both ends of the link up or down.
func (k *Link) Set(up bool) error {
	if err := k.A.IP([]string{"link", "set", k.Interface, upDown(up)}); err != nil {
		return err
	}
	return k.B.IP([]string{"link", "set", k.Interface, upDown(up)})
}

// PeerRouters connects a and b with a link and an eBGP (or iBGP, same AS) session over its
// IPv4 addresses, carrying both families; password, if not empty, on both ends.
func (l *Lab) PeerRouters(t testing.TB, a, b *Router, password string) *Link {
	t.Helper()
	k := l.Connect(t, a, b)
	if err := a.AddNeighbor(Neighbor{Address: k.BIPv4, ASN: b.ASN, Description: b.Name, Password: password}); err != nil {
		t.Fatalf("lab: %s: %v", a.Name, err)
	}
	if err := b.AddNeighbor(Neighbor{Address: k.AIPv4, ASN: a.ASN, Description: a.Name, Password: password}); err != nil {
		t.Fatalf("lab: %s: %v", b.Name, err)
	}
	return k
}

// Config renders the router's FRR configuration from its options and neighbours.
func (r *Router) Config() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.configLocked()
}

func (r *Router) configLocked() string {
	o := r.opts
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("frr defaults datacenter")
	w("hostname %s", r.Name)
	w("log file %s informational", r.LogPath)
	w("log timestamp precision 3")
	w("!")
	profiles := map[string]bool{}
	for _, n := range r.neighbors {
		if p := n.bfdProfile(); p != "" && !profiles[p] {
			profiles[p] = true
			for _, l := range n.bfdProfileLines() {
				w("%s", l)
			}
			w("!")
		}
	}
	w("router bgp %d", r.ASN)
	w(" bgp router-id %s", r.RouterID)
	w(" no bgp ebgp-requires-policy")
	w(" no bgp default ipv4-unicast")
	w(" no bgp network import-check")
	w(" bgp log-neighbor-changes")
	if o.MultipathRelax {
		w(" bgp bestpath as-path multipath-relax")
	}
	w(" timers bgp 1 3")
	for _, n := range r.neighbors {
		for _, l := range neighborLines(n) {
			w(" %s", l)
		}
	}
	for _, l := range o.BGPLines {
		w(" %s", l)
	}
	for _, v6 := range []bool{false, true} {
		w(" !")
		w(" address-family %s unicast", afi(v6))
		for _, p := range o.Networks {
			if p.Addr().Is6() == v6 {
				w("  network %s", p.Masked())
			}
		}
		if o.RedistributeConnected {
			w("  redistribute connected")
		}
		w("  maximum-paths %d", o.MaximumPaths)
		w("  maximum-paths ibgp %d", o.MaximumPaths)
		for _, n := range r.neighbors {
			for _, l := range neighborAFLines(n) {
				w("  %s", l)
			}
		}
		w(" exit-address-family")
	}
	w("exit")
	w("!")
	return b.String()
}

func afi(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}

// neighborLines are a neighbour's lines under "router bgp".
func neighborLines(n Neighbor) []string {
	a := n.Address.String()
	remote := "external"
	if n.ASN != 0 {
		remote = strconv.FormatUint(uint64(n.ASN), 10)
	}
	hold := n.HoldTime
	if hold == 0 {
		hold = 3
	}
	keep := max(hold/3, 1)
	out := []string{"neighbor " + a + " remote-as " + remote}
	if n.Description != "" {
		out = append(out, "neighbor "+a+" description "+n.Description)
	}
	if n.Password != "" {
		out = append(out, "neighbor "+a+" password "+n.Password)
	}
	out = append(out, fmt.Sprintf("neighbor %s timers %d %d", a, keep, hold), "neighbor "+a+" timers connect 1")
	if n.Passive {
		out = append(out, "neighbor "+a+" passive")
	}
	if n.BFD {
		out = append(out, "neighbor "+a+" bfd")
		if p := n.bfdProfile(); p != "" {
			out = append(out, "neighbor "+a+" bfd profile "+p)
		}
		if n.BFDCheckControlPlane {
			out = append(out, "neighbor "+a+" bfd check-control-plane-failure")
		}
	}
	return out
}

// neighborAFLines are a neighbour's lines in each address family.
func neighborAFLines(n Neighbor) []string {
	a := n.Address.String()
	out := []string{"neighbor " + a + " activate"}
	if n.ASOverride {
		out = append(out, "neighbor "+a+" as-override")
	}
	if n.RouteReflectorClient {
		out = append(out, "neighbor "+a+" route-reflector-client")
	}
	if n.NextHopSelf {
		out = append(out, "neighbor "+a+" next-hop-self")
	}
	return out
}

// Start writes the configuration (the saved running configuration if Configure changed it
// since, the generated one otherwise) and starts zebra, then bgpd. It is an error if FRR
// runs already.
func (r *Router) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.procs {
		if !exited(p.done) {
			return fmt.Errorf("router %s: %s is running", r.Name, p.name)
		}
	}
	r.procs = nil
	conf := r.saved
	if conf == "" {
		conf = r.configLocked()
	}
	if err := os.WriteFile(r.ConfigPath, []byte(conf), 0o640); err != nil {
		return err
	}
	if err := frrDir(r.Dir); err != nil {
		return err
	}
	if u, err := user.Lookup("frr"); err == nil {
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		_ = os.Chown(r.ConfigPath, uid, gid)
	}
	for _, d := range r.opts.daemons() {
		// Sockets of a killed run would make the wait below succeed at once.
		_ = os.Remove(filepath.Join(r.Dir, d+".vty"))
		p, err := r.startDaemon(d)
		if err != nil {
			return err
		}
		r.procs = append(r.procs, p)
		sock := filepath.Join(r.Dir, d+".vty")
		deadline := time.Now().Add(15 * time.Second)
		for {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if exited(p.done) {
				return fmt.Errorf("router %s: %s exited at start: %s", r.Name, d, Tail(r.daemonOutput(d), 20))
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("router %s: no %s after 15s", r.Name, sock)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

func (r *Router) daemonOutput(d string) string {
	b, _ := os.ReadFile(filepath.Join(r.Dir, d+".out"))
	return string(b)
}

func (r *Router) startDaemon(d string) (*frrProc, error) {
	out, err := os.OpenFile(filepath.Join(r.Dir, d+".out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	args := []string{"netns", "exec", r.NetNS.Name, filepath.Join(FRRDaemonDir, d),
		"-N", r.NetNS.Name, "-f", r.ConfigPath, "-i", filepath.Join(r.Dir, d+".pid")}
	p := &frrProc{name: d, cmd: exec.Command("ip", args...), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = out, out
	// The parent-death signal is cleared when the daemon drops its privileges; a router
	// left by a killed test run is removed by the next run's Sweep.
	if err := startTied(p.cmd, out, func(error) { close(p.done) }); err != nil {
		return nil, fmt.Errorf("router %s: start %s: %w", r.Name, d, err)
	}
	return p, nil
}

// daemons are FRR's daemons of the router, in start order.
func (o RouterOptions) daemons() []string {
	if o.BFD {
		return []string{"zebra", "bfdd", "bgpd"}
	}
	return []string{"zebra", "bgpd"}
}

// Running reports whether all of FRR's daemons run.
func (r *Router) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.procs) != len(r.opts.daemons()) {
		return false
	}
	for _, p := range r.procs {
		if exited(p.done) {
			return false
		}
	}
	return true
}

// Stop SIGTERMs bgpd and zebra (bgpd sends CEASE to its neighbours, zebra removes its
// routes from the kernel) and waits for them, SIGKILLing what is left after 10s. Stopping
// a stopped router is not an error.
func (r *Router) Stop() error { return r.signal(syscall.SIGTERM, 10*time.Second) }

// Kill SIGKILLs bgpd and zebra: a router crash. No CEASE is sent (neighbours notice when
// their hold timer expires) and zebra's routes stay in the router's kernel.
func (r *Router) Kill() error { return r.signal(syscall.SIGKILL, 0) }

func (r *Router) signal(sig syscall.Signal, grace time.Duration) error {
	r.mu.Lock()
	procs := slices.Clone(r.procs)
	r.mu.Unlock()
	var errs []error
	// bgpd first: it still talks to zebra on the way out.
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		if exited(p.done) {
			continue
		}
		if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, err)
			continue
		}
		if grace > 0 {
			select {
			case <-p.done:
				continue
			case <-time.After(grace):
				_ = p.cmd.Process.Kill()
			}
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			errs = append(errs, fmt.Errorf("router %s: %s (pid %d) still running 10s after SIGKILL", r.Name, p.name, p.cmd.Process.Pid))
		}
	}
	return errors.Join(errs...)
}

// Log is FRR's log so far (both daemons, every start).
func (r *Router) Log() string {
	b, err := os.ReadFile(r.LogPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)\nzebra: %s\nbgpd: %s", err, r.daemonOutput("zebra"), r.daemonOutput("bgpd"))
	}
	return string(b)
}

// Vtysh runs vtysh -N <namespace> with each command as a -c, and returns its standard
// output. An error carries vtysh's output when it fails or a command is refused ("% ...").
func (r *Router) Vtysh(cmds ...string) (string, error) {
	args := []string{"-N", r.NetNS.Name}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "vtysh", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	// vtysh warns on stderr about a missing per-namespace vtysh.conf: not an error.
	if err != nil {
		return string(out), fmt.Errorf("router %s: vtysh %q: %v: %s%s", r.Name, cmds, err, out, vtyshErrors(stderr.String()))
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "% ") && !strings.Contains(l, "vtysh.conf") {
			return string(out), fmt.Errorf("router %s: vtysh %q: %s", r.Name, cmds, strings.TrimSpace(string(out)))
		}
	}
	return string(out), nil
}

func vtyshErrors(stderr string) string {
	var keep []string
	for _, l := range strings.Split(stderr, "\n") {
		if l != "" && !strings.Contains(l, "vtysh.conf") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// VtyshJSON runs one command (ending in "json") and decodes its output into v.
func (r *Router) VtyshJSON(v any, cmd string) error {
	out, err := r.Vtysh(cmd)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("router %s: %s: decode %q: %w", r.Name, cmd, out, err)
	}
	return nil
}

// Configure applies configuration lines live (vtysh -c 'configure terminal' -c line ...),
// then saves the running configuration, so that the next Start keeps the change.
func (r *Router) Configure(lines ...string) error {
	if _, err := r.Vtysh(append([]string{"configure terminal"}, lines...)...); err != nil {
		return err
	}
	return r.saveRunning()
}

func (r *Router) saveRunning() error {
	out, err := r.Vtysh("show running-config")
	if err != nil {
		return err
	}
	// vtysh prints a header before the configuration proper.
	if i := strings.Index(out, "frr version"); i > 0 {
		out = out[i:]
	}
	r.mu.Lock()
	r.saved = out
	r.mu.Unlock()
	return nil
}

// AddNeighbor adds a neighbour: to the configuration of the next Start and, if FRR runs,
// live.
func (r *Router) AddNeighbor(n Neighbor) error {
	r.mu.Lock()
	r.neighbors = append(r.neighbors, n)
	saved := r.saved != ""
	r.mu.Unlock()
	if !r.Running() {
		if saved {
			return fmt.Errorf("router %s: stopped with a live-changed configuration: start it before adding a neighbour", r.Name)
		}
		return nil
	}
	// The profile first: bgpd refers to it by name.
	lines := append(n.bfdProfileLines(), fmt.Sprintf("router bgp %d", r.ASN))
	lines = append(lines, neighborLines(n)...)
	for _, v6 := range []bool{false, true} {
		lines = append(lines, "address-family "+afi(v6)+" unicast")
		lines = append(lines, neighborAFLines(n)...)
		lines = append(lines, "exit-address-family")
	}
	return r.Configure(lines...)
}

// SetNeighborBFD turns BFD on for a configured neighbour, live, with n's BFD settings
// (BFD, BFDInterval, BFDMultiplier, BFDCheckControlPlane); n.Address names the neighbour.
func (r *Router) SetNeighborBFD(n Neighbor) error {
	r.mu.Lock()
	for i := range r.neighbors {
		if r.neighbors[i].Address == n.Address {
			r.neighbors[i].BFD, r.neighbors[i].BFDInterval = n.BFD, n.BFDInterval
			r.neighbors[i].BFDMultiplier, r.neighbors[i].BFDCheckControlPlane = n.BFDMultiplier, n.BFDCheckControlPlane
		}
	}
	r.mu.Unlock()
	if !r.Running() || !n.BFD {
		return nil
	}
	lines := append(n.bfdProfileLines(), fmt.Sprintf("router bgp %d", r.ASN))
	for _, l := range neighborLines(n) {
		if strings.Contains(l, " bfd") {
			lines = append(lines, l)
		}
	}
	return r.Configure(lines...)
}

// RemoveNeighbor removes a neighbour (live if FRR runs).
func (r *Router) RemoveNeighbor(a netip.Addr) error {
	r.mu.Lock()
	r.neighbors = slices.DeleteFunc(r.neighbors, func(n Neighbor) bool { return n.Address == a })
	r.mu.Unlock()
	if !r.Running() {
		return nil
	}
	return r.Configure(fmt.Sprintf("router bgp %d", r.ASN), "no neighbor "+a.String())
}

// SetNeighborPassword sets (or with "" removes) a neighbour's MD5 password live; the
// session restarts with it.
func (r *Router) SetNeighborPassword(a netip.Addr, password string) error {
	r.mu.Lock()
	for i := range r.neighbors {
		if r.neighbors[i].Address == a {
			r.neighbors[i].Password = password
		}
	}
	r.mu.Unlock()
	line := "neighbor " + a.String() + " password " + password
	if password == "" {
		line = "no neighbor " + a.String() + " password"
	}
	if !r.Running() {
		return nil
	}
	return r.Configure(fmt.Sprintf("router bgp %d", r.ASN), line)
}

// BGPSummary is `show bgp summary json`, keyed by address family ("ipv4Unicast",
// "ipv6Unicast").
type BGPSummary map[string]AFSummary

// AFSummary is one address family of a BGP summary.
type AFSummary struct {
	RouterID string                 `json:"routerId"`
	AS       uint32                 `json:"as"`
	Peers    map[string]PeerSummary `json:"peers"`
}

// PeerSummary is one peer of a BGP summary.
type PeerSummary struct {
	RemoteAS   uint32 `json:"remoteAs"`
	LocalAS    uint32 `json:"localAs"`
	State      string `json:"state"` // Idle, Connect, Active, OpenSent, OpenConfirm, Established
	PeerState  string `json:"peerState"`
	PfxRcd     int    `json:"pfxRcd"`
	PfxSnt     int    `json:"pfxSnt"`
	Uptime     string `json:"peerUptime"`
	UptimeMsec int64  `json:"peerUptimeMsec"`
	Desc       string `json:"desc"`
}

// Family keys of BGPSummary.
const (
	IPv4Unicast = "ipv4Unicast"
	IPv6Unicast = "ipv6Unicast"
)

// BGPSummaryJSON is `show bgp summary json`: every address family with its peers.
func (r *Router) BGPSummaryJSON() (BGPSummary, error) {
	var s BGPSummary
	err := r.VtyshJSON(&s, "show bgp summary json")
	return s, err
}

// Established reports an error unless FRR's sessions with every address given are
// established, with both address families exchanged.
func (r *Router) Established(peers ...netip.Addr) error {
	s, err := r.BGPSummaryJSON()
	if err != nil {
		return err
	}
	for _, p := range peers {
		for _, af := range []string{IPv4Unicast, IPv6Unicast} {
			ps, ok := s[af].Peers[p.String()]
			if !ok {
				return fmt.Errorf("router %s: no %s peer %s", r.Name, af, p)
			}
			if ps.State != "Established" {
				return fmt.Errorf("router %s: %s session with %s is %s (%s)", r.Name, af, p, ps.State, ps.PeerState)
			}
		}
	}
	return nil
}

// NotEstablished reports an error while FRR's session with p is established.
func (r *Router) NotEstablished(p netip.Addr) error {
	s, err := r.BGPSummaryJSON()
	if err != nil {
		return err
	}
	if ps := s[IPv4Unicast].Peers[p.String()]; ps.State == "Established" {
		return fmt.Errorf("router %s: session with %s established", r.Name, p)
	}
	return nil
}

// NeighborJSON is `show bgp neighbors ADDR json` for one neighbour, as decoded JSON
// (bgpState, lastErrorCodeSubcode, lastNotificationReason, connectionsEstablished, ...).
func (r *Router) NeighborJSON(a netip.Addr) (map[string]any, error) {
	var m map[string]map[string]any
	if err := r.VtyshJSON(&m, "show bgp neighbors "+a.String()+" json"); err != nil {
		return nil, err
	}
	n, ok := m[a.String()]
	if !ok {
		return nil, fmt.Errorf("router %s: no neighbour %s", r.Name, a)
	}
	return n, nil
}

// RIBRoute is one route of `show ip route json` / `show ipv6 route json`.
type RIBRoute struct {
	Prefix    string       `json:"prefix"`
	Protocol  string       `json:"protocol"` // bgp, connected, kernel, ...
	Selected  bool         `json:"selected"`
	Installed bool         `json:"installed"`
	Distance  int          `json:"distance"`
	Metric    int          `json:"metric"`
	Nexthops  []RIBNexthop `json:"nexthops"`
}

// RIBNexthop is one next hop of a RIB route.
type RIBNexthop struct {
	IP            string `json:"ip"`
	Afi           string `json:"afi"`
	InterfaceName string `json:"interfaceName"`
	Active        bool   `json:"active"`
	FIB           bool   `json:"fib"`
	Connected     bool   `json:"directlyConnected"`
}

// RIB is zebra's routing table of one family, by prefix.
type RIB map[string][]RIBRoute

// RoutesJSON is zebra's RIB of family "ipv4" or "ipv6" (show ip route json / show ipv6
// route json).
func (r *Router) RoutesJSON(family string) (RIB, error) {
	cmd := "show ip route json"
	switch family {
	case "ipv4":
	case "ipv6":
		cmd = "show ipv6 route json"
	default:
		return nil, fmt.Errorf("family %q: want ipv4 or ipv6", family)
	}
	var rib RIB
	err := r.VtyshJSON(&rib, cmd)
	return rib, err
}

// BGPRoute returns the selected, installed BGP route for p with its active next hops, or
// an error naming what there is instead.
func (r *Router) BGPRoute(p netip.Prefix) ([]netip.Addr, error) {
	fam := "ipv4"
	if p.Addr().Is6() {
		fam = "ipv6"
	}
	rib, err := r.RoutesJSON(fam)
	if err != nil {
		return nil, err
	}
	for _, rt := range rib[p.String()] {
		if rt.Protocol != "bgp" || !rt.Selected || !rt.Installed {
			continue
		}
		var nhs []netip.Addr
		for _, nh := range rt.Nexthops {
			if a, err := netip.ParseAddr(nh.IP); err == nil && nh.Active {
				nhs = append(nhs, a)
			}
		}
		slices.SortFunc(nhs, netip.Addr.Compare)
		return nhs, nil
	}
	return nil, fmt.Errorf("router %s: no selected, installed BGP route for %s (RIB: %+v)", r.Name, p, rib[p.String()])
}

// KernelRoutes is `ip route show` and `ip -6 route show` in the router's namespace.
func (r *Router) KernelRoutes() (string, error) {
	v4, err := r.IPOutput("route", "show")
	if err != nil {
		return "", err
	}
	v6, err := r.IPOutput("-6", "route", "show")
	return v4 + v6, err
}

// KernelRoute is `ip route show exact PREFIX` in the router's namespace ("" if none).
func (r *Router) KernelRoute(p netip.Prefix) (string, error) {
	args := []string{"route", "show", "exact", p.String()}
	if p.Addr().Is6() {
		args = append([]string{"-6"}, args...)
	}
	out, err := r.IPOutput(args...)
	return strings.TrimSpace(out), err
}

// sweepFRR removes the FRR directories of lab runs whose process is gone (their daemons
// were killed with their namespaces by Sweep).
func sweepFRR() {
	entries, err := os.ReadDir(FRRRunDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), NamePrefix)
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		_ = os.RemoveAll(filepath.Join(FRRRunDir, e.Name()))
	}
}

// BFDPeers is bfdd's view of its sessions: peer address → status (up, down, init,
// shutdown).
func (r *Router) BFDPeers() (map[string]string, error) {
	var peers []struct {
		Peer   string `json:"peer"`
		Status string `json:"status"`
	}
	if err := r.VtyshJSON(&peers, "show bfd peers json"); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, p := range peers {
		out[p.Peer] = p.Status
	}
	return out, nil
}

// BFDCounter is one bfdd session's counters (show bfd peers counters json).
type BFDCounter struct {
	Peer        string `json:"peer"`
	Interface   string `json:"interface"`
	SessionUp   int    `json:"session-up"`
	SessionDown int    `json:"session-down"`
	PacketsIn   int    `json:"control-packet-input"`
	PacketsOut  int    `json:"control-packet-output"`
}

// BFDCounters is bfdd's counters by peer address: how often each session came up and went
// down since it was created.
func (r *Router) BFDCounters() (map[string]BFDCounter, error) {
	var cs []BFDCounter
	if err := r.VtyshJSON(&cs, "show bfd peers counters json"); err != nil {
		return nil, err
	}
	out := map[string]BFDCounter{}
	for _, c := range cs {
		out[c.Peer] = c
	}
	return out, nil
}

// BFDSession is one bfdd session of show bfd peers json: its state and the timers in force
// (milliseconds), its own and the peer's.
type BFDSession struct {
	Peer                   string `json:"peer"`
	Status                 string `json:"status"`
	DetectMultiplier       int    `json:"detect-multiplier"`
	ReceiveInterval        int    `json:"receive-interval"`
	TransmitInterval       int    `json:"transmit-interval"`
	RemoteDetectMultiplier int    `json:"remote-detect-multiplier"`
	RemoteReceiveInterval  int    `json:"remote-receive-interval"`
	RemoteTransmitInterval int    `json:"remote-transmit-interval"`
}

// BFDSessions is bfdd's sessions by peer address.
func (r *Router) BFDSessions() (map[string]BFDSession, error) {
	var ss []BFDSession
	if err := r.VtyshJSON(&ss, "show bfd peers json"); err != nil {
		return nil, err
	}
	out := map[string]BFDSession{}
	for _, s := range ss {
		out[s.Peer] = s
	}
	return out, nil
}
