// Package agentbench measures podroute's node agent and data path on the multi-node lab
// (package test/lab: a real kube-apiserver, node network namespaces on a fabric bridge,
// podroute-agent per node, pods wired by the real plugin):
//
//   - BenchmarkNodeConvergence: Node object created -> route installed on every other node,
//     and Node object deleted -> routes gone everywhere;
//   - BenchmarkRouteScale: an external BGP peer (a BGPPeer object) announces 10,000 prefixes
//     to a node's podroute-agent; time until all are kernel routes and until all are gone
//     again, agent memory, against `ip -batch` installing the same routes;
//   - BenchmarkDataPath: pod-to-pod TCP throughput and request/response latency across two
//     nodes, against two namespaces joined by a bare veth pair and against the two nodes
//     talking over the same fabric;
//   - BenchmarkNodeFailure: a node dies (switch port down, agent SIGKILLed): time until its
//     routes are gone from the other nodes' kernels, per BGP timer and graceful-restart
//     setting;
//   - BenchmarkSessionScale: one agent with 200 external BGP peers (a farm of GoBGP
//     speakers): time to establish, steady-state CPU and memory, against 3 peers;
//   - BenchmarkMeshScale: a full iBGP mesh of 50 agents against 3: bring-up, joins and
//     leaves, steady-state CPU and memory per agent;
//   - BenchmarkReflectorScale: 1,000 nodes with the mesh off and two route reflectors, the
//     reflectors and a few clients real agents, the other nodes Node objects and speakers
//     of a farm: start-up, steady state of the reflectors, joins, 10 % churn without a
//     flap, a fresh client's start-up.
//
// Run them (as root, after make build) with
//
//	go test -run '^$' -bench . -benchtime 1x ./test/agentbench/
//
// Each benchmark prints its tables (markdown) on standard output. Knobs (environment):
// AGENTBENCH_NODES (convergence rounds, default 10), AGENTBENCH_ROUTES (default 10000),
// AGENTBENCH_REPS (data-path repetitions, default 5), AGENTBENCH_SECONDS (seconds per
// throughput run, default 5), AGENTBENCH_RR (round trips per latency run, default 10000),
// AGENTBENCH_AGENT_ARGS (extra podroute-agent flags for the data-path lab, e.g.
// --masquerade=false), AGENTBENCH_FAILURE_REPS (failures per setting, default 5),
// AGENTBENCH_FAILURE_SETTINGS (comma-separated: tuned-nogr, tuned, default-nogr, default;
// default all), AGENTBENCH_PEERS (session scale, default 200), AGENTBENCH_STEADY_SECONDS
// (steady window of the session, mesh and reflector scales, default 60),
// AGENTBENCH_MESH_NODES (default 50), AGENTBENCH_MESH_ROUNDS (joins and leaves per mesh size
// and mode, default 5), AGENTBENCH_MESH_START_DELAY_MS (Node object to agent start in the
// second join mode, default 3000), AGENTBENCH_RR_NODES (reflector scale: nodes in all,
// default 1000), AGENTBENCH_RR_CLIENTS (real client agents, default 4), AGENTBENCH_RR_JOINS
// (default 5), AGENTBENCH_RR_HOLD_SECONDS (BGP hold time there, default 9),
// AGENTBENCH_RR_AGENT_ARGS (extra podroute-agent flags there), AGENTBENCH_RR_DUAL_STACK (1: a
// dual-stack cluster; default IPv4 only, like the emulated nodes).
// The package has no tests: plain go test only compiles it.
package agentbench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podroute/podroute/routes"
	"github.com/podroute/podroute/test/lab"
	"github.com/podroute/podroute/test/scaleplot"
)

// converge bounds how long a routing change may take in the lab.
const converge = 60 * time.Second

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// loadavg is the first three fields of /proc/loadavg.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// machine describes the host in one line.
func machine() string {
	model := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	return fmt.Sprintf("nproc %d, CPU %q, kernel %s, %s", runtime.NumCPU(), model, strings.TrimSpace(string(kernel)), runtime.Version())
}

func header(b *testing.B, what string) string {
	load := loadavg()
	fmt.Printf("\n### %s\n\n%s; %s; load average at start %s\n\n", what, time.Now().Format("2006-01-02 15:04"), machine(), load)
	return load
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }
func us(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Microsecond)) }

