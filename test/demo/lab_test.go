// Package demo_test is podroute's local lab: the README's main job. It builds a small rack
// of real components in network namespaces (a kube-apiserver with etcd, three nodes each
// running podroute-agent, an FRR top-of-rack router, pods wired by the CNI plugin), prints
// what it built, the BGP sessions as podroutectl and FRR see them, and cross-node pings.
//
// The test suite runs it like any test. `make lab` runs the same binary and, with
// PODROUTE_LAB_HOLD=1, keeps the lab up until Ctrl-C, then tears everything down.
package demo_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/test/lab"
)

const (
	nodes   = 3
	torASN  = 65101
	settle  = 60 * time.Second
	pingTTL = 3 * time.Second
)

func say(format string, a ...any) { fmt.Printf("\n== "+format+"\n", a...) }

func TestLab(t *testing.T) {
	say("control plane: kube-apiserver v1.32.4 + etcd, reached by the nodes at 192.0.2.254:6443")
	l := lab.New(t, lab.Options{})
	crds := lab.InstallCRDs(t, l)
	fab := l.DefaultSegment()

	say("top of rack: FRR (AS %d) on the rack segment %s", torASN, lab.FabricPrefixV4)
	tor := l.AddRouter(t, "tor", lab.RouterOptions{ASN: torASN, Segments: []*lab.Segment{fab}})
	torAddr := tor.Addr4(fab)
	exp := true
	crds.Configuration(config.BGPConfigurationSpec{NodeToNodeMesh: &exp, ExportPodCIDRs: &exp})
	crds.Peer("tor", config.BGPPeerSpec{PeerAddress: torAddr.String(), PeerASN: torASN, ExportPodCIDRs: &exp})
	fmt.Printf("BGPConfiguration default: AS %d, node-to-node mesh on; BGPPeer tor: %s AS %d, all nodes\n", config.DefaultASN, torAddr, torASN)

	say("nodes: network namespaces on the rack segment, one podroute-agent each")
	var ns []*lab.Node
	for i := 1; i <= nodes; i++ {
		n := l.AddNode(t, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i})
		if err := tor.AddNeighbor(lab.Neighbor{Address: n.IPv4, ASN: config.DefaultASN, Description: n.Name}); err != nil {
			t.Fatal(err)
		}
		ns = append(ns, n)
		fmt.Printf("%-7s netns %-22s %-15s %-18s pod CIDRs %s\n", n.Name, n.NetNS.Name, n.IPv4, n.IPv6, joinPrefixes(n.PodCIDRs))
	}
	for _, n := range ns {
		var peers []netip.Addr
		for _, o := range ns {
			if o != n {
				peers = append(peers, o.IPv4)
			}
		}
		peers = append(peers, torAddr)
		lab.Eventually(t, settle, n.Name+": BGP sessions established", func() error { return n.Established(peers...) })
	}

	say("pods: one per node, wired by the podroute CNI plugin through the conflist each agent wrote")
	var pods []*lab.Pod
	for _, n := range ns {
		p := n.AddPod(t, "web-"+strings.TrimPrefix(n.Name, "node-"))
		pods = append(pods, p)
		fmt.Printf("%-6s on %-7s %-15s %s\n", p.Name, n.Name, p.IPv4, p.IPv6)
	}
	for _, n := range ns {
		for _, o := range ns {
			for _, p := range o.PodCIDRs {
				if o != n {
					via := o.IPv4
					if p.Addr().Is6() {
						via = o.IPv6
					}
					lab.Eventually(t, settle, n.Name+": route to "+p.String(), func() error { return n.RouteVia(p, via) })
				}
			}
		}
	}

	say("node-1: podroutectl bgp neighbors")
	out, err := ns[0].Ctl("bgp", "neighbors")
	if err != nil {
		t.Fatalf("podroutectl: %v\n%s", err, out)
	}
	fmt.Print(string(out))
	say("node-1: podroutectl bgp routes")
	out, _ = ns[0].Ctl("bgp", "routes")
	fmt.Print(string(out))
	say("node-1: kernel routes podroute installed (proto 201)")
	for _, fam := range []string{"-4", "-6"} {
		o, _ := ns[0].IPOutput(fam, "route", "show", "proto", "201")
		fmt.Print(o)
	}
	say("tor (FRR): show bgp summary / show ip route bgp")
	sum, err := tor.Vtysh("show bgp summary")
	if err != nil {
		t.Fatalf("vtysh: %v", err)
	}
	fmt.Print(sum)
	rt, _ := tor.Vtysh("show ip route bgp")
	fmt.Print(rt)
	for _, n := range ns {
		for _, p := range n.PodCIDRs {
			if _, err := tor.BGPRoute(p); err != nil {
				t.Errorf("tor has no BGP route to %s (%s): %v", p, n.Name, err)
			}
		}
	}

	say("traffic: pod to pod across nodes, IPv4 and IPv6")
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			for _, dst := range []netip.Addr{to.IPv4, to.IPv6} {
				err := from.Ping(dst, pingTTL)
				status := "ok"
				if err != nil {
					status = "FAIL: " + err.Error()
					t.Errorf("%s -> %s %s: %v", from.Name, to.Name, dst, err)
				}
				fmt.Printf("ping %-6s (%s) -> %-6s %-22s %s\n", from.Name, from.Node.Name, to.Name, dst, status)
			}
		}
	}
	if t.Failed() {
		return
	}
	say("lab: podroute works")

	if os.Getenv("PODROUTE_LAB_HOLD") == "1" {
		fmt.Printf("\nThe lab is up. Explore it, e.g.:\n")
		fmt.Printf("  ip netns exec %s ip route\n", ns[0].NetNS.Name)
		fmt.Printf("  %s/podroutectl --socket %s bgp neighbors\n", l.BinDir(), ns[0].Socket)
		fmt.Printf("  vtysh -N %s -c 'show bgp summary'\n", tor.NetNS.Name)
		fmt.Printf("Press Ctrl-C to tear it down.\n")
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		<-sig
		signal.Stop(sig)
		say("tearing down")
	}
}

func joinPrefixes(ps []netip.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, ", ")
}

// TestSweep removes what labs of dead processes left (make lab-down) and checks that no such
// namespace remains.
func TestSweep(t *testing.T) {
	if err := lab.Sweep(); err != nil {
		t.Fatalf("sweep: %v", err)
	}
	entries, err := os.ReadDir("/var/run/netns")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), lab.NamePrefix)
		if !ok {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(rest, "%d-", &pid); err != nil || pid <= 0 {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			t.Errorf("namespace %s of dead process %d survived the sweep", e.Name(), pid)
		}
	}
}
