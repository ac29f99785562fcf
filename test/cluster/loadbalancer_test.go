package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/test/cluster"
	"github.com/podroute/podroute/test/lab"
)

const (
	// torASN is the top-of-rack router's own AS; the cluster's is BGPConfiguration's.
	torASN = 65000
	// converge bounds how long a change may take to reach the ToR's RIB.
	converge = 60 * time.Second

	// The LoadBalancer pool, advertised to the ToR (documentation ranges).
	lbPoolV4 = "198.51.100.0/24"
	lbPoolV6 = "2001:db8:100::/120"
	// The Services' ports: HTTP and UDP of agnhost netexec.
	lbHTTPPort, lbUDPPort = 80, 81
	excludeLabel          = "node.kubernetes.io/exclude-from-external-load-balancers"
	// defaultConvergeRounds is how many times Convergence measures each change, unless
	// PODROUTE_LB_ROUNDS says otherwise (20 for the figures in docs/benchmarks.md).
	defaultConvergeRounds = 5
)

var poolGVR = schema.GroupVersionResource{Group: config.Group, Version: config.Version, Resource: "loadbalancerippools"}

// TestLoadBalancer is the rack seen from outside: an FRR top-of-rack router on the nodes'
// segment, eBGP to every node (a BGPPeer on the cluster's side), and a client behind the
// ToR on a link of its own, which is no node and learns nothing by BGP.
//
//	client (198.19.L.2) ── link ── [tor AS 65000, 192.0.2.1]
//	                                       │ fabric segment 192.0.2.0/24
//	            ┌──────────────┬───────────┴──┬──────────────┐
//	      control-plane     worker-1      worker-2      worker-3     AS 64512 (mesh among them)
//
// The nodes route the client's subnet through the ToR, as a rack's servers whose default
// route is the ToR would.
//
// On that rack, Services of type LoadBalancer get addresses from a LoadBalancerIPPool
// (podroute-lbipam) that the nodes advertise to the ToR (BGPConfiguration
// serviceLoadBalancerIPs): Cluster from every node kube-proxy serves on but the excluded
// one, Local from the nodes with a usable endpoint only, followed through scaling, a pod
// moving and a rolling update under load; the client reaches them over TCP and UDP on both
// families. Convergence logs how long the ToR takes to follow an endpoint coming and going.
func TestLoadBalancer(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	u := &user{t: t, c: c, ns: "podroute-lb"}
	u.kubectl("create", "namespace", u.ns)
	rk := newRack(t, c)

	t.Run("ToRLearnsPodCIDRs", func(t *testing.T) {
		nodes, err := c.Lab.Kube.Client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes.Items) != len(c.Nodes) {
			t.Fatalf("%d Node objects, want %d", len(nodes.Items), len(c.Nodes))
		}
		for _, obj := range nodes.Items {
			n := c.Lab.Node(obj.Name)
			if n == nil {
				t.Fatalf("node %s is not one of the lab's", obj.Name)
			}
			if len(obj.Spec.PodCIDRs) != 2 {
				t.Errorf("node %s: pod CIDRs %v, want one per family", obj.Name, obj.Spec.PodCIDRs)
			}
			for _, s := range obj.Spec.PodCIDRs {
				p := netip.MustParsePrefix(s)
				want := n.IPv4
				if p.Addr().Is6() {
					want = n.IPv6
				}
				lab.Eventually(t, converge, "tor: "+obj.Name+"'s "+s, func() error {
					nhs, err := rk.tor.BGPRoute(p)
					if err != nil {
						return err
					}
					if !slices.Contains(nhs, want) {
						return fmt.Errorf("next hops %v, want %s among them", nhs, want)
					}
					return nil
				})
			}
		}
	})

	t.Run("ClientReachesPod", func(t *testing.T) {
		u := u.with(t)
		u.pod("direct", c.Nodes[1].Name, nil, nil, "netexec", "--http-port=8080", "--udp-port=8081")
		u.waitRunning("direct")
		p, err := c.Lab.Kube.Client.CoreV1().Pods(u.ns).Get(context.Background(), "direct", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Status.PodIPs) != 2 {
			t.Fatalf("pod direct: IPs %v, want one per family", p.Status.PodIPs)
		}
		for _, ip := range p.Status.PodIPs {
			a := netip.MustParseAddr(ip.IP)
			lab.Eventually(t, converge, "client -> pod direct at "+a.String(), func() error {
				out, err := rk.get(a, 8080, "/hostname")
				if err == nil && out != "direct" {
					err = fmt.Errorf("answer %q", out)
				}
				return err
			})
			// Nothing translates the client's address on the way: the pod sees the client.
			out, err := rk.get(a, 8080, "/clientip")
			if err != nil {
				t.Fatal(err)
			}
			if got := hostOf(out); got != rk.client.Addr(a.Is6()) {
				t.Errorf("pod direct at %s saw the client as %q, want %s", a, out, rk.client.Addr(a.Is6()))
			}
		}
	})
	if t.Failed() {
		t.Fatal("the rack does not route between the client and the pods: the Service checks need it")
	}

	// LoadBalancer addresses come from a pool and are advertised to the ToR; worker-3 is
	// taken out of the external load balancers.
	rk.enableLoadBalancers(t)
	excluded := c.Nodes[3]
	if err := excluded.SetLabels(map[string]string{excludeLabel: ""}); err != nil {
		t.Fatalf("label %s: %v", excluded.Name, err)
	}
	w1, w2 := c.Nodes[1], c.Nodes[2]

	t.Run("Cluster", func(t *testing.T) {
		u := u.with(t)
		u.webDeployment("web-cluster", 3, nil)
		ips := u.lbService(rk, "web-cluster", corev1.ServiceExternalTrafficPolicyCluster)
		u.waitDeploymentReady("web-cluster", 3)
		// Every node kube-proxy serves on, the control-plane node included, but the
		// excluded one.
		var want []*lab.Node
		for _, n := range rk.kubeProxyNodes(t) {
			if n != excluded {
				want = append(want, n)
			}
		}
		if len(want) != len(c.Nodes)-1 {
			t.Errorf("kube-proxy serves on %d nodes besides %s, want %d", len(want), excluded.Name, len(c.Nodes)-1)
		}
		for _, ip := range ips {
			rk.waitNextHops(t, ip, want...)
		}
		for _, ip := range ips {
			rk.reachService(t, ip, "web-cluster-")
		}
	})

	t.Run("Local", func(t *testing.T) {
		u := u.with(t)
		u.webDeployment("web-local", 1, w1)
		ips := u.lbService(rk, "web-local", corev1.ServiceExternalTrafficPolicyLocal)
		u.waitDeploymentReady("web-local", 1)
		for _, ip := range ips {
			rk.waitNextHops(t, ip, w1)
		}
		for _, ip := range ips {
			rk.reachService(t, ip, "web-local-")
			// The pod sees the client's own address, over TCP and UDP.
			if out, err := rk.get(ip, lbHTTPPort, "/clientip"); err != nil {
				t.Error(err)
			} else if got := hostOf(out); got != rk.client.Addr(ip.Is6()) {
				t.Errorf("TCP to %s: the pod saw the client as %q, want %s", ip, out, rk.client.Addr(ip.Is6()))
			}
			if out, err := rk.udp(ip, lbUDPPort, "clientip"); err != nil {
				t.Error(err)
			} else if got := hostOf(out); got != rk.client.Addr(ip.Is6()) {
				t.Errorf("UDP to %s: the pod saw the client as %q, want %s", ip, out, rk.client.Addr(ip.Is6()))
			}
		}

		// No ready endpoint: no route at all.
		u.scale("web-local", 0)
		for _, ip := range ips {
			rk.waitNextHops(t, ip)
		}
		u.scale("web-local", 1)
		u.waitDeploymentReady("web-local", 1)
		for _, ip := range ips {
			rk.waitNextHops(t, ip, w1)
		}

		// A rolling update that moves the only pod to worker-2, while the client opens a
		// new connection every 20 ms to each address: the route follows the pod, the new
		// node joining before the old one leaves. The load starts once the client is served again after the
		// scale-up, so it counts the update's losses only.
		for _, ip := range ips {
			rk.reachService(t, ip, "web-local-")
		}
		tl := rk.startTimeline(t, u, "web-local", ips)
		ld := rk.startLoad(ips, 20*time.Millisecond, "web-local-")
		u.moveDeployment("web-local", w2)
		u.waitRolledOut("web-local", w2)
		for _, ip := range ips {
			rk.waitNextHops(t, ip, w2)
		}
		time.Sleep(2 * time.Second)
		sent, lost := ld.stop()
		events := tl.stop()
		t.Logf("rolling update of web-local from %s to %s: %d requests, %d lost; what happened:", w1.Name, w2.Name, sent, len(lost))
		var lines []string
		for _, l := range lost {
			lines = append(lines, l+" (lost)")
		}
		lines = append(lines, events...)
		slices.Sort(lines)
		for _, l := range lines {
			t.Logf("  %s", l)
		}
		if sent == 0 {
			t.Error("the client sent no request during the rolling update")
		}
		// Make before break: the ToR held the old and the new node together before the old
		// one left (podroute's handover). The requests lost are measured, not asserted:
		// besides podroute they depend on the ToR (FRR replacing a route as it gains a next
		// hop, ECMP moving connections in flight when one leaves) and on how loaded the
		// machine is; docs/benchmarks.md has the figures.
		for _, ip := range ips {
			both := slices.ContainsFunc(events, func(e string) bool {
				return strings.Contains(e, "tor: "+ip.String()+" via [") && strings.Contains(e, w1.Name) && strings.Contains(e, w2.Name)
			})
			if !both {
				t.Errorf("%s: the ToR never held %s and %s together: the old node left before the new one came", ip, w1.Name, w2.Name)
			}
		}
		if len(lost) != 0 {
			t.Logf("%d of %d requests lost during the rolling update", len(lost), sent)
		}
	})

	t.Run("Convergence", func(t *testing.T) {
		u := u.with(t)
		// The Local Service's only pod on worker-1, appearing and going: from the API
		// showing the endpoint usable (ready, or serving while the Service has no ready
		// one) to the ToR's installed route having worker-1 as next hop, and back.
		u.webDeployment("conv", 0, w1)
		ips := u.lbService(rk, "conv", corev1.ServiceExternalTrafficPolicyLocal)
		ip := ips[0]
		rk.waitNextHops(t, ip)
		// Besides, from the ToR's route to the client's first answer through it: how long
		// the node is advertised before kube-proxy there forwards to the new endpoint.
		var up, served, down []time.Duration
		rounds := defaultConvergeRounds
		if n, err := strconv.Atoi(os.Getenv("PODROUTE_LB_ROUNDS")); err == nil && n > 0 {
			rounds = n
		}
		for range rounds {
			ctx, cancel := context.WithCancel(context.Background())
			first := rk.firstServed(ctx, ip)
			d, routed := rk.measure(t, u, "conv", w1, ip, true, func() { u.scale("conv", 1) })
			up = append(up, d)
			select {
			case at := <-first:
				served = append(served, at.Sub(routed).Round(time.Millisecond))
			case <-time.After(converge):
				t.Errorf("the client got no answer from %s within %v of the route", ip, converge)
			}
			cancel()
			d, _ = rk.measure(t, u, "conv", w1, ip, false, func() { u.scale("conv", 0) })
			down = append(down, d)
			// The pod is gone before the next round starts.
			lab.Eventually(t, time.Minute, "conv: no pod left", func() error { return u.noPods("conv") })
		}
		t.Logf("ToR convergence, externalTrafficPolicy Local, %d rounds (API shows the endpoint -> FRR's installed route):", rounds)
		t.Logf("| change | median | worst | all |")
		t.Logf("|--------|--------|-------|-----|")
		t.Logf("| endpoint ready -> next hop added | %v | %v | %v |", median(up), slices.Max(up), up)
		t.Logf("| last endpoint gone -> next hop removed | %v | %v | %v |", median(down), slices.Max(down), down)
		if len(served) > 0 {
			t.Logf("| next hop added -> client first answered | %v | %v | %v |", median(served), slices.Max(served), served)
		}
	})
}

