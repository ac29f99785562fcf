// Package demo_test is podroute's local lab: the README's main job. It builds a small rack
// of real components in network namespaces (a kube-apiserver with etcd, three nodes each
// running kube-proxy and podroute-agent, an FRR top-of-rack router, pods wired by the CNI
// plugin), prints what it built, the BGP sessions as podroutectl and FRR see them, and
// cross-node pings. Then a Service of type LoadBalancer: podroute-lbipam gives it an address
// from a LoadBalancerIPPool, every node advertises it to the ToR, and a host behind the ToR
// reaches the pods through it.
//
// The test suite runs it like any test. `make lab` runs the same binary and, with
// PODROUTE_LAB_HOLD=1, keeps the lab up until Ctrl-C, then tears everything down.
package demo_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/lbipam"
	"github.com/podroute/podroute/test/lab"
)

const (
	nodes   = 3
	torASN  = 65101
	settle  = 60 * time.Second
	pingTTL = 3 * time.Second

	proxyMode = "iptables"
	// lbPool is the LoadBalancerIPPool's range, listed in serviceLoadBalancerIPs too (a
	// documentation range the lab uses nowhere else).
	lbPool = "203.0.113.0/28"
	// lbRequests is how many connections the client opens to the LoadBalancer address.
	lbRequests = 12
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

	say("nodes: network namespaces on the rack segment, one kube-proxy (%s mode) and one podroute-agent each", proxyMode)
	var ns []*lab.Node
	for i := 1; i <= nodes; i++ {
		ns = append(ns, l.AddNode(t, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i, NoAgent: true}))
	}
	// kube-proxy first: the agent looks for it when it starts (and every 30 s after), and
	// advertises no Service address without it.
	lab.StartKubeProxies(t, ns, lab.KubeProxyOptions{Mode: proxyMode})
	for _, n := range ns {
		if err := n.Agent.Start(); err != nil {
			t.Fatal(err)
		}
		if err := tor.AddNeighbor(lab.Neighbor{Address: n.IPv4, ASN: config.DefaultASN, Description: n.Name}); err != nil {
			t.Fatal(err)
		}
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

	lb := loadBalancer(t, l, crds, tor, ns, pods)
	if t.Failed() {
		return
	}
	say("lab: podroute works")

	if os.Getenv("PODROUTE_LAB_HOLD") == "1" {
		fmt.Printf("\nThe lab is up. Explore it, e.g.:\n")
		fmt.Printf("  ip netns exec %s ip route\n", ns[0].NetNS.Name)
		fmt.Printf("  %s/podroutectl --socket %s bgp neighbors\n", l.BinDir(), ns[0].Socket)
		fmt.Printf("  vtysh -N %s -c 'show bgp summary'\n", tor.NetNS.Name)
		fmt.Printf("  ip netns exec %s curl http://%s/hostname\n", lb.client.NetNS.Name, lb.ip)
		fmt.Printf("Press Ctrl-C to tear it down.\n")
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		<-sig
		signal.Stop(sig)
		say("tearing down")
	}
}

// lbDemo is what the LoadBalancer section built, for the hints of a held lab.
type lbDemo struct {
	client *lab.Host
	ip     netip.Addr
}

