// Package kubelet_test runs podroute end to end under a real kubelet and container runtime:
// two lab nodes (package test/lab), each with containerd and kubelet in its network
// namespace, against a real kube-apiserver.
//
// TestKubelet runs podroute-agent as a process on each node. Pods are ordinary Pod objects
// bound to a node by spec.nodeName (no scheduler runs); containerd's CRI plugin wires them
// with the CNI configuration and plugin podroute-agent installed, as on a production node.
// TestDaemonSet (daemonset_test.go) installs podroute with `kubectl apply -f deploy/`
// instead, with a controller manager and a scheduler, and upgrades it.
//
// The subtests build on each other, in order: network readiness gates the Node, pods get
// addresses from their node's pod CIDRs, reach each other across nodes, give their addresses
// back when deleted, and stay connected while containerd and the agents restart.
package kubelet_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podroute/podroute/cniconf"
	"github.com/podroute/podroute/test/cniutil"
	"github.com/podroute/podroute/test/lab"
)

const (
	namespace = metav1.NamespaceDefault
	echoPort  = 8080
	// podStart bounds how long a pod may take from creation to Running (or to completion).
	podStart = 90 * time.Second
	// converge bounds a routing change reaching every node.
	converge = 30 * time.Second
)

type cluster struct {
	lab      *lab.Lab
	client   kubernetes.Interface
	nodes    []*lab.Node
	kubelets []*lab.Kubelet
	servers  []*corev1.Pod // servers[i] runs on nodes[i]: serve-tcp echoPort
	// scheduled places pods with a node selector for the scheduler to bind, instead of
	// binding them by spec.nodeName.
	scheduled bool
	// churnRounds is how many pods testDeleteFreesAddresses creates and deletes in turn on
	// each node (default 3); with reuse set, enough to go round the node's IPv4 range, so
	// that freed addresses must be handed out again.
	churnRounds int
	reuse       bool
}

func TestKubelet(t *testing.T) {
	start := time.Now()
	l := lab.New(t, lab.Options{})
	c := &cluster{lab: l, client: l.Kube.Client}
	// The agents stay off for now: the nodes must first be seen NotReady for want of a CNI
	// configuration.
	for i := 1; i <= 2; i++ {
		n := l.AddNode(t, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i, NoAgent: true})
		c.nodes = append(c.nodes, n)
		c.kubelets = append(c.kubelets, n.StartKubelet(t, lab.KubeletOptions{}))
	}
	t.Logf("two kubelet nodes up in %v", time.Since(start).Round(time.Millisecond))

	for _, st := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"NetworkReadiness", c.testNetworkReadiness},
		{"PodAddresses", c.testPodAddresses},
		{"CrossNode", c.testCrossNode},
		{"DeleteFreesAddresses", c.testDeleteFreesAddresses},
		{"RuntimeAndAgentRestart", c.testRestarts},
	} {
		if !t.Run(st.name, st.f) {
			t.Fatalf("%s failed; the later subtests build on it", st.name)
		}
	}
	t.Logf("done in %v", time.Since(start).Round(time.Millisecond))
}