// rack is the ToR, the client behind it and the BGP between the ToR and the nodes.
type rack struct {
	c      *cluster.Cluster
	seg    *lab.Segment
	tor    *lab.Router
	client *lab.Host
	http   *http.Client
	dyn    dynamic.Interface
}

func newRack(t *testing.T, c *cluster.Cluster) *rack {
	t.Helper()
	crds := lab.InstallCRDs(t, c.Lab)
	rk := &rack{c: c, seg: c.Lab.DefaultSegment(), dyn: crds.Dyn}
	asn := rk.clusterASN(t)
	rk.tor = c.Lab.AddRouter(t, "tor", lab.RouterOptions{ASN: torASN, Segments: []*lab.Segment{rk.seg}, MaximumPaths: 16})
	for _, n := range c.Nodes {
		if err := rk.tor.AddNeighbor(lab.Neighbor{Address: n.IPv4, ASN: asn, Description: n.Name}); err != nil {
			t.Fatal(err)
		}
	}
	rk.client = c.Lab.AddHost(t, "client", rk.tor)
	torV4, torV6 := rk.tor.Addr4(rk.seg), rk.tor.Addr6(rk.seg)
	for _, n := range c.Nodes {
		if err := n.IP(
			[]string{"route", "replace", rk.client.PrefixV4.String(), "via", torV4.String()},
			[]string{"-6", "route", "replace", rk.client.PrefixV6.String(), "via", torV6.String()},
		); err != nil {
			t.Fatalf("%s: route to the client: %v", n.Name, err)
		}
	}
	crds.Peer("tor", config.BGPPeerSpec{PeerAddress: torV4.String(), PeerASN: torASN})
	var addrs []netip.Addr
	for _, n := range c.Nodes {
		addrs = append(addrs, n.IPv4)
	}
	lab.Eventually(t, converge, "tor: sessions with every node", func() error { return rk.tor.Established(addrs...) })
	rk.http = &http.Client{
		Transport: &http.Transport{DialContext: rk.client.Dialer(), DisableKeepAlives: true},
		Timeout:   2 * time.Second,
	}
	t.Logf("rack: tor %s/%s (AS %d) peers with %d nodes (AS %d); client %s/%s behind it",
		torV4, torV6, torASN, len(c.Nodes), asn, rk.client.Addr(false), rk.client.Addr(true))
	return rk
}

