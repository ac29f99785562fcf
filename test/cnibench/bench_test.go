// Package cnibench measures podroute's CNI ADD and DEL latency against the reference ptp +
// host-local plugins, in the same run, on the same machine, through libcni, with comparable
// configurations (same MTU, same pod subnets, ptp without masquerading).
//
//	go test -run '^$' -bench . -benchtime 1x ./test/cnibench/
//
// Knobs (environment): CNIBENCH_PODS (pods per run, default 100), CNIBENCH_PARALLEL (pods in
// flight in the concurrent mode, default 16), CNIBENCH_PLUGINS (comma-separated subset of
// "podroute,ptp", default both), CNIBENCH_FAMILIES (comma-separated subset of "v4,dual",
// default both).
package cnibench

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/podroute/podroute/test/cniutil"
)

type plugin struct {
	name string
	conf func(cniutil.Net) []byte
}

var allPlugins = []plugin{
	{"podroute", cniutil.Net.Podroute},
	{"ptp", cniutil.Net.Ptp},
}

type variant struct {
	name   string
	ranges [][]cniutil.Range
}

var allVariants = []variant{
	{"v4", [][]cniutil.Range{cniutil.V4}},
	{"dual", [][]cniutil.Range{cniutil.V4, cniutil.V6}},
}