// testNetworkReadiness: kubelet reports the Node NotReady (network plugin not ready) until
// podroute-agent writes the CNI configuration, and Ready after.
func (c *cluster) testNetworkReadiness(t *testing.T) {
	for _, n := range c.nodes {
		if p, _, err := n.ConfList(); err == nil {
			t.Fatalf("%s: a CNI configuration exists before the agent ran: %s", n.Name, p)
		}
		waitNetworkNotReady(t, n)
	}
	// The kubelet adopted the Node the lab created: the pod CIDRs stay, the addresses are
	// the node's.
	for _, n := range c.nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		node, err := c.client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var want, internal []string
		for _, p := range n.PodCIDRs {
			want = append(want, p.String())
		}
		for _, a := range node.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				internal = append(internal, a.Address)
			}
		}
		if !slices.Equal(node.Spec.PodCIDRs, want) {
			t.Errorf("%s: spec.podCIDRs %v after the kubelet registered, want %v", n.Name, node.Spec.PodCIDRs, want)
		}
		if !slices.Equal(internal, []string{n.IPv4.String(), n.IPv6.String()}) {
			t.Errorf("%s: InternalIPs %v, want %s and %s", n.Name, internal, n.IPv4, n.IPv6)
		}
		if v := node.Status.NodeInfo.KubeletVersion; v == "" {
			t.Errorf("%s: no kubelet version in the Node's status", n.Name)
		}
	}
	// It stays so while no agent runs.
	time.Sleep(3 * time.Second)
	for _, n := range c.nodes {
		cond, err := n.NodeCondition(corev1.NodeReady)
		if err != nil {
			t.Fatal(err)
		}
		if cond == nil || cond.Status != corev1.ConditionFalse {
			t.Fatalf("%s: Ready condition is %s without a CNI configuration", n.Name, describe(cond))
		}
		t.Logf("%s before the agent: %s", n.Name, describe(cond))
	}

	for _, n := range c.nodes {
		if err := n.Agent.Start(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.nodes {
		written, ready := waitReadyAfterConfig(t, n)
		t.Logf("%s: CNI configuration written at %s, Ready since %s", n.Name,
			written.Format(time.RFC3339Nano), ready.LastTransitionTime.Time.Format(time.RFC3339))
	}
}

// waitNetworkNotReady waits until kubelet reports n NotReady for want of a network.
func waitNetworkNotReady(t *testing.T, n *lab.Node) {
	t.Helper()
	lab.Eventually(t, 60*time.Second, n.Name+" NotReady for want of a network", func() error {
		cond, err := n.NodeCondition(corev1.NodeReady)
		if err != nil {
			return err
		}
		if cond == nil || cond.Status != corev1.ConditionFalse || !networkNotReady(cond.Message) {
			return fmt.Errorf("Ready condition is %s", describe(cond))
		}
		return nil
	})
}

// waitReadyAfterConfig waits until n has a CNI configuration and kubelet reports it Ready,
// and checks that it turned Ready no earlier than the configuration was written; it returns
// the two times.
func waitReadyAfterConfig(t *testing.T, n *lab.Node) (time.Time, *corev1.NodeCondition) {
	t.Helper()
	var written time.Time
	lab.Eventually(t, 30*time.Second, n.Name+" CNI configuration", func() error {
		p, _, err := n.ConfList()
		if err != nil {
			return err
		}
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		written = st.ModTime()
		return nil
	})
	var ready *corev1.NodeCondition
	lab.Eventually(t, 60*time.Second, n.Name+" Ready", func() error {
		cond, err := n.NodeCondition(corev1.NodeReady)
		if err != nil {
			return err
		}
		if cond == nil || cond.Status != corev1.ConditionTrue {
			return fmt.Errorf("Ready condition is %s", describe(cond))
		}
		ready = cond
		return nil
	})
	// The API keeps whole seconds.
	if ready.LastTransitionTime.Time.Before(written.Truncate(time.Second)) {
		t.Errorf("%s: Ready since %v, before the CNI configuration was written at %v",
			n.Name, ready.LastTransitionTime.Time, written)
	}
	return written, ready
}

func networkNotReady(msg string) bool {
	for _, s := range []string{"NetworkReady=false", "network plugin not ready", "cni plugin not initialized", "cni config uninitialized"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func describe(c *corev1.NodeCondition) string {
	if c == nil {
		return "absent"
	}
	return fmt.Sprintf("%s (%s: %s)", c.Status, c.Reason, c.Message)
}

// testPodAddresses: a pod on each node runs and gets one address of each family from its
// node's pod CIDRs; the node reaches it.
func (c *cluster) testPodAddresses(t *testing.T) {
	for i, n := range c.nodes {
		c.createPod(t, fmt.Sprintf("server-%d", i+1), n, corev1.RestartPolicyAlways, "serve-tcp", fmt.Sprint(echoPort))
	}
	for i, n := range c.nodes {
		p := c.waitRunning(t, fmt.Sprintf("server-%d", i+1))
		c.servers = append(c.servers, p)
		v4, v6 := podAddrs(t, p)
		for _, a := range []netip.Addr{v4, v6} {
			if !slices.ContainsFunc(n.PodCIDRs, func(pfx netip.Prefix) bool { return pfx.Contains(a) }) {
				t.Errorf("%s: address %s is outside the node's pod CIDRs %v", p.Name, a, n.PodCIDRs)
			}
		}
		t.Logf("%s on %s: %s, %s", p.Name, n.Name, v4, v6)
		// The plugin's host side: the veth named after the pod, and a route to the pod.
		veth := cniutil.HostVethName(p.Namespace, p.Name, "", "eth0")
		if _, err := n.IPOutput("link", "show", veth); err != nil {
			t.Errorf("%s: no host veth %s for %s: %v", n.Name, veth, p.Name, err)
		}
		for _, a := range []netip.Addr{v4, v6} {
			if err := ping(n, a); err != nil {
				t.Errorf("%s -> %s (%s): %v", n.Name, p.Name, a, err)
			}
		}
	}
}

// testCrossNode: every node reaches the other node's pod, and pods on each node open TCP
// connections to the pod on the other node, over both families.
func (c *cluster) testCrossNode(t *testing.T) {
	for _, n := range c.nodes {
		for _, s := range c.servers {
			v4, v6 := podAddrs(t, s)
			for _, a := range []netip.Addr{v4, v6} {
				lab.Eventually(t, converge, fmt.Sprintf("%s pings %s (%s)", n.Name, s.Name, a), func() error { return ping(n, a) })
			}
		}
	}
	c.connectAll(t, "client")
}

// connectAll runs, on each node, a pod that connects to the server pod of the other node
// over each family, and checks that every one of them succeeded. The client pods are
// deleted afterwards.
func (c *cluster) connectAll(t *testing.T, prefix string) {
	t.Helper()
	var names []string
	for i, n := range c.nodes {
		other := c.servers[(i+1)%len(c.servers)]
		v4, v6 := podAddrs(t, other)
		for _, a := range []netip.Addr{v4, v6} {
			fam := "v4"
			if a.Is6() {
				fam = "v6"
			}
			name := fmt.Sprintf("%s-%d-%s-%s", prefix, i+1, other.Name, fam)
			c.createPod(t, name, n, corev1.RestartPolicyNever, "connect", netip.AddrPortFrom(a, echoPort).String(), "20")
			names = append(names, name)
		}
	}
	for _, name := range names {
		p := c.waitCompleted(t, name)
		k := c.kubeletOf(p.Spec.NodeName)
		log, lerr := k.ContainerLog(p, "netcheck")
		if lerr != nil {
			log = lerr.Error()
		}
		if p.Status.Phase != corev1.PodSucceeded {
			t.Errorf("%s on %s: %s:\n%s", name, p.Spec.NodeName, p.Status.Phase, log)
			continue
		}
		t.Logf("%s: %s", name, strings.TrimSpace(lastLine(log)))
	}
	for _, name := range names {
		c.deletePod(t, name)
	}
}

// testDeleteFreesAddresses: pods created and deleted in turn on each node leave no address
// reserved and no CNI error behind; with c.reuse, the next pods get freed addresses again.
func (c *cluster) testDeleteFreesAddresses(t *testing.T) {
	rounds := c.churnRounds
	if rounds == 0 {
		rounds = 3
	}
	base := map[string][]string{}
	for _, n := range c.nodes {
		c.waitSandboxes(t, n, 1) // the server pod alone
		base[n.Name] = reservations(t, n)
		t.Logf("%s: IPAM reservations with the server pod alone: %v", n.Name, base[n.Name])
	}
	seen := map[string][]string{}
	for round := 1; round <= rounds; round++ {
		for i, n := range c.nodes {
			c.createPod(t, fmt.Sprintf("churn-%d", i+1), n, corev1.RestartPolicyAlways, "sleep")
		}
		for i, n := range c.nodes {
			p := c.waitRunning(t, fmt.Sprintf("churn-%d", i+1))
			v4, v6 := podAddrs(t, p)
			seen[n.Name] = append(seen[n.Name], v4.String()+","+v6.String())
			if err := ping(n, v4); err != nil {
				t.Errorf("round %d: %s -> %s: %v", round, n.Name, v4, err)
			}
		}
		for i := range c.nodes {
			c.deletePod(t, fmt.Sprintf("churn-%d", i+1))
		}
		for _, n := range c.nodes {
			lab.Eventually(t, 30*time.Second, fmt.Sprintf("round %d: %s reservations back to %v", round, n.Name, base[n.Name]), func() error {
				if got := reservations(t, n); !slices.Equal(got, base[n.Name]) {
					return fmt.Errorf("reserved: %v", got)
				}
				return nil
			})
		}
	}
	for _, n := range c.nodes {
		t.Logf("%s: churn pod addresses per round: %v", n.Name, seen[n.Name])
		if !c.reuse {
			continue
		}
		v4 := map[string]int{}
		reused := 0
		for _, pair := range seen[n.Name] {
			a, _, _ := strings.Cut(pair, ",")
			if v4[a]++; v4[a] == 2 {
				reused++
			}
		}
		if reused == 0 {
			t.Errorf("%s: no IPv4 address handed out twice in %d rounds", n.Name, rounds)
		}
		t.Logf("%s: %d IPv4 addresses freed and handed out again", n.Name, reused)
	}
	c.noWarnings(t, "churn-")
}

// testRestarts: restarting containerd and then podroute-agent on each node leaves the running
// pods in place (same sandbox, same addresses, no container restart) and connected: pings
// across nodes keep being answered meanwhile, and a TCP connection opened before the
// restarts still carries data after them.
func (c *cluster) testRestarts(t *testing.T) {
	c.keepsConnected(t, "the restarts", func() {
		for i, n := range c.nodes {
			if err := c.kubelets[i].RestartContainerd(); err != nil {
				t.Fatalf("%s: restart containerd: %v", n.Name, err)
			}
			if err := n.Agent.Restart(); err != nil {
				t.Fatalf("%s: restart agent: %v", n.Name, err)
			}
			t.Logf("%s: containerd and podroute-agent restarted", n.Name)
		}
	})
	for _, n := range c.nodes {
		lab.Eventually(t, 60*time.Second, n.Name+" Ready after the restarts", func() error {
			cond, err := n.NodeCondition(corev1.NodeReady)
			if err != nil {
				return err
			}
			if cond == nil || cond.Status != corev1.ConditionTrue {
				return fmt.Errorf("Ready condition is %s", describe(cond))
			}
			return nil
		})
	}
	for _, n := range c.nodes {
		for _, s := range c.servers {
			v4, v6 := podAddrs(t, s)
			for _, a := range []netip.Addr{v4, v6} {
				lab.Eventually(t, converge, fmt.Sprintf("%s pings %s (%s)", n.Name, s.Name, a), func() error { return ping(n, a) })
			}
		}
	}
	c.connectAll(t, "after-restart")
	c.noWarnings(t, "")
}

// --- helpers ---

// dial opens a TCP connection from the node's namespace.
func (c *cluster) dial(t *testing.T, n *lab.Node, to netip.AddrPort) net.Conn {
	t.Helper()
	var conn net.Conn
	err := n.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", to.String(), 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("%s: dial %s: %v", n.Name, to, err)
	}
	return conn
}

// echo sends a line on conn and expects the echo server to send it back.
func echo(conn net.Conn, what string) error {
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	msg := fmt.Sprintf("podroute %s %d\n", what, time.Now().UnixNano())
	if _, err := conn.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// probe pings, from each node, the other node's server pod (IPv4 and IPv6 in turn) every
// 200 ms until the returned function is called; that returns how many pings were sent and
// how many went unanswered within a second.
// keepsConnected runs disrupt while pings cross between the nodes' pods and a TCP connection
// from node-1 to the server pod on node-2 stays open; then, once the BGP mesh is back, it
// checks that no ping went unanswered, that the connection still carries data, and that
// every server pod kept its addresses and its container.
func (c *cluster) keepsConnected(t *testing.T, what string, disrupt func()) {
	t.Helper()
	before := map[string]*corev1.Pod{}
	for _, s := range c.servers {
		before[s.Name] = c.getPod(t, s.Name)
	}
	v4, _ := podAddrs(t, c.servers[1])
	conn := c.dial(t, c.nodes[0], netip.AddrPortFrom(v4, echoPort))
	defer conn.Close()
	if err := echo(conn, "before"); err != nil {
		t.Fatalf("%s -> %s before %s: %v", c.nodes[0].Name, c.servers[1].Name, what, err)
	}
	stop := c.probe(t)
	disrupt()
	c.waitMesh(t)
	time.Sleep(2 * time.Second)
	sent, lost := stop()
	t.Logf("pings across nodes during %s: %d sent, %d unanswered", what, sent, lost)
	if lost > 0 {
		t.Errorf("%d of %d pings across nodes went unanswered during %s", lost, sent, what)
	}
	if err := echo(conn, "after"); err != nil {
		t.Errorf("%s -> %s: the connection opened before %s broke: %v", c.nodes[0].Name, c.servers[1].Name, what, err)
	}
	for _, s := range c.servers {
		now := c.getPod(t, s.Name)
		was := before[s.Name]
		if !slices.Equal(now.Status.PodIPs, was.Status.PodIPs) {
			t.Errorf("%s: addresses changed from %v to %v", s.Name, was.Status.PodIPs, now.Status.PodIPs)
		}
		if len(now.Status.ContainerStatuses) != 1 || now.Status.ContainerStatuses[0].RestartCount != 0 ||
			now.Status.ContainerStatuses[0].ContainerID != was.Status.ContainerStatuses[0].ContainerID {
			t.Errorf("%s: container restarted: %+v", s.Name, now.Status.ContainerStatuses)
		}
	}
}

// waitMesh waits until every node's agent has its BGP session with every other node.
func (c *cluster) waitMesh(t *testing.T) {
	t.Helper()
	for _, n := range c.nodes {
		lab.Eventually(t, converge, n.Name+" BGP sessions established", func() error {
			var peers []netip.Addr
			for _, o := range c.nodes {
				if o != n {
					peers = append(peers, o.IPv4)
				}
			}
			return n.Established(peers...)
		})
	}
}

func (c *cluster) probe(t *testing.T) func() (int, int) {
	t.Helper()
	var (
		mu         sync.Mutex
		sent, lost int
	)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		v4, v6 := podAddrs(t, c.servers[(i+1)%len(c.servers)])
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for seq := 0; ; seq++ {
				select {
				case <-done:
					return
				case <-tick.C:
				}
				dst := v4
				if seq%2 == 1 {
					dst = v6
				}
				err := pingOnce(n, dst)
				mu.Lock()
				sent++
				if err != nil {
					lost++
					t.Logf("%s -> %s: %v", n.Name, dst, err)
				}
				mu.Unlock()
			}
		}()
	}
	return func() (int, int) {
		close(done)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return sent, lost
	}
}

func (c *cluster) kubeletOf(node string) *lab.Kubelet {
	for i, n := range c.nodes {
		if n.Name == node {
			return c.kubelets[i]
		}
	}
	return nil
}

func (c *cluster) createPod(t *testing.T, name string, n *lab.Node, restart corev1.RestartPolicy, args ...string) {
	t.Helper()
	no := false
	grace := int64(1)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{"app": "netcheck"}},
		Spec: corev1.PodSpec{
			NodeName:                      n.Name,
			AutomountServiceAccountToken:  &no,
			EnableServiceLinks:            &no,
			RestartPolicy:                 restart,
			TerminationGracePeriodSeconds: &grace,
			DNSPolicy:                     corev1.DNSDefault,
			Containers: []corev1.Container{{
				Name:            "netcheck",
				Image:           lab.NetcheckImage,
				ImagePullPolicy: corev1.PullNever,
				Args:            args,
			}},
		},
	}
	if c.scheduled {
		pod.Spec.NodeName = ""
		pod.Spec.NodeSelector = map[string]string{corev1.LabelHostname: n.Name}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
}