// clusterASN is the BGPConfiguration default's asNumber, or the default when unset.
func (rk *rack) clusterASN(t *testing.T) uint32 {
	t.Helper()
	u, err := rk.dyn.Resource(config.BGPConfigurationGVR).Get(context.Background(), config.ConfigurationName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("BGPConfiguration %s: %v", config.ConfigurationName, err)
	}
	var bc config.BGPConfiguration
	b, _ := json.Marshal(u.Object)
	if err := json.Unmarshal(b, &bc); err != nil {
		t.Fatalf("BGPConfiguration %s: %v", config.ConfigurationName, err)
	}
	if bc.Spec.ASNumber == nil {
		return config.DefaultASN
	}
	return uint32(*bc.Spec.ASNumber)
}

// get asks http://addr:port/path from the client, on a new connection.
func (rk *rack) get(addr netip.Addr, port uint16, path string) (string, error) {
	return lab.GetText(rk.http, "http://"+netip.AddrPortFrom(addr, port).String()+path)
}

// udp sends msg to addr:port from the client, from a new socket, and returns the answer.
func (rk *rack) udp(addr netip.Addr, port uint16, msg string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	to := netip.AddrPortFrom(addr, port).String()
	conn, err := rk.client.Dialer()(ctx, "udp", to)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte(msg)); err != nil {
		return "", fmt.Errorf("UDP %q to %s: %w", msg, to, err)
	}
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		return "", fmt.Errorf("UDP %q to %s: %w", msg, to, err)
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

