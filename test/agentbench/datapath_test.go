package agentbench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/podroute/podroute/test/cniutil"
	"github.com/podroute/podroute/test/lab"
)

type dataPath struct {
	name           string
	client, server *lab.NetNS
	dst            netip.Addr
}

// BenchmarkDataPath: IPv4 TCP between a pod on node-1 and a pod on node-2 (pod veth ->
// node-1 routing -> uplink veth -> fabric bridge -> uplink veth -> node-2 routing -> pod
// veth), against two namespaces joined by one veth pair (the requested baseline), against
// node-1 and node-2 themselves over the same fabric (the lab's path without the pods' part),
// and against a pod on each node wired by the reference ptp plugin and routed statically (the
// same path without podroute). Every repetition measures all paths in turn, so they see the
// same machine, and every ratio is also taken per repetition.
func BenchmarkDataPath(b *testing.B) {
	reps := envInt("AGENTBENCH_REPS", 5)
	secs := envInt("AGENTBENCH_SECONDS", 5)
	rts := envInt("AGENTBENCH_RR", 10000)
	extra := strings.Fields(os.Getenv("AGENTBENCH_AGENT_ARGS"))
	// iperf3's client on CPU 0 and server on CPU 1 for every path: the spread between runs
	// otherwise comes mostly from where the scheduler happens to put the two.
	pin := envInt("AGENTBENCH_PIN", 1) == 1 && runtime.NumCPU() >= 2
	var cpus []int
	if pin {
		cpus = []int{0, 1}
	}
	load := header(b, "Data path"+strings.Join(append([]string{""}, extra...), " "))
	l := lab.New(b, lab.Options{AgentArgs: extra})
	n1 := l.AddNode(b, "node-1", lab.NodeOptions{Index: 1})
	n2 := l.AddNode(b, "node-2", lab.NodeOptions{Index: 2})
	ready(b, n1)
	ready(b, n2)
	meshed(b, []*lab.Node{n1, n2})
	p1, p2 := n1.AddPod(b, "pod"), n2.AddPod(b, "pod")
	if err := p1.Ping(p2.IPv4, 10*time.Second); err != nil {
		b.Fatal(err)
	}
	// The reference: a pod on each node wired by the reference ptp plugin (veth, host route,
	// host-local IPAM, no masquerade) from subnets outside the cluster's, routed between the
	// two nodes by static routes: the same shape of path without any of podroute's code.
	cniutil.RequireRefPlugins(b, "ptp", "host-local")
	r1, r2 := refPod(b, n1, n2, 1), refPod(b, n2, n1, 2)
	if err := r1.Ping(r2.IPv4, 10*time.Second); err != nil {
		b.Fatal(err)
	}

	// The baseline: two namespaces, one veth pair, the pods' MTU.
	mtu := podMTU(b, p1)
	da, err := lab.CreateNetNS(l.Name + "-direct-a")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = da.Delete() })
	db, err := lab.CreateNetNS(l.Name + "-direct-b")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Delete() })
	if err := da.IP(
		[]string{"link", "add", "eth0", "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", db.Name},
		[]string{"addr", "add", "10.99.0.1/30", "dev", "eth0"},
		[]string{"link", "set", "eth0", "up"},
	); err != nil {
		b.Fatal(err)
	}
	if err := db.IP(
		[]string{"addr", "add", "10.99.0.2/30", "dev", "eth0"},
		[]string{"link", "set", "eth0", "up"},
	); err != nil {
		b.Fatal(err)
	}

	paths := []dataPath{
		{"direct veth pair (baseline)", da, db, netip.MustParseAddr("10.99.0.2")},
		{"node to node over the fabric", n1.NetNS, n2.NetNS, n2.IPv4},
		{"pod to pod, reference ptp plugin", r1.NetNS, r2.NetNS, r2.IPv4},
		{"pod to pod (podroute)", p1.NetNS, p2.NetNS, p2.IPv4},
	}
	d := time.Duration(secs) * time.Second
	tput := make([][]float64, len(paths))
	iperf := make([][]float64, len(paths))
	p50 := make([][]time.Duration, len(paths))
	p99 := make([][]time.Duration, len(paths))
	useIperf := lab.HaveIperf3()
	for r := range reps {
		for i, p := range paths {
			bps, err := lab.TCPThroughput(p.client, p.server, p.dst, d)
			if err != nil {
				b.Fatalf("%s: %v", p.name, err)
			}
			tput[i] = append(tput[i], bps)
			rtt, err := lab.TCPRoundTrips(p.client, p.server, p.dst, rts)
			if err != nil {
				b.Fatalf("%s: %v", p.name, err)
			}
			p50[i] = append(p50[i], pct(rtt, 50))
			p99[i] = append(p99[i], pct(rtt, 99))
			msg := fmt.Sprintf("rep %d, %s: Go TCP %.2f Gbit/s, RR p50 %s us p99 %s us", r+1, p.name, bps/1e9, us(pct(rtt, 50)), us(pct(rtt, 99)))
			if useIperf {
				bps, err := lab.Iperf3(context.Background(), p.client, p.server, p.dst, d, 0, cpus...)
				if err != nil {
					b.Fatalf("%s: %v", p.name, err)
				}
				iperf[i] = append(iperf[i], bps)
				msg += fmt.Sprintf(", iperf3 %.2f Gbit/s", bps/1e9)
			}
			fmt.Println(msg)
		}
	}
	loadEnd := loadavg()

	fmt.Printf("\nIPv4, MTU %s, %d repetitions of each figure, medians (min..max); throughput: one TCP stream for %d s; latency: %d one-byte round trips over one connection; load average %s at start, %s at end\n\n", mtu, reps, secs, rts, load, loadEnd)
	fmt.Println("| path | Go TCP Gbit/s | ratio | iperf3 Gbit/s | ratio | RR p50 us | ratio | RR p99 us | ratio |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	gb := func(xs []float64) string {
		if len(xs) == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f (%.2f..%.2f)", median(xs)/1e9, minOf(xs)/1e9, maxOf(xs)/1e9)
	}
	ratio := func(a, base float64) string {
		if base == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", a/base)
	}
	mf := func(xs []float64) float64 {
		if len(xs) == 0 {
			return 0
		}
		return median(xs)
	}
	for i, p := range paths {
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p.name,
			gb(tput[i]), ratio(mf(tput[i]), mf(tput[0])),
			gb(iperf[i]), ratio(mf(iperf[i]), mf(iperf[0])),
			us(median(p50[i])), ratio(float64(median(p50[i])), float64(median(p50[0]))),
			us(median(p99[i])), ratio(float64(median(p99[i])), float64(median(p99[0]))))
	}
	fmt.Println("\nratio: against the direct veth pair (throughput: above 1 is faster; latency: above 1 is slower)")
	fmt.Printf("iperf3 pinned to CPU 0 (client) and CPU 1 (server): %v\n\n", pin)
	// Paired: each repetition's figure over the other path's figure of the same repetition,
	// which cancels the machine's drift between repetitions; median (min..max) of those.
	paired := func(xs, base []float64) (float64, string) {
		var rs []float64
		for r := range min(len(xs), len(base)) {
			if base[r] > 0 {
				rs = append(rs, xs[r]/base[r])
			}
		}
		if len(rs) == 0 {
			return 0, "-"
		}
		return median(rs), fmt.Sprintf("%.2f (%.2f..%.2f)", median(rs), minOf(rs), maxOf(rs))
	}
	const direct, fabric, ref, pod = 0, 1, 2, 3
	fmt.Println("| ratio, paired by repetition | Go TCP | iperf3 | RR p50 |")
	fmt.Println("| --- | ---: | ---: | ---: |")
	for _, c := range []struct {
		name    string
		of, per int
	}{
		{"podroute pod to pod / direct veth pair", pod, direct},
		{"podroute pod to pod / node to node", pod, fabric},
		{"podroute pod to pod / ptp pod to pod", pod, ref},
		{"ptp pod to pod / direct veth pair", ref, direct},
	} {
		_, g := paired(tput[c.of], tput[c.per])
		_, i := paired(iperf[c.of], iperf[c.per])
		_, l := paired(durations(p50[c.of]), durations(p50[c.per]))
		fmt.Printf("| %s | %s | %s | %s |\n", c.name, g, i, l)
	}
	fmt.Println("\n(RR p50: above 1 is slower)")
	if useIperf {
		m, _ := paired(iperf[pod], iperf[direct])
		b.ReportMetric(m, "pod/veth-iperf3")
		m, _ = paired(iperf[pod], iperf[ref])
		b.ReportMetric(m, "pod/ptp-iperf3")
	}
	m, _ := paired(tput[pod], tput[direct])
	b.ReportMetric(m, "pod/veth-tput")
	m, _ = paired(tput[pod], tput[ref])
	b.ReportMetric(m, "pod/ptp-tput")
	m, _ = paired(durations(p50[pod]), durations(p50[direct]))
	b.ReportMetric(m, "pod/veth-rr-p50")
	b.ReportMetric(float64(median(p50[pod]))/1e3, "pod-rr-p50-us")
}