func (c *cluster) getPod(t *testing.T, name string) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := c.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod %s: %v", name, err)
	}
	return p
}

// waitRunning waits until the pod runs with its addresses reported.
func (c *cluster) waitRunning(t *testing.T, name string) *corev1.Pod {
	t.Helper()
	return c.waitPod(t, name, "Running with addresses", func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodRunning && len(p.Status.PodIPs) > 0
	})
}

// waitCompleted waits until the pod's phase is Succeeded or Failed.
func (c *cluster) waitCompleted(t *testing.T, name string) *corev1.Pod {
	t.Helper()
	return c.waitPod(t, name, "completed", func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	})
}

func (c *cluster) waitPod(t *testing.T, name, what string, ok func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var (
		last *corev1.Pod
		err  error
	)
	for deadline := time.Now().Add(podStart); ; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			err = fmt.Errorf("still not after %v (%v)", podStart, err)
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var p *corev1.Pod
		p, err = c.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		cancel()
		if err != nil {
			continue
		}
		last = p
		if ok(p) {
			return p
		}
		// A sandbox that failed to start is where CNI ADD errors surface: no point waiting.
		if e := c.sandboxFailure(p); e != "" {
			err = fmt.Errorf("sandbox creation failed: %s", e)
			break
		}
		err = fmt.Errorf("phase %s", p.Status.Phase)
	}
	status := "(none)"
	if last != nil {
		status = fmt.Sprintf("phase %s, reason %q, message %q, podIPs %v, containers %+v",
			last.Status.Phase, last.Status.Reason, last.Status.Message, last.Status.PodIPs, last.Status.ContainerStatuses)
	}
	t.Fatalf("pod %s not %s: %v\nstatus: %s\nevents:\n%s", name, what, err, status, c.events(name))
	return nil
}