// median of a non-empty slice (the lower middle for an even count).
func median[T int64 | float64 | time.Duration](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// pct is the nearest-rank percentile p (0..100) of xs.
func pct(xs []time.Duration, p float64) time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(p/100*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

// ready waits for the agent's own view (podroutectl status) to be ready.
func ready(b *testing.B, n *lab.Node) {
	b.Helper()
	lab.Eventually(b, converge, n.Name+" ready", func() error {
		st, err := n.Status()
		if err != nil {
			return err
		}
		if !st.Ready {
			return fmt.Errorf("%s not ready: %v", n.Name, st.NotReadyReasons)
		}
		return nil
	})
}

// meshed waits until every node routes every other node's pod CIDRs via that node.
func meshed(b *testing.B, nodes []*lab.Node) {
	b.Helper()
	lab.Eventually(b, converge, "mesh routes", func() error {
		for _, n := range nodes {
			for _, o := range nodes {
				if o == n {
					continue
				}
				for _, p := range o.PodCIDRs {
					via := o.IPv4
					if p.Addr().Is6() {
						via = o.IPv6
					}
					if err := n.RouteVia(p, via); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
}

// routeEvent is one change to a podroute (protocol 201) route as the kernel announced it.
type routeEvent struct {
	at      time.Time
	add     bool // RTM_NEWROUTE; else RTM_DELROUTE
	prefix  netip.Prefix
	gateway bool       // a route via a next hop (not a blackhole, not a pod's device route)
	via     netip.Addr // the gateway of a single-path route
}

// routeWatch records, with the time each arrived, the kernel's announcements of protocol
// 201 route changes in one network namespace (rtnetlink multicast: no polling).
type routeWatch struct {
	name string
	mu   sync.Mutex
	ev   []routeEvent
	err  error
	cond chan struct{} // closed and replaced on every event
}

func watchRoutes(b testing.TB, ns *lab.NetNS) *routeWatch {
	b.Helper()
	h, err := netns.GetFromPath(ns.Path)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	w := &routeWatch{name: ns.Name, cond: make(chan struct{})}
	ch := make(chan netlink.RouteUpdate, 4096)
	done := make(chan struct{})
	err = netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
		Namespace:              &h,
		ReceiveBufferSize:      32 << 20,
		ReceiveBufferForceSize: true,
		ErrorCallback: func(err error) {
			w.mu.Lock()
			if w.err == nil {
				w.err = err
			}
			w.mu.Unlock()
		},
	})
	if err != nil {
		b.Fatalf("watch routes in %s: %v", ns.Name, err)
	}
	b.Cleanup(func() { close(done) })
	go func() {
		for u := range ch {
			now := time.Now()
			if u.Route.Protocol != routes.Protocol || u.Route.Dst == nil {
				continue
			}
			if u.Type != unix.RTM_NEWROUTE && u.Type != unix.RTM_DELROUTE {
				continue
			}
			a, ok := netip.AddrFromSlice(u.Route.Dst.IP)
			if !ok {
				continue
			}
			ones, _ := u.Route.Dst.Mask.Size()
			gw := u.Route.Gw != nil || len(u.Route.MultiPath) > 0
			var via netip.Addr
			if g, ok := netip.AddrFromSlice(u.Route.Gw); ok {
				via = g.Unmap()
			}
			w.mu.Lock()
			w.ev = append(w.ev, routeEvent{at: now, add: u.Type == unix.RTM_NEWROUTE, prefix: netip.PrefixFrom(a.Unmap(), ones), gateway: gw, via: via})
			close(w.cond)
			w.cond = make(chan struct{})
			w.mu.Unlock()
		}
	}()
	return w
}

// find returns the time of the first event after t matching f.
func (w *routeWatch) find(after time.Time, f func(routeEvent) bool) (time.Time, bool, <-chan struct{}, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.ev {
		if !e.at.Before(after) && f(e) {
			return e.at, true, nil, w.err
		}
	}
	return time.Time{}, false, w.cond, w.err
}

// waitEvent waits until an event after t matches f and returns its time.
func (w *routeWatch) waitEvent(ctx context.Context, after time.Time, f func(routeEvent) bool) (time.Time, error) {
	for {
		at, ok, cond, err := w.find(after, f)
		if err != nil {
			return time.Time{}, fmt.Errorf("route watch in %s: %w", w.name, err)
		}
		if ok {
			return at, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-cond:
		}
	}
}

// routeAdded waits for p to be added (with a next hop) after t.
func (w *routeWatch) routeAdded(ctx context.Context, after time.Time, p netip.Prefix) (time.Time, error) {
	return w.waitEvent(ctx, after, func(e routeEvent) bool { return e.add && e.gateway && e.prefix == p })
}

// routeDeleted waits for p to be deleted after t.
func (w *routeWatch) routeDeleted(ctx context.Context, after time.Time, p netip.Prefix) (time.Time, error) {
	return w.waitEvent(ctx, after, func(e routeEvent) bool { return !e.add && e.prefix == p })
}

// countAfter waits until events after t matching f concern count distinct prefixes; it
// returns the times of the first such event and of the one completing the count.
func (w *routeWatch) countAfter(ctx context.Context, after time.Time, count int, f func(routeEvent) bool) (first, last time.Time, err error) {
	seen := map[netip.Prefix]bool{}
	next := 0
	for {
		w.mu.Lock()
		evs, cond, werr := w.ev[next:], w.cond, w.err
		next = len(w.ev)
		w.mu.Unlock()
		if werr != nil {
			return first, last, fmt.Errorf("route watch in %s: %w", w.name, werr)
		}
		for _, e := range evs {
			if e.at.Before(after) || !f(e) || seen[e.prefix] {
				continue
			}
			seen[e.prefix] = true
			if first.IsZero() {
				first = e.at
			}
			if len(seen) == count {
				return first, e.at, nil
			}
		}
		select {
		case <-ctx.Done():
			return first, last, fmt.Errorf("%d of %d routes: %w", len(seen), count, ctx.Err())
		case <-cond:
		}
	}
}

// countRoutes dumps the namespace's protocol 201 routes with a next hop, both families.
func countRoutes(ns *lab.NetNS) (int, error) {
	h, err := netns.GetFromPath(ns.Path)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return 0, err
	}
	defer nh.Close()
	rs, err := nh.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: routes.Protocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range rs {
		if r.Protocol == routes.Protocol && (r.Gw != nil || len(r.MultiPath) > 0) {
			n++
		}
	}
	return n, nil
}

// procMemory is a process's memory from /proc/PID/status, in KiB: VmRSS, VmHWM, and
// RssAnon, its own resident memory (VmRSS without the pages of the files it maps, its
// executable's above all, which the page cache shares and can reclaim).
type procMemory struct{ rss, hwm, anon int }

func memKiB(pid int) (procMemory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMemory{}, err
	}
	var m procMemory
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "VmRSS:":
			m.rss = v
		case "VmHWM:":
			m.hwm = v
		case "RssAnon:":
			m.anon = v
		}
	}
	if m.rss == 0 {
		return procMemory{}, errors.New("no VmRSS")
	}
	return m, nil
}

// rssKiB is VmRSS and VmHWM of a process, in KiB.
func rssKiB(pid int) (rss, hwm int, err error) {
	m, err := memKiB(pid)
	return m.rss, m.hwm, err
}

func mib(kib int) string { return fmt.Sprintf("%.1f", float64(kib)/1024) }

// recordScale adds a scale benchmark's figures at one cluster size to the plot of
// convergence and memory against cluster size (docs/scale.svg and its data, docs/scale.json)
// when AGENTBENCH_RECORD names that directory (e.g. ../../docs from this package); the
// point replaces an earlier one of the same topology and size, dated today by Record.
func recordScale(b *testing.B, p scaleplot.Point) {
	b.Helper()
	dir := os.Getenv("AGENTBENCH_RECORD")
	if dir == "" {
		return
	}
	p.Machine = fmt.Sprintf("%d vCPU", runtime.NumCPU())
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		p.Commit = strings.TrimSpace(string(out))
	}
	if err := scaleplot.Record(dir, p); err != nil {
		b.Errorf("record the scale figures: %v", err)
		return
	}
	fmt.Printf("recorded %s at %d nodes in %s\n", p.Topology, p.Nodes, dir)
}