func selectedVariants(b *testing.B) []variant {
	want := os.Getenv("CNIBENCH_FAMILIES")
	var vs []variant
	for _, v := range allVariants {
		if want == "" || slices.Contains(strings.Split(want, ","), v.name) {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		b.Fatalf("CNIBENCH_FAMILIES=%q selects none of v4, dual", want)
	}
	return vs
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func selectedPlugins(b *testing.B) []plugin {
	want := os.Getenv("CNIBENCH_PLUGINS")
	var ps []plugin
	for _, p := range allPlugins {
		if want == "" || slices.Contains(strings.Split(want, ","), p.name) {
			ps = append(ps, p)
		}
	}
	for _, p := range ps {
		switch p.name {
		case "podroute":
			cniutil.RequirePodroute(b)
		case "ptp":
			cniutil.RequireRefPlugins(b, "ptp", "host-local")
		}
	}
	if len(ps) == 0 {
		b.Fatalf("CNIBENCH_PLUGINS=%q selects none of podroute, ptp", want)
	}
	return ps
}

// samples are the latencies of one (variant, mode, plugin) run.
type samples struct {
	add, del   []time.Duration
	addW, delW time.Duration // wall time of the whole ADD and DEL phases
}

type key struct{ variant, mode, plugin string }

// BenchmarkAddDel runs, for each address family variant and for sequential and concurrent
// pod creation, every pod's ADD and then every pod's DEL through libcni, for each plugin, and
// prints p50/p99 per figure with the podroute/ptp ratio.
//
// The plugins are measured side by side so that both see the same machine: sequentially, they
// take turns pod by pod (each on its own node namespace and pods); concurrently, one plugin's
// whole phase runs after the other's, the order alternating from one variant to the next.
func BenchmarkAddDel(b *testing.B) {
	plugins := selectedPlugins(b)
	variants := selectedVariants(b)
	nPods := envInt("CNIBENCH_PODS", 100)
	par := envInt("CNIBENCH_PARALLEL", 16)
	rounds := envInt("CNIBENCH_ROUNDS", 3)
	modes := []string{"seq", fmt.Sprintf("par%d", par)}

	// Each plugin gets its own pods, made once and reused: after a DEL they are empty again.
	pods := map[string][]*cniutil.Pod{}
	for _, p := range plugins {
		for i := range nPods {
			pod := cniutil.NewPodNS(b)
			pod.Name = fmt.Sprintf("bench-%d", i)
			pods[p.name] = append(pods[p.name], pod)
		}
	}

	load := [2]string{loadavg()}
	results := map[key]*samples{}
	for vi, v := range variants {
		for _, m := range modes {
			b.Run(v.name+"/"+m, func(b *testing.B) {
				for range b.N {
					order := slices.Clone(plugins)
					if vi%2 == 1 {
						slices.Reverse(order)
					}
					var got map[string]*samples
					if m == "seq" {
						got = runLockstep(b, order, v, pods)
					} else {
						// Concurrent phases cannot take turns call by call, so each plugin
						// runs several rounds, alternating who goes first, and the samples
						// are pooled: a load change on the machine then hits both alike.
						got = map[string]*samples{}
						for r := range rounds {
							ro := slices.Clone(order)
							if r%2 == 1 {
								slices.Reverse(ro)
							}
							for _, p := range ro {
								s := runConcurrent(b, p, v, pods[p.name], par)
								if prev := got[p.name]; prev != nil {
									prev.add, prev.del = append(prev.add, s.add...), append(prev.del, s.del...)
									prev.addW, prev.delW = prev.addW+s.addW, prev.delW+s.delW
								} else {
									got[p.name] = s
								}
							}
						}
					}
					for name, s := range got {
						k := key{v.name, m, name}
						if prev := results[k]; prev != nil {
							prev.add = append(prev.add, s.add...)
							prev.del = append(prev.del, s.del...)
							prev.addW += s.addW
							prev.delW += s.delW
						} else {
							results[k] = s
						}
					}
				}
				for _, p := range plugins {
					s := results[key{v.name, m, p.name}]
					b.ReportMetric(ms(pct(s.add, 50)), "add-p50-ms-"+p.name)
					b.ReportMetric(ms(pct(s.add, 99)), "add-p99-ms-"+p.name)
					b.ReportMetric(ms(pct(s.del, 50)), "del-p50-ms-"+p.name)
					b.ReportMetric(ms(pct(s.del, 99)), "del-p99-ms-"+p.name)
				}
				b.ReportMetric(0, "ns/op") // the figures above are the result
			})
		}
	}
	floor := execFloor(b, plugins)
	load[1] = loadavg()
	printTable(plugins, variants, modes, results, nPods, floor, load)
}

// setup is one plugin's node and network, warmed up.
type setup struct {
	p    plugin
	node *cniutil.Node
	list *libcni.NetworkConfigList
}

// newSetup makes a fresh node namespace and IPAM directory for p, and warms them up: the
// binaries into the page cache and the lazily created state (IPAM directory, sysctls) into
// being, with an untimed ADD and DEL of a spare pod.
func newSetup(b *testing.B, p plugin, v variant) *setup {
	b.Helper()
	s := &setup{p: p, node: cniutil.NewNode(b)}
	s.list = cniutil.MustList(b, p.conf(cniutil.Net{DataDir: b.TempDir(), Ranges: v.ranges}))
	spare := cniutil.NewPodNS(b)
	ctx := context.Background()
	for range 2 {
		if _, err := s.node.Add(ctx, s.list, spare.RuntimeConf()); err != nil {
			b.Fatalf("%s warm-up ADD: %v", p.name, err)
		}
		if err := s.node.Del(ctx, s.list, spare.RuntimeConf()); err != nil {
			b.Fatalf("%s warm-up DEL: %v", p.name, err)
		}
	}
	if err := spare.Destroy(); err != nil {
		b.Fatal(err)
	}
	return s
}

func (s *setup) add(pod *cniutil.Pod) error {
	_, err := s.node.Add(context.Background(), s.list, pod.RuntimeConf())
	if err != nil {
		return fmt.Errorf("%s ADD %s: %w", s.p.name, pod.Name, err)
	}
	return nil
}

func (s *setup) del(pod *cniutil.Pod) error {
	if err := s.node.Del(context.Background(), s.list, pod.RuntimeConf()); err != nil {
		return fmt.Errorf("%s DEL %s: %w", s.p.name, pod.Name, err)
	}
	return nil
}

// teardown removes the node and lets the kernel finish destroying the namespace (it does so
// asynchronously, under locks every ADD needs) before anything else is measured.
func teardown(b *testing.B, setups ...*setup) {
	b.Helper()
	for _, s := range setups {
		if err := s.node.Destroy(); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
}

// runLockstep adds every pod, then deletes every pod, one call at a time, the plugins taking
// turns pod by pod so that both see the same moment-to-moment load.
func runLockstep(b *testing.B, order []plugin, v variant, pods map[string][]*cniutil.Pod) map[string]*samples {
	b.Helper()
	var setups []*setup
	out := map[string]*samples{}
	for _, p := range order {
		setups = append(setups, newSetup(b, p, v))
		out[p.name] = &samples{}
	}
	for phase, op := range []func(*setup, *cniutil.Pod) error{(*setup).add, (*setup).del} {
		for i := range len(pods[order[0].name]) {
			for j := range setups {
				s := setups[(i+j)%len(setups)] // who goes first changes every pod
				t0 := time.Now()
				if err := op(s, pods[s.p.name][i]); err != nil {
					b.Fatal(err)
				}
				d := time.Since(t0)
				r := out[s.p.name]
				if phase == 0 {
					r.add, r.addW = append(r.add, d), r.addW+d
				} else {
					r.del, r.delW = append(r.del, d), r.delW+d
				}
			}
		}
	}
	teardown(b, setups...)
	return out
}

// runConcurrent adds every pod, then deletes every pod, par calls in flight, for one plugin.
func runConcurrent(b *testing.B, p plugin, v variant, pods []*cniutil.Pod, par int) *samples {
	b.Helper()
	s := newSetup(b, p, v)
	r := &samples{}
	var err error
	if r.add, r.addW, err = timeAll(pods, par, s.add); err != nil {
		b.Fatal(err)
	}
	if r.del, r.delW, err = timeAll(pods, par, s.del); err != nil {
		b.Fatal(err)
	}
	teardown(b, s)
	return r
}

// loadavg is the first three fields of /proc/loadavg.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// timeAll runs op for every pod, par at a time, and returns each call's latency and the
// wall time of the whole.
func timeAll(pods []*cniutil.Pod, par int, op func(*cniutil.Pod) error) ([]time.Duration, time.Duration, error) {
	lat := make([]time.Duration, len(pods))
	errs := make([]error, len(pods))
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t0 := time.Now()
				errs[i] = op(pods[i])
				lat[i] = time.Since(t0)
			}
		}()
	}
	for i := range pods {
		next <- i
	}
	close(next)
	wg.Wait()
	wall := time.Since(start)
	for i, err := range errs {
		if err != nil {
			return nil, 0, fmt.Errorf("pod %d: %w", i, err)
		}
	}
	return lat, wall, nil
}