// sandboxFailure returns the message of a FailedCreatePodSandBox event about p, if any.
func (c *cluster) sandboxFailure(p *corev1.Pod) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	evs, err := c.client.CoreV1().Events(p.Namespace).List(ctx, metav1.ListOptions{
		FieldSelector: "involvedObject.uid=" + string(p.UID) + ",reason=FailedCreatePodSandBox",
	})
	if err != nil || len(evs.Items) == 0 {
		return ""
	}
	return evs.Items[0].Message
}

// deletePod deletes the pod and waits until the kubelet has finished with it (the object is
// gone: kubelet confirms the deletion once the containers are stopped).
func (c *cluster) deletePod(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete pod %s: %v", name, err)
	}
	lab.Eventually(t, podStart, "pod "+name+" gone", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err == nil {
			return fmt.Errorf("still there")
		}
		return err
	})
}

// waitSandboxes waits until containerd on n holds want pod network namespaces.
func (c *cluster) waitSandboxes(t *testing.T, n *lab.Node, want int) {
	t.Helper()
	k := c.kubeletOf(n.Name)
	lab.Eventually(t, 60*time.Second, fmt.Sprintf("%s: %d pod sandbox(es)", n.Name, want), func() error {
		s, err := k.Sandboxes()
		if err != nil {
			return err
		}
		if len(s) != want {
			return fmt.Errorf("sandboxes: %v", s)
		}
		return nil
	})
}

