package agentbench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/test/lab"
)

// BenchmarkBFDSoak: four nodes in a full mesh and an FRR ToR peering with each, BFD
// 100 ms x 3 on every session, for AGENTBENCH_SOAK (default 10m) next to a CPU-heavy
// neighbour (two busy loops, one per CPU of a 2-CPU machine, outside the lab's
// namespaces). It counts BFD and BGP session flaps, from both ends: the agents (BFD state
// and session changes in podroutectl bgp neighbors, polled every second, and the BFD
// failures their logs record) and FRR (bfdd's session-down counters, bgpd's dropped
// connections). Before the soak, without the busy loops, it measures the CPU BFD costs: each
// agent's CPU time over AGENTBENCH_SOAK_CPU_SECONDS (default 60) without BFD, then with BFD
// turned on live, divided by its BFD peers (3 nodes and the ToR).
func BenchmarkBFDSoak(b *testing.B) {
	soak := 10 * time.Minute
	if v := os.Getenv("AGENTBENCH_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("AGENTBENCH_SOAK: %v", err)
		}
		soak = d
	}
	window := time.Duration(envInt("AGENTBENCH_SOAK_CPU_SECONDS", 60)) * time.Second
	load := header(b, "BFD soak: 4 nodes and an FRR ToR, BFD 100ms x 3 everywhere, next to busy loops ("+bfdImpl()+" BFD)")

	sc := newScope(b)
	defer sc.close()
	s := foSetting{key: "soak", args: defaultArgs, bfd: true, hold: 9 * time.Second}
	l := lab.New(sc, lab.Options{AgentArgs: s.args})
	c := lab.InstallCRDs(sc, l)
	fab := l.DefaultSegment()
	// bfdd runs from the start; the neighbours get BFD once the CPU without it is measured.
	tor := l.AddRouter(sc, "tor", lab.RouterOptions{ASN: torASN, Segments: []*lab.Segment{fab}, BFD: true})
	torAddr := tor.Addr4(fab)
	c.Configuration(config.BGPConfigurationSpec{NodeToNodeMesh: ptrTo(true)})
	c.Peer("tor", config.BGPPeerSpec{PeerAddress: torAddr.String(), PeerASN: torASN})
	var nodes []*lab.Node
	for i := 1; i <= 4; i++ {
		n := l.AddNode(sc, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i})
		nb := s.torNeighbor(n, config.DefaultASN)
		nb.BFD = false
		if err := tor.AddNeighbor(nb); err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		ready(b, n)
	}
	meshed(b, nodes)
	up(b, foSetting{}, nodes, tor, torAddr)
	torHasRoutes(b, tor, nodes...)
	time.Sleep(5 * time.Second)

	// 1. CPU without BFD, then with it.
	without, bfddWithout, loadWithout := cpuWindow(b, nodes, tor, window)
	c.PatchConfiguration(map[string]any{"meshBFD": bfdSpec()})
	c.PatchPeer("tor", map[string]any{"bfd": bfdSpec()})
	for _, n := range nodes {
		if err := tor.SetNeighborBFD(s.torNeighbor(n, config.DefaultASN)); err != nil {
			b.Fatal(err)
		}
	}
	// Seen with podroute's BFD and FRR 8.4: a node's BFD session with FRR going up and down
	// every 300 to 350 ms, each time resetting the BGP session (docs/benchmarks.md). After
	// 3 minutes of that the ToR's sessions run without BFD and the soak covers the mesh's.
	torBFD := true
	t1 := time.Now()
	if err := lab.Poll(context.Background(), 3*time.Minute, time.Second, func() error { return upErr(s, true, nodes, tor, torAddr) }); err != nil {
		fmt.Printf("BFD with the ToR not up after %v (%v): the ToR's sessions run without BFD\n", time.Since(t1).Round(time.Second), err)
		torBFD = false
		c.PatchPeer("tor", map[string]any{"bfd": nil})
		for _, n := range nodes {
			if err := tor.Configure(fmt.Sprintf("router bgp %d", torASN), "no neighbor "+n.IPv4.String()+" bfd"); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		fmt.Printf("BFD up everywhere %v after it was turned on\n", time.Since(t1).Round(time.Second))
	}
	lab.Eventually(b, converge, "sessions established (BFD up)", func() error { return upErr(s, torBFD, nodes, tor, torAddr) })
	time.Sleep(10 * time.Second)
	lab.Eventually(b, converge, "sessions established (BFD up)", func() error { return upErr(s, torBFD, nodes, tor, torAddr) })
	with, bfddWith, loadWith := cpuWindow(b, nodes, tor, window)
	peers := 4.0 // 3 nodes and the ToR
	if !torBFD {
		peers = 3
	}

	// 2. The soak, next to the busy loops.
	hogs := startHogs(b, 2)
	defer stopHogs(hogs)
	time.Sleep(2 * time.Second)
	offs := logOffsets(nodes)
	bfd0, drops0 := torFlapCounters(b, tor, nodes)
	cpu0 := allCPU(b, nodes)
	type view struct{ bfd, state string }
	last := make([]map[string]view, len(nodes))
	since0 := make([]map[string]time.Time, len(nodes))
	bfdFlaps := make([]int, len(nodes)) // BFD left "up", as podroutectl shows it
	bgpFlaps := make([]int, len(nodes)) // a session left established or came back with a new start time
	pollErrs := make([]int, len(nodes))
	loads := []string{loadavg()}
	t0 := time.Now()
	next := t0.Add(soak / 4)
	for time.Since(t0) < soak {
		for i, n := range nodes {
			ns, err := n.Neighbors()
			if err != nil {
				pollErrs[i]++
				continue
			}
			if last[i] == nil {
				last[i], since0[i] = map[string]view{}, map[string]time.Time{}
			}
			for _, p := range ns {
				v := view{bfd: p.BFD, state: p.State}
				prev, seen := last[i][p.Address]
				if seen && prev.bfd == "up" && v.bfd != "up" {
					bfdFlaps[i]++
				}
				if seen && prev.state == "established" && v.state != "established" {
					bgpFlaps[i]++
				} else if st, ok := since0[i][p.Address]; ok && v.state == "established" && prev.state == "established" && !p.Since.Equal(st) {
					// Down and up again between two polls.
					bgpFlaps[i]++
				}
				if v.state == "established" {
					since0[i][p.Address] = p.Since
				}
				last[i][p.Address] = v
			}
		}
		if time.Now().After(next) {
			loads = append(loads, loadavg())
			next = next.Add(soak / 4)
		}
		time.Sleep(time.Second)
	}
	elapsed := time.Since(t0)
	loads = append(loads, loadavg())
	cpu1 := allCPU(b, nodes)
	bfd1, drops1 := torFlapCounters(b, tor, nodes)
	stopHogs(hogs)

	// 3. Tables.
	fmt.Printf("\nCPU of BFD (no busy loops): each agent over %v without BFD, then with BFD 100ms x 3 on its %.0f BFD sessions (3 nodes, and the ToR: %v); load average %s and %s\n\n", window, peers, torBFD, loadWithout, loadWith)
	fmt.Println("| node | agent CPU without BFD (ms/s) | with BFD (ms/s) | BFD's cost per BFD peer (ms of CPU per s, % of a CPU) |")
	fmt.Println("| --- | ---: | ---: | ---: |")
	var perPeer []float64
	for i, n := range nodes {
		a, z := ticksPerSec(without[i], window), ticksPerSec(with[i], window)
		p := (z - a) / peers
		perPeer = append(perPeer, p)
		fmt.Printf("| %s | %.2f | %.2f | %.2f (%.2f %%) |\n", n.Name, a, z, p, p/10)
	}
	m := median(perPeer)
	fmt.Printf("| **median** | | | **%.2f (%.2f %%)** |\n", m, m/10)
	fmt.Printf("| FRR bfdd (4 sessions) | %.2f | %.2f | %.2f |\n\n", ticksPerSec(bfddWithout, window), ticksPerSec(bfddWith, window),
		(ticksPerSec(bfddWith, window)-ticksPerSec(bfddWithout, window))/4)
	b.ReportMetric(m, "bfd-cpu-ms/s/peer")

	fmt.Printf("Soak: %v next to 2 busy loops; load average %s\n\n", elapsed.Round(time.Second), strings.Join(loads, " -> "))
	fmt.Println("| node | BFD flaps seen by the agent (podroutectl, 1 s polls) | BFD failures in its log | BGP session flaps seen by the agent | FRR: BFD session downs with it | FRR: BGP sessions dropped with it | agent CPU during the soak (ms/s) |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	var msgs []string
	totals := [5]int{}
	for i, n := range nodes {
		logged, m := bfdLogFailures(n.Agent.LogSince(offs[i]))
		msgs = append(msgs, m...)
		a := n.IPv4.String()
		row := [5]int{bfdFlaps[i], logged, bgpFlaps[i], bfd1[a] - bfd0[a], drops1[a] - drops0[a]}
		for k := range row {
			totals[k] += row[k]
		}
		fmt.Printf("| %s | %d | %d | %d | %d | %d | %.2f |\n", n.Name, row[0], row[1], row[2], row[3], row[4], ticksPerSec(cpu1[i]-cpu0[i], elapsed))
	}
	fmt.Printf("| **all** | **%d** | **%d** | **%d** | **%d** | **%d** | |\n\n", totals[0], totals[1], totals[2], totals[3], totals[4])
	if slices.Max(pollErrs) > 0 {
		fmt.Printf("podroutectl polls that failed, per node: %v\n\n", pollErrs)
	}
	slices.Sort(msgs)
	msgs = slices.Compact(msgs)
	if len(msgs) > 0 {
		fmt.Printf("BFD failure messages in the agents' logs: %q\n\n", msgs)
	}
	b.ReportMetric(float64(totals[0]+totals[1]+totals[3]), "bfd-flaps")
	b.ReportMetric(float64(totals[2]+totals[4]), "bgp-flaps")
	_ = load
}

// cpuWindow is each agent's CPU time (clock ticks) and bfdd's over d, and the load average
// at its end.
func cpuWindow(b *testing.B, nodes []*lab.Node, tor *lab.Router, d time.Duration) ([]int64, int64, string) {
	b.Helper()
	a := allCPU(b, nodes)
	f0, err := cpuTicks(tor.DaemonPID("bfdd"))
	if err != nil {
		b.Fatal(err)
	}
	time.Sleep(d)
	z := allCPU(b, nodes)
	f1, err := cpuTicks(tor.DaemonPID("bfdd"))
	if err != nil {
		b.Fatal(err)
	}
	for i := range z {
		z[i] -= a[i]
	}
	return z, f1 - f0, loadavg()
}

// ticksPerSec turns clock ticks over d into milliseconds of CPU per second.
func ticksPerSec(ticks int64, d time.Duration) float64 {
	return float64(ticks) * 1000 / float64(clkTck) / d.Seconds()
}

// torFlapCounters is, per node address, bfdd's session-down count and bgpd's dropped
// connections.
func torFlapCounters(b *testing.B, tor *lab.Router, nodes []*lab.Node) (bfdDowns, drops map[string]int) {
	b.Helper()
	bfdDowns, drops = map[string]int{}, map[string]int{}
	for _, n := range nodes {
		d, f := torCounters(b, tor, n.IPv4)
		drops[n.IPv4.String()], bfdDowns[n.IPv4.String()] = d, f
	}
	return bfdDowns, drops
}

// bfdFailureMsgs are the log messages of a BFD session failing: GoBGP v4.8.0's (a
// detection timeout, the peer signalling down) and podroute's own BFD's.
var bfdFailureMsgs = map[string]bool{"Expired": true, "Remote peer signaled BFD down": true, "bfd: session down": true}

// bfdLogFailures counts the agent's log lines reporting a BFD session failure, and returns
// their messages.
func bfdLogFailures(log string) (int, []string) {
	n := 0
	var msgs []string
	for _, l := range strings.Split(log, "\n") {
		i := strings.Index(l, `"msg":"`)
		if i < 0 {
			continue
		}
		m, _, _ := strings.Cut(l[i+7:], `"`)
		if bfdFailureMsgs[m] {
			n++
			msgs = append(msgs, m)
		}
	}
	return n, msgs
}

// startHogs starts n busy loops (sh, no goroutines) in the test's own namespace: a
// CPU-heavy neighbour.
func startHogs(b *testing.B, n int) []*exec.Cmd {
	b.Helper()
	var out []*exec.Cmd
	for range n {
		cmd := exec.Command("sh", "-c", "while :; do :; done")
		if err := cmd.Start(); err != nil {
			stopHogs(out)
			b.Fatalf("busy loop: %v", err)
		}
		out = append(out, cmd)
	}
	b.Cleanup(func() { stopHogs(out) })
	return out
}

// stopHogs kills the busy loops started by startHogs (by their process IDs). Idempotent.
func stopHogs(hogs []*exec.Cmd) {
	for _, h := range hogs {
		if h.ProcessState != nil {
			continue
		}
		_ = h.Process.Kill()
		_ = h.Wait()
	}
}