// loadBalancer shows a Service of type LoadBalancer reached from a host behind the ToR:
// podroute-lbipam gives it an address from a LoadBalancerIPPool, every node's agent
// advertises that address to the ToR (kube-proxy serves it on every node), FRR spreads the
// client's connections over the nodes and kube-proxy over the pods.
func loadBalancer(t *testing.T, l *lab.Lab, crds *lab.CRDs, tor *lab.Router, ns []*lab.Node, pods []*lab.Pod) lbDemo {
	t.Helper()
	say("LoadBalancer addresses: LoadBalancerIPPool %q, podroute-lbipam allocating, advertised by the nodes", lbPool)
	crds.Pool("lab", lbipam.PoolSpec{Addresses: []string{lbPool}})
	crds.PatchConfiguration(map[string]any{"serviceLoadBalancerIPs": []string{lbPool}})
	alloc := l.StartLBIPAM(t)
	fmt.Printf("LoadBalancerIPPool lab: %s; BGPConfiguration default: serviceLoadBalancerIPs [%s]\n", lbPool, lbPool)
	fmt.Printf("podroute-lbipam: %s, one replica (no leader election), on the lab's API server\n", alloc.Binary)

	say("Service web: type LoadBalancer, externalTrafficPolicy Cluster, port 80 -> agnhost netexec on 8080 in every pod")
	for _, p := range pods {
		p.StartServer(t, 8080)
	}
	svc := l.CreateServiceFor(t, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeLoadBalancer,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyCluster,
			Ports:                 []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}, pods)
	fmt.Println("The lab runs no controller manager: the Service has no selector, and the lab writes its")
	fmt.Println("EndpointSlice itself, every pod a ready endpoint on its node:")
	for _, p := range pods {
		fmt.Printf("  %-6s %-15s nodeName %-7s ready\n", p.Name, p.IPv4, p.Node.Name)
	}
	ips := l.LoadBalancerIPs(t, svc.Namespace, svc.Name, settle)
	if running, err := alloc.Running(); !running {
		t.Fatal(err)
	}
	pool := netip.MustParsePrefix(lbPool)
	ip := ips[0]
	if len(ips) != 1 || !pool.Contains(ip) {
		t.Fatalf("Service web: LoadBalancer addresses %v, want one of %s", ips, pool)
	}
	fmt.Printf("\n$ kubectl get service web\n")
	fmt.Printf("%-5s %-13s %-14s %-14s %s\n", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)")
	fmt.Printf("%-5s %-13s %-14s %-14s %d:%d/TCP\n", svc.Name, svc.Spec.Type, svc.Spec.ClusterIP, ip, svc.Spec.Ports[0].Port, svc.Spec.Ports[0].NodePort)

	say("client: a host behind the ToR on a link of its own; the nodes route its subnet via the ToR")
	client := l.AddHost(t, "client", tor)
	fab := l.DefaultSegment()
	for _, n := range ns {
		if err := n.IP(
			[]string{"route", "replace", client.PrefixV4.String(), "via", tor.Addr4(fab).String()},
			[]string{"-6", "route", "replace", client.PrefixV6.String(), "via", tor.Addr6(fab).String()},
		); err != nil {
			t.Fatalf("%s: route to the client: %v", n.Name, err)
		}
	}
	// FRR's kernel hashes ECMP on addresses alone by default: one client would always go
	// through the same node. Hash on ports too, so each connection may take another.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := tor.Exec(ctx, "sysctl", "-w", "net.ipv4.fib_multipath_hash_policy=1"); err != nil {
		t.Fatalf("tor: %v: %s", err, out)
	}
	fmt.Printf("client %s (gateway %s, the ToR); every node: %s via %s\n", client.Addr(false), client.Link.AIPv4, client.PrefixV4, tor.Addr4(fab))

	host := netip.PrefixFrom(ip, 32)
	var want []netip.Addr
	for _, n := range ns {
		want = append(want, n.IPv4)
	}
	slices.SortFunc(want, netip.Addr.Compare)
	lab.Eventually(t, settle, fmt.Sprintf("tor: %s via every node", host), func() error {
		nhs, err := tor.BGPRoute(host)
		if err == nil && !slices.Equal(nhs, want) {
			err = fmt.Errorf("next hops %v, want %v", nhs, want)
		}
		return err
	})
	say("node-1: podroutectl bgp routes")
	out, err := ns[0].Ctl("bgp", "routes")
	if err != nil {
		t.Errorf("podroutectl: %v\n%s", err, out)
	}
	fmt.Print(string(out))
	say("tor (FRR): show ip route %s: every node a next hop (ECMP)", host)
	rt, err := tor.Vtysh("show ip route " + host.String())
	if err != nil {
		t.Errorf("vtysh: %v", err)
	}
	fmt.Print(rt)

	say("traffic: %d connections from the client to http://%s/ (GET /hostname, then /clientip)", lbRequests, ip)
	byPod, byNode := map[string]int{}, map[string]int{}
	for i := 1; i <= lbRequests; i++ {
		var name, seen string
		// The first connection may beat kube-proxy's rules or the client's route: retry it.
		err := lab.Poll(context.Background(), settle, 200*time.Millisecond, func() error {
			var err error
			name, seen, err = lbRequest(client, ip)
			return err
		})
		if err != nil {
			t.Errorf("client -> %s: %v", ip, err)
			fmt.Printf("connection %2d: FAIL: %v\n", i, err)
			continue
		}
		// With externalTrafficPolicy Cluster, the node the ToR picked masquerades the
		// client: the pod sees that node's address.
		via := seen
		for _, n := range ns {
			if n.IPv4.String() == seen {
				via = n.Name
			}
		}
		byPod[name]++
		byNode[via]++
		fmt.Printf("connection %2d: answered by %-6s through %-7s (the pod saw %s)\n", i, name, via, seen)
	}
	fmt.Printf("answers by pod: %s; connections by node: %s\n", tally(byPod), tally(byNode))
	if len(byPod) < 2 {
		t.Errorf("the client's %d connections were all answered by %v: want more than one pod", lbRequests, byPod)
	}
	if len(byNode) < 2 {
		t.Errorf("the client's %d connections all went through %v: want more than one node", lbRequests, byNode)
	}
	for name := range byPod {
		if !slices.ContainsFunc(pods, func(p *lab.Pod) bool { return p.Name == name }) {
			t.Errorf("answer from %q, which is none of the lab's pods", name)
		}
	}
	return lbDemo{client: client, ip: ip}
}

// lbRequest opens one connection from the client to ip:80 and asks /hostname and /clientip
// on it: the pod that answered, and the address it saw the client as.
func lbRequest(client *lab.Host, ip netip.Addr) (name, seen string, err error) {
	tr := &http.Transport{DialContext: client.Dialer(), MaxConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	get := func(path string) (string, error) {
		return lab.GetText(c, "http://"+netip.AddrPortFrom(ip, 80).String()+path)
	}
	if name, err = get("/hostname"); err != nil {
		return "", "", err
	}
	if seen, err = get("/clientip"); err != nil {
		return "", "", err
	}
	ap, err := netip.ParseAddrPort(seen)
	if err != nil {
		return "", "", fmt.Errorf("/clientip answered %q: %w", seen, err)
	}
	return name, ap.Addr().Unmap().String(), nil
}

// tally is "a 3, b 2" in name order.
func tally(m map[string]int) string {
	var s []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		s = append(s, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(s, ", ")
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