// execFloor times a bare VERSION run of each plugin binary involved: the cost of exec'ing a
// plugin at all, which every ADD and DEL pays once per binary it runs.
func execFloor(b *testing.B, plugins []plugin) map[string]time.Duration {
	b.Helper()
	bins := map[string]string{}
	for _, p := range plugins {
		switch p.name {
		case "podroute":
			bins["podroute"] = cniutil.PodroutePath()
		case "ptp":
			bins["ptp"] = filepath.Join(cniutil.RefDir(), "ptp")
			bins["host-local"] = filepath.Join(cniutil.RefDir(), "host-local")
		}
	}
	floor := map[string]time.Duration{}
	for name, path := range bins {
		var lat []time.Duration
		for range 100 {
			cmd := exec.Command(path)
			cmd.Env = []string{"CNI_COMMAND=VERSION"}
			cmd.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
			t0 := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("%s VERSION: %v: %s", path, err, out)
			}
			lat = append(lat, time.Since(t0))
		}
		floor[name] = pct(lat, 50)
	}
	return floor
}

// pct is the nearest-rank percentile.
func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := (p*len(s) + 99) / 100 // ceil(p/100 * n)
	return s[max(rank, 1)-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func printTable(plugins []plugin, variants []variant, modes []string, results map[key]*samples, nPods int, floor map[string]time.Duration, load [2]string) {
	has := func(name string) bool {
		return slices.ContainsFunc(plugins, func(p plugin) bool { return p.name == name })
	}
	both := has("podroute") && has("ptp")
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nCNI latency through libcni, %d pods per run, milliseconds (ratio = podroute / ptp+host-local)\n", nPods)
	fmt.Fprintf(&sb, "load average at start %s, at end %s\n", load[0], load[1])
	fmt.Fprintf(&sb, "%-6s %-6s %-4s %-4s", "family", "mode", "op", "pct")
	for _, p := range plugins {
		fmt.Fprintf(&sb, " %10s", p.name)
	}
	if both {
		fmt.Fprintf(&sb, " %7s", "ratio")
	}
	sb.WriteString("\n")
	for _, v := range variants {
		for _, m := range modes {
			for _, op := range []string{"ADD", "DEL"} {
				for _, q := range []int{50, 99} {
					fmt.Fprintf(&sb, "%-6s %-6s %-4s p%-3d", v.name, m, op, q)
					vals := map[string]time.Duration{}
					for _, p := range plugins {
						s := results[key{v.name, m, p.name}]
						if s == nil {
							fmt.Fprintf(&sb, " %10s", "-")
							continue
						}
						d := s.del
						if op == "ADD" {
							d = s.add
						}
						vals[p.name] = pct(d, q)
						fmt.Fprintf(&sb, " %10.2f", ms(vals[p.name]))
					}
					if both && vals["ptp"] > 0 {
						fmt.Fprintf(&sb, " %7.2f", float64(vals["podroute"])/float64(vals["ptp"]))
					}
					sb.WriteString("\n")
				}
			}
		}
	}
	sb.WriteString("\nexec floor: one CNI_COMMAND=VERSION run of each binary, p50 of 100, milliseconds\n")
	for _, name := range slices.Sorted(maps.Keys(floor)) {
		fmt.Fprintf(&sb, "%-12s %6.2f\n", name, ms(floor[name]))
	}
	sb.WriteString("\nwall time of each phase (all pods; sequential: sum of the calls), milliseconds\n")
	for _, v := range variants {
		for _, m := range modes {
			for _, p := range plugins {
				if s := results[key{v.name, m, p.name}]; s != nil {
					fmt.Fprintf(&sb, "%-6s %-6s %-10s ADD %9.1f  DEL %9.1f\n", v.name, m, p.name, ms(s.addW), ms(s.delW))
				}
			}
		}
	}
	fmt.Print(sb.String())
}