// hostOf is the address of agnhost's "/clientip" answer (host:port).
func hostOf(s string) netip.Addr {
	ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// enableLoadBalancers lists the pool's ranges in BGPConfiguration default's
// serviceLoadBalancerIPs and creates a LoadBalancerIPPool with them.
func (rk *rack) enableLoadBalancers(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"serviceLoadBalancerIPs": []string{lbPoolV4, lbPoolV6}}})
	if _, err := rk.dyn.Resource(config.BGPConfigurationGVR).Patch(ctx, config.ConfigurationName, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("BGPConfiguration %s: %v", config.ConfigurationName, err)
	}
	pool := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": config.APIVersion,
		"kind":       "LoadBalancerIPPool",
		"metadata":   map[string]any{"name": "rack"},
		"spec":       map[string]any{"addresses": []any{lbPoolV4, lbPoolV6}},
	}}
	if _, err := rk.dyn.Resource(poolGVR).Create(ctx, pool, metav1.CreateOptions{}); err != nil {
		t.Fatalf("LoadBalancerIPPool: %v", err)
	}
}

// webDeployment creates a Deployment of replicas agnhost netexec pods (HTTP 8080, UDP 8081),
// ready while /readyz says so, rolled one new pod before one old, on node when given (any
// worker otherwise). A deleted pod shuts down in two steps, as a pod behind a load balancer
// should. First it goes on serving, its readiness passing, for 5 s (a preStop sleep):
// kube-proxy forwards to a terminating endpoint only while it is serving, so that is the time
// the new pod's node has to program and advertise it (without it, 6 of 1,361 requests were
// lost in one run: the new node's kube-proxy forwarded 2.3 s after its pod was ready, on a
// loaded machine). Then, at SIGTERM, it fails readiness and serves 5 s more
// (--delay-shutdown): the node withdraws the address while the pod still answers what the
// rack sends meanwhile (without it, the pod exited at SIGTERM while still advertised: 55 of
// 1,244 requests lost in one run).
func (u *user) webDeployment(name string, replicas int32, node *lab.Node) {
	u.t.Helper()
	labels := map[string]string{"app": name}
	zero, one := intstr.FromInt32(0), intstr.FromInt32(1)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Strategy: appsv1.DeploymentStrategy{
				Type:          appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{MaxUnavailable: &zero, MaxSurge: &one},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptrTo(int64(30)),
					Containers: []corev1.Container{{
						Name: "agnhost", Image: cluster.AgnhostImage, ImagePullPolicy: corev1.PullNever,
						Args:      []string{"netexec", "--http-port=8080", "--udp-port=8081", "--delay-shutdown=5"},
						Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 5}}},
						Ports: []corev1.ContainerPort{
							{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
							{Name: "udp", ContainerPort: 8081, Protocol: corev1.ProtocolUDP},
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromInt32(8080)}},
							PeriodSeconds: 1,
							// Kubernetes' default threshold, and more than the default second
							// to answer: one probe slowed by a loaded machine must not take the
							// only pod out of its Service in the middle of a rollout.
							TimeoutSeconds:   3,
							FailureThreshold: 3,
						},
					}},
				},
			},
		},
	}
	if node != nil {
		d.Spec.Template.Spec.NodeSelector = map[string]string{corev1.LabelHostname: node.Name}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := u.c.Lab.Kube.Client.AppsV1().Deployments(u.ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		u.t.Fatal(err)
	}
}