// events lists the events about the object named name.
func (c *cluster) events(name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	evs, err := c.client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, e := range evs.Items {
		fmt.Fprintf(&b, "  %s %s %s: %s\n", e.LastTimestamp.Format(time.RFC3339), e.Type, e.Reason, e.Message)
	}
	return b.String()
}

// noWarnings fails the test on any Warning event about a pod whose name starts with prefix
// (sandbox creation or teardown failures, which is where CNI errors surface).
func (c *cluster) noWarnings(t *testing.T, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	evs, err := c.client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{FieldSelector: "type=Warning"})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if e.InvolvedObject.Kind == "Pod" && strings.HasPrefix(e.InvolvedObject.Name, prefix) {
			t.Errorf("warning about pod %s: %s: %s (x%d)", e.InvolvedObject.Name, e.Reason, e.Message, e.Count)
		}
	}
}

// podAddrs returns the pod's IPv4 and IPv6 address, failing unless it has one of each.
func podAddrs(t *testing.T, p *corev1.Pod) (v4, v6 netip.Addr) {
	t.Helper()
	for _, ip := range p.Status.PodIPs {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil {
			t.Fatalf("%s: pod IP %q: %v", p.Name, ip.IP, err)
		}
		if a.Is4() {
			v4 = a
		} else {
			v6 = a
		}
	}
	if !v4.IsValid() || !v6.IsValid() {
		t.Fatalf("%s: podIPs %v, want one IPv4 and one IPv6 address", p.Name, p.Status.PodIPs)
	}
	return v4, v6
}

// reservations lists the node's IPAM reservations, sorted.
func reservations(t *testing.T, n *lab.Node) []string {
	t.Helper()
	ips, err := cniutil.Reservations(filepath.Join(n.DataDir, cniconf.DefaultNetworkName))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ip := range ips {
		out = append(out, ip.String())
	}
	slices.Sort(out)
	return out
}

// ping sends an ICMP echo from the node's namespace to a.
func ping(n *lab.Node, a netip.Addr) error {
	h, err := n.NS()
	if err != nil {
		return err
	}
	return cniutil.Ping(h, net.IP(a.AsSlice()), 3*time.Second)
}

// pingOnce is ping with a one-second budget (at most two echo requests).
func pingOnce(n *lab.Node, a netip.Addr) error {
	h, err := n.NS()
	if err != nil {
		return err
	}
	return cniutil.Ping(h, net.IP(a.AsSlice()), time.Second)
}

func lastLine(s string) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return ls[len(ls)-1]
}