// refPod wires a pod on n with the reference ptp plugin and host-local IPAM, from
// 10.98.<index>.0/24 (outside the cluster's pod CIDRs, so the agents neither advertise nor
// masquerade it), and routes that subnet to n from peer with a static route.
func refPod(b *testing.B, n, peer *lab.Node, index int) *lab.Pod {
	b.Helper()
	subnet := fmt.Sprintf("10.98.%d.0/24", index)
	conf := cniutil.Net{
		Name: "ptp", DataDir: b.TempDir(), Ranges: [][]cniutil.Range{{{Subnet: subnet}}}, Routes: []string{"0.0.0.0/0"},
	}.Ptp()
	p := n.AddPodWith(b, "ptp", conf)
	if err := peer.IP([]string{"route", "add", subnet, "via", n.IPv4.String()}); err != nil {
		b.Fatal(err)
	}
	return p
}

func durations(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d)
	}
	return out
}

func podMTU(b *testing.B, p *lab.Pod) string {
	b.Helper()
	out, err := p.IPOutput("-o", "link", "show", "eth0")
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(out)
	for i := range f[:len(f)-1] {
		if f[i] == "mtu" {
			return f[i+1]
		}
	}
	b.Fatalf("no MTU in %q", out)
	return ""
}

func minOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = min(m, x)
	}
	return m
}

func maxOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