func ptrTo[T any](v T) *T { return &v }

// lbService creates a dual-stack Service of type LoadBalancer for the pods of Deployment
// name (HTTP and UDP ports) and returns its LoadBalancer addresses, IPv4 then IPv6, once
// the allocator has given them, checking they come from the pool.
func (u *user) lbService(rk *rack, name string, policy corev1.ServiceExternalTrafficPolicy) []netip.Addr {
	u.t.Helper()
	require := corev1.IPFamilyPolicyRequireDualStack
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeLoadBalancer,
			ExternalTrafficPolicy: policy,
			IPFamilyPolicy:        &require,
			IPFamilies:            []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
			Selector:              map[string]string{"app": name},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: lbHTTPPort, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
				{Name: "udp", Port: lbUDPPort, TargetPort: intstr.FromString("udp"), Protocol: corev1.ProtocolUDP},
			},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := u.c.Lab.Kube.Client.CoreV1().Services(u.ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		u.t.Fatal(err)
	}
	pools := []netip.Prefix{netip.MustParsePrefix(lbPoolV4), netip.MustParsePrefix(lbPoolV6)}
	var ips []netip.Addr
	lab.Eventually(u.t, converge, "Service "+name+": LoadBalancer addresses from the pool", func() error {
		s, err := u.c.Lab.Kube.Client.CoreV1().Services(u.ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ips = nil
		for _, pool := range pools {
			for _, in := range s.Status.LoadBalancer.Ingress {
				if a, err := netip.ParseAddr(in.IP); err == nil && pool.Contains(a) {
					ips = append(ips, a)
					break
				}
			}
		}
		if len(ips) != 2 || len(s.Status.LoadBalancer.Ingress) != 2 {
			return fmt.Errorf("status.loadBalancer.ingress %+v: want one address of %s and one of %s (conditions %+v)",
				s.Status.LoadBalancer.Ingress, lbPoolV4, lbPoolV6, s.Status.Conditions)
		}
		return nil
	})
	u.t.Logf("Service %s (externalTrafficPolicy %s): LoadBalancer addresses %v", name, policy, ips)
	return ips
}

func (u *user) waitDeploymentReady(name string, replicas int32) {
	u.t.Helper()
	lab.Eventually(u.t, 2*time.Minute, "Deployment "+name+" ready", func() error {
		d, err := u.c.Lab.Kube.Client.AppsV1().Deployments(u.ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ReadyReplicas != replicas || d.Status.Replicas != replicas {
			return fmt.Errorf("%d of %d ready, %d in all", d.Status.ReadyReplicas, replicas, d.Status.Replicas)
		}
		return nil
	})
}

func (u *user) scale(name string, replicas int32) {
	u.t.Helper()
	u.patchDeployment(name, map[string]any{"spec": map[string]any{"replicas": replicas}})
}

// moveDeployment changes the pods' node: a rolling update to node.
func (u *user) moveDeployment(name string, node *lab.Node) {
	u.t.Helper()
	u.patchDeployment(name, map[string]any{"spec": map[string]any{"template": map[string]any{"spec": map[string]any{
		"nodeSelector": map[string]string{corev1.LabelHostname: node.Name},
	}}}})
}

func (u *user) patchDeployment(name string, patch map[string]any) {
	u.t.Helper()
	b, _ := json.Marshal(patch)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := u.c.Lab.Kube.Client.AppsV1().Deployments(u.ns).Patch(ctx, name, types.StrategicMergePatchType, b, metav1.PatchOptions{}); err != nil {
		u.t.Fatalf("patch Deployment %s: %v", name, err)
	}
}

// waitRolledOut waits until Deployment name's only pod is a ready one on node, every old
// pod gone.
func (u *user) waitRolledOut(name string, node *lab.Node) {
	u.t.Helper()
	lab.Eventually(u.t, 3*time.Minute, "Deployment "+name+" rolled out to "+node.Name, func() error {
		pods, err := u.c.Lab.Kube.Client.CoreV1().Pods(u.ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return err
		}
		if len(pods.Items) != 1 {
			var names []string
			for _, p := range pods.Items {
				names = append(names, p.Name+" on "+p.Spec.NodeName)
			}
			return fmt.Errorf("pods %v", names)
		}
		p := &pods.Items[0]
		if p.Spec.NodeName != node.Name || !lab.PodReady(p) || p.DeletionTimestamp != nil {
			return fmt.Errorf("pod %s on %s, ready %v", p.Name, p.Spec.NodeName, lab.PodReady(p))
		}
		return nil
	})
}

func (u *user) noPods(name string) error {
	pods, err := u.c.Lab.Kube.Client.CoreV1().Pods(u.ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + name})
	if err != nil {
		return err
	}
	if n := len(pods.Items); n != 0 {
		return fmt.Errorf("%d pods", n)
	}
	return nil
}

// kubeProxyNodes are the nodes with a ready kube-proxy pod.
func (rk *rack) kubeProxyNodes(t *testing.T) []*lab.Node {
	t.Helper()
	pods, err := rk.c.Lab.Kube.Client.CoreV1().Pods("kube-system").List(context.Background(), metav1.ListOptions{LabelSelector: "k8s-app=kube-proxy"})
	if err != nil {
		t.Fatal(err)
	}
	var out []*lab.Node
	for _, n := range rk.c.Nodes {
		for i := range pods.Items {
			if p := &pods.Items[i]; p.Spec.NodeName == n.Name && lab.PodReady(p) {
				out = append(out, n)
				break
			}
		}
	}
	return out
}

// nextHops are the active next hops of the ToR's installed BGP route for ip's host prefix
// (zebra's RIB, exact match); none when there is no such route.
func (rk *rack) nextHops(ip netip.Addr) ([]netip.Addr, error) {
	p := netip.PrefixFrom(ip, ip.BitLen())
	cmd := "show ip route " + p.String() + " json"
	if ip.Is6() {
		cmd = "show ipv6 route " + p.String() + " json"
	}
	var rib lab.RIB
	if err := rk.tor.VtyshJSON(&rib, cmd); err != nil {
		return nil, err
	}
	var nhs []netip.Addr
	for _, rt := range rib[p.String()] {
		if rt.Protocol != "bgp" || !rt.Selected || !rt.Installed {
			continue
		}
		for _, nh := range rt.Nexthops {
			if a, err := netip.ParseAddr(nh.IP); err == nil && nh.Active {
				nhs = append(nhs, a)
			}
		}
	}
	slices.SortFunc(nhs, netip.Addr.Compare)
	return nhs, nil
}

// waitNextHops waits until the ToR's route to ip has exactly nodes as next hops (their
// address of ip's family), or, with no nodes, until it has no route to ip.
func (rk *rack) waitNextHops(t *testing.T, ip netip.Addr, nodes ...*lab.Node) {
	t.Helper()
	var want, names []string
	for _, n := range nodes {
		a := n.IPv4
		if ip.Is6() {
			a = n.IPv6
		}
		want = append(want, a.String())
		names = append(names, n.Name)
	}
	slices.Sort(want)
	lab.Eventually(t, converge, fmt.Sprintf("tor: route to %s via %v", ip, names), func() error {
		nhs, err := rk.nextHops(ip)
		if err != nil {
			return err
		}
		var got []string
		for _, a := range nhs {
			got = append(got, a.String())
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("next hops %v, want %v", got, want)
		}
		return nil
	})
}

// reachService checks the client reaches the Service at ip over TCP (/hostname) and UDP
// ("hostname", "echo"), answered by a pod whose name starts with prefix.
func (rk *rack) reachService(t *testing.T, ip netip.Addr, prefix string) {
	t.Helper()
	lab.Eventually(t, converge, fmt.Sprintf("client -> %s TCP", ip), func() error {
		out, err := rk.get(ip, lbHTTPPort, "/hostname")
		if err == nil && !strings.HasPrefix(out, prefix) {
			err = fmt.Errorf("answer %q", out)
		}
		return err
	})
	lab.Eventually(t, converge, fmt.Sprintf("client -> %s UDP", ip), func() error {
		out, err := rk.udp(ip, lbUDPPort, "hostname")
		if err == nil && !strings.HasPrefix(out, prefix) {
			err = fmt.Errorf("answer %q", out)
		}
		if err != nil {
			return err
		}
		if out, err = rk.udp(ip, lbUDPPort, "echo rack"); err == nil && out != "rack" {
			err = fmt.Errorf("echo answered %q", out)
		}
		return err
	})
}

// load is the client asking /hostname of some addresses at a steady rate, each request on
// a new connection.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	sent   int
	lost   []string
}

func (rk *rack) startLoad(ips []netip.Addr, every time.Duration, prefix string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	ld := &load{cancel: cancel}
	for _, ip := range ips {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				ld.wg.Add(1)
				go func() {
					defer ld.wg.Done()
					start := time.Now()
					out, err := rk.get(ip, lbHTTPPort, "/hostname")
					if err == nil && !strings.HasPrefix(out, prefix) {
						err = fmt.Errorf("answer %q", out)
					}
					ld.mu.Lock()
					defer ld.mu.Unlock()
					ld.sent++
					if err != nil {
						ld.lost = append(ld.lost, fmt.Sprintf("%s %s: %v", start.Format("15:04:05.000"), ip, err))
					}
				}()
			}
		}()
	}
	return ld
}

// stop stops the load and returns how many requests were made and the failed ones.
func (ld *load) stop() (int, []string) {
	ld.cancel()
	ld.wg.Wait()
	ld.mu.Lock()
	defer ld.mu.Unlock()
	slices.Sort(ld.lost)
	return ld.sent, ld.lost
}

// timeline records, with their times, the changes of the ToR's next hops for ips and of
// the endpoints of Service svc (both polled), while it runs.
type timeline struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	events []string
}

func (rk *rack) startTimeline(t *testing.T, u *user, svc string, ips []netip.Addr) *timeline {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tl := &timeline{cancel: cancel}
	names := map[netip.Addr]string{}
	for _, n := range rk.c.Nodes {
		names[n.IPv4], names[n.IPv6] = n.Name, n.Name
	}
	tl.wg.Add(2)
	go func() {
		defer tl.wg.Done()
		last := map[string]string{}
		for ctx.Err() == nil {
			got, err := u.endpointSlices(ctx, svc)
			if err != nil {
				if ctx.Err() == nil {
					tl.add(err.Error())
				}
				time.Sleep(100 * time.Millisecond)
				continue
			}
			for _, s := range got {
				var eps []string
				for _, e := range s.Endpoints {
					node := ""
					if e.NodeName != nil {
						node = *e.NodeName
					}
					c := e.Conditions
					eps = append(eps, fmt.Sprintf("%s ready=%v serving=%v terminating=%v", node, isTrue(c.Ready), isTrue(c.Serving), isTrue(c.Terminating)))
				}
				now := fmt.Sprint(eps)
				if now != last[s.Name] {
					last[s.Name] = now
					tl.add(fmt.Sprintf("EndpointSlice %s (%s): %s", s.Name, s.AddressType, now))
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	go func() {
		defer tl.wg.Done()
		last := map[netip.Addr]string{}
		for ctx.Err() == nil {
			for _, ip := range ips {
				nhs, err := rk.nextHops(ip)
				var via []string
				for _, a := range nhs {
					via = append(via, names[a])
				}
				now := fmt.Sprint(via)
				if err != nil {
					now = err.Error()
				}
				if now != last[ip] {
					last[ip] = now
					tl.add(fmt.Sprintf("tor: %s via %s", ip, now))
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return tl
}

func isTrue(b *bool) bool { return b != nil && *b }

func (tl *timeline) add(event string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.events = append(tl.events, time.Now().Format("15:04:05.000")+" "+event)
}

// stop stops recording and returns the events, each starting with its time.
func (tl *timeline) stop() []string {
	tl.cancel()
	tl.wg.Wait()
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return slices.Clone(tl.events)
}

// measure runs change and returns how long after the API first showed Service svc's
// endpoint on node usable (want) or not (!want) the ToR's installed route to ip first had
// node as a next hop (want) or not (!want), and when that was. Usable is ready, or serving: kube-proxy sends to
// serving terminating endpoints when a Service has no ready one, as here.
func (rk *rack) measure(t *testing.T, u *user, svc string, node *lab.Node, ip netip.Addr, want bool, change func()) (time.Duration, time.Time) {
	t.Helper()
	hop := node.IPv4
	if ip.Is6() {
		hop = node.IPv6
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Both sides are polled, every 5 ms: the times are as precise as a List or a vtysh
	// command is quick.
	apiAt := make(chan time.Time, 1)
	apiErr := make(chan error, 1)
	go func() {
		for ctx.Err() == nil {
			got, err := u.endpointSlices(ctx, svc)
			if err != nil {
				if ctx.Err() == nil {
					apiErr <- err
				}
				return
			}
			if usableOn(got, node.Name) == want {
				apiAt <- time.Now()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	torAt := make(chan time.Time, 1)
	torErr := make(chan error, 1)
	go func() {
		for ctx.Err() == nil {
			nhs, err := rk.nextHops(ip)
			if err != nil {
				torErr <- err
				return
			}
			if slices.Contains(nhs, hop) == want {
				torAt <- time.Now()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	// The route must not be in the wanted state already, or the change measures nothing.
	nhs, err := rk.nextHops(ip)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(nhs, hop) == want {
		t.Fatalf("tor: route to %s has next hops %v before the change", ip, nhs)
	}
	change()
	var a, r time.Time
	for a.IsZero() || r.IsZero() {
		select {
		case a = <-apiAt:
		case r = <-torAt:
		case err := <-torErr:
			t.Fatal(err)
		case err := <-apiErr:
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatalf("%s on %s usable %v: API at %v, tor at %v: %v", svc, node.Name, want, a, r, ctx.Err())
		}
	}
	return r.Sub(a).Round(time.Millisecond), r
}

// firstServed asks ip's /hostname from the client every 10 ms until ctx ends, each time on
// a new connection with a short timeout, and sends on the channel returned the time the
// first request to be answered was sent.
func (rk *rack) firstServed(ctx context.Context, ip netip.Addr) <-chan time.Time {
	c := &http.Client{
		Transport: &http.Transport{DialContext: rk.client.Dialer(), DisableKeepAlives: true},
		Timeout:   300 * time.Millisecond,
	}
	url := "http://" + netip.AddrPortFrom(ip, lbHTTPPort).String() + "/hostname"
	out := make(chan time.Time, 1)
	var once sync.Once
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			go func() {
				start := time.Now()
				resp, err := c.Get(url)
				if err != nil {
					return
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					once.Do(func() { out <- start })
				}
			}()
		}
	}()
	return out
}

func (u *user) endpointSlices(ctx context.Context, svc string) ([]discoveryv1.EndpointSlice, error) {
	l, err := u.c.Lab.Kube.Client.DiscoveryV1().EndpointSlices(u.ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return nil, fmt.Errorf("EndpointSlices of %s: %w", svc, err)
	}
	return l.Items, nil
}

// usableOn reports whether the slices hold an endpoint on node that is ready, or serving.
func usableOn(slices []discoveryv1.EndpointSlice, node string) bool {
	for _, s := range slices {
		for _, e := range s.Endpoints {
			if e.NodeName == nil || *e.NodeName != node {
				continue
			}
			c := e.Conditions
			if (c.Ready != nil && *c.Ready) || (c.Serving != nil && *c.Serving) {
				return true
			}
		}
	}
	return false
}
