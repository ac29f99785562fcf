package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/podroute/podroute/agentapi"
	"github.com/podroute/podroute/test/cniutil"
)

// HealthAddress is where every agent also serves /healthz, /readyz and /metrics, inside its
// node's namespace.
const HealthAddress = "127.0.0.1:9649"

// NodeOptions configures AddNode.
type NodeOptions struct {
	// Index numbers the node: addresses 192.0.2.(10+Index) and 2001:db8::(10+Index), pod
	// CIDRs 10.244.Index.0/24 and fd00:10:244:Index::/64. 1..200, unique in the lab; 0 picks
	// the lowest free one.
	Index int
	// NoPodCIDR creates the Node object without spec.podCIDRs (see Node.SetPodCIDRs).
	NoPodCIDR bool
	// NoNodeObject skips the Node object altogether.
	NoNodeObject bool
	// NoAgent leaves the agent stopped (see Node.Agent.Start).
	NoAgent bool
	// AgentArgs are appended to this node's agent command line.
	AgentArgs []string
	// Segment is the L2 segment (rack) the node's uplink joins; nil is the fabric's own
	// segment (192.0.2.0/24). See Lab.AddSegment.
	Segment *Segment
	// Labels and Annotations are set on the Node object (besides kubernetes.io/hostname).
	Labels, Annotations map[string]string
}

// Node is a lab node: a network namespace on the fabric, its Node object and its agent.
type Node struct {
	Name  string
	Index int
	*NetNS
	IPv4, IPv6 netip.Addr
	// Segment is the L2 segment the uplink is on; its gateway is the node's default route.
	Segment *Segment
	// Labels and Annotations are what the Node object is created with.
	Labels, Annotations map[string]string
	// PodCIDRs are the node's pod CIDRs (set on the Node object unless NoPodCIDR).
	PodCIDRs []netip.Prefix
	// Dir holds this node's files: ConfDir, BinDir, DataDir, Socket, AgentLog.
	Dir, ConfDir, BinDir, DataDir, Socket, AgentLog string
	Agent                                           *Agent

	lab      *Lab
	rogue    bool
	port     string // fabric end of the uplink veth
	cniCache string
	pods     int
}

// AddNode creates a node: its namespace with an uplink on the fabric and a default route via
// the fabric gateway, its Node object, and (unless opts.NoAgent) its running agent. The node
// is removed in t.Cleanup (agent stopped, Node object deleted, namespace deleted).
func (l *Lab) AddNode(t testing.TB, name string, opts NodeOptions) *Node {
	t.Helper()
	n, err := l.addNodeOn(t, name, opts.Index, false, opts.Segment, opts.Labels, opts.Annotations)
	if err != nil {
		t.Fatalf("lab: node %s: %v", name, err)
	}
	n.Agent = newAgent(n, opts.AgentArgs)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("lab: agent log of %s (%s):\n%s", n.Name, n.AgentLog, Tail(n.Agent.Log(), 60))
		}
		_ = n.Agent.Stop()
	})
	if !opts.NoNodeObject {
		var cidrs []netip.Prefix
		if !opts.NoPodCIDR {
			cidrs = n.PodCIDRs
		}
		if err := l.createNodeObject(n, cidrs); err != nil {
			t.Fatalf("lab: %v", err)
		}
	}
	if !opts.NoAgent {
		if err := n.Agent.Start(); err != nil {
			t.Fatalf("lab: %v", err)
		}
	}
	return n
}

func (l *Lab) addNode(t testing.TB, name string, index int, rogue bool) (*Node, error) {
	return l.addNodeOn(t, name, index, rogue, nil, nil, nil)
}

func (l *Lab) addNodeOn(t testing.TB, name string, index int, rogue bool, seg *Segment, labels, annotations map[string]string) (*Node, error) {
	if seg == nil {
		seg = l.DefaultSegment()
	}
	l.mu.Lock()
	if _, dup := l.nodes[name]; dup {
		l.mu.Unlock()
		return nil, fmt.Errorf("a node named %s exists", name)
	}
	if index == 0 {
		for index = 1; l.used[index]; index++ {
		}
	}
	if index < 1 || index > 200 || l.used[index] {
		l.mu.Unlock()
		return nil, fmt.Errorf("index %d is taken or outside 1..200", index)
	}
	l.used[index] = true
	l.mu.Unlock()

	n := &Node{
		Name:  name,
		Index: index,
		IPv4:  netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + index)}),
		IPv6:  netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", 0x10+index)),
		PodCIDRs: []netip.Prefix{
			netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", index)),
			netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", index)),
		},
		Segment:     seg,
		Labels:      labels,
		Annotations: annotations,
		lab:         l,
		rogue:       rogue,
		port:        fmt.Sprintf("p%d", index),
	}
	if seg.Index != 0 {
		n.IPv4, n.IPv6 = seg.Addr4(10+index), seg.Addr6(0x10+index)
	}
	if rogue {
		n.IPv4 = netip.AddrFrom4([4]byte{192, 0, 2, byte(index)})
		n.IPv6 = netip.MustParseAddr(fmt.Sprintf("2001:db8::%d", index))
		n.PodCIDRs = []netip.Prefix{
			netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", index)),
			netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%d::/64", index)),
		}
	}
	// A single-stack lab's nodes get pod CIDRs of its family only, as a single-stack
	// cluster's node IPAM gives them.
	n.PodCIDRs = slices.DeleteFunc(n.PodCIDRs, func(p netip.Prefix) bool {
		return !slices.ContainsFunc(l.opts.ClusterCIDRs, func(c netip.Prefix) bool { return c.Addr().Is4() == p.Addr().Is4() })
	})
	n.Dir = filepath.Join(l.Dir, name)
	n.ConfDir = filepath.Join(n.Dir, "net.d")
	n.BinDir = filepath.Join(n.Dir, "bin")
	n.DataDir = filepath.Join(n.Dir, "ipam")
	n.Socket = filepath.Join(n.Dir, "agent.sock")
	n.AgentLog = filepath.Join(n.Dir, "agent.log")
	n.cniCache = filepath.Join(n.Dir, "cni-cache")
	for _, d := range []string{n.Dir, n.BinDir, n.cniCache} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}

	nsName := fmt.Sprintf("%s-%s", l.Name, name)
	netns, err := CreateNetNS(nsName)
	if err != nil {
		return nil, err
	}
	n.NetNS = netns
	t.Cleanup(func() {
		l.mu.Lock()
		delete(l.nodes, name)
		delete(l.used, index)
		l.mu.Unlock()
		if err := netns.Delete(); err != nil {
			t.Errorf("lab: %v", err)
		}
	})
	// The fabric end is made in the fabric namespace; the node end is born in the node's.
	// The uplink's MAC follows from the index, as a real server's NIC keeps its MAC: a node
	// re-created with the same address must not be hidden behind its neighbours' stale ARP
	// entries for the old MAC.
	mac := fmt.Sprintf("02:70:72:00:%02x:%02x", index>>8&0xff, index&0xff)
	if err := l.Fabric.IP(
		[]string{"link", "add", n.port, "type", "veth", "peer", "name", UplinkName, "address", mac, "netns", nsName},
		[]string{"link", "set", n.port, "master", seg.Bridge, "up"},
	); err != nil {
		return nil, err
	}
	// A server's network configuration keeps its static addresses across a link flap;
	// without this the kernel would drop the IPv6 one on `ip link set uplink down`.
	if err := netns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/"+UplinkName+"/keep_addr_on_down", []byte("1"), 0o644)
	}); err != nil {
		return nil, fmt.Errorf("keep_addr_on_down: %w", err)
	}
	if err := netns.IP(
		[]string{"addr", "add", netip.PrefixFrom(n.IPv4, seg.PrefixV4.Bits()).String(), "dev", UplinkName},
		[]string{"addr", "add", netip.PrefixFrom(n.IPv6, seg.PrefixV6.Bits()).String(), "dev", UplinkName, "nodad"},
		[]string{"link", "set", UplinkName, "up"},
		[]string{"route", "add", "default", "via", seg.GatewayV4.String()},
		[]string{"-6", "route", "add", "default", "via", seg.GatewayV6.String()},
	); err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.nodes[name] = n
	l.mu.Unlock()
	return n, nil
}

func (l *Lab) createNodeObject(n *Node, cidrs []netip.Prefix) error {
	var cs []string
	for _, p := range cidrs {
		cs = append(cs, p.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := l.Kube.CreateNode(ctx, n.Name, cs, []string{n.IPv4.String(), n.IPv6.String()}, n.Labels); err != nil {
		return err
	}
	if len(n.Annotations) > 0 {
		return n.patchMetadata(ctx, "annotations", n.Annotations)
	}
	return nil
}

// patchMetadata merges kv into the Node object's metadata.labels or metadata.annotations
// (which); a nil value removes the key.
func (n *Node) patchMetadata(ctx context.Context, which string, kv map[string]string) error {
	m := map[string]any{}
	for k, v := range kv {
		m[k] = v
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{which: m}})
	_, err := n.lab.Kube.Client.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("patch %s of node %s: %w", which, n.Name, err)
	}
	return nil
}

// SetLabels merges labels into the Node object's labels (an empty value is kept as such).
func (n *Node) SetLabels(labels map[string]string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return n.patchMetadata(ctx, "labels", labels)
}

// SetAnnotations merges annotations into the Node object's annotations.
func (n *Node) SetAnnotations(annotations map[string]string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return n.patchMetadata(ctx, "annotations", annotations)
}

// CreateNodeObject (re)creates the node's Node object with its pod CIDRs.
func (n *Node) CreateNodeObject() error { return n.lab.createNodeObject(n, n.PodCIDRs) }

// DeleteNodeObject deletes the node's Node object.
func (n *Node) DeleteNodeObject() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return n.lab.Kube.DeleteNode(ctx, n.Name)
}

// SetPodCIDRs patches spec.podCIDR(s) of the node's Node object to its PodCIDRs (the API
// server allows setting them once, as the node IPAM controller does).
func (n *Node) SetPodCIDRs() error {
	var cs []string
	for _, p := range n.PodCIDRs {
		cs = append(cs, p.String())
	}
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"podCIDR": cs[0], "podCIDRs": cs}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := n.lab.Kube.Client.CoreV1().Nodes().Patch(ctx, n.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
	return err
}

// EnableForwarding turns IPv4 and IPv6 forwarding on in the node's namespace, as kubeadm's
// preflight checks demand of a node before any CNI is installed.
func (n *Node) EnableForwarding() error {
	return n.Do(func() error {
		for _, f := range []string{"ipv4/ip_forward", "ipv6/conf/all/forwarding"} {
			if err := os.WriteFile("/proc/sys/net/"+f, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
}

// Remove stops the agent, deletes the Node object (if any) and the node's namespace now,
// rather than at cleanup.
func (n *Node) Remove() error {
	_ = n.Agent.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = n.lab.Kube.Client.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{})
	_ = n.lab.Fabric.IP([]string{"link", "del", n.port})
	return n.NetNS.Delete()
}

// Uplink sets the node's uplink administratively up or down (ip link set uplink up|down).
func (n *Node) Uplink(up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return n.IP([]string{"link", "set", UplinkName, state})
}

// FabricPort sets the fabric end of the node's uplink up or down: a switch port going down,
// which the node sees as carrier loss.
func (n *Node) FabricPort(up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return n.lab.Fabric.IP([]string{"link", "set", n.port, state})
}

// PodRoutes is `ip route show proto 201` for both families: the routes podroute owns
// (the agent's learned routes and blackholes, the plugin's host routes to pods).
func (n *Node) PodRoutes() (string, error) {
	v4, err := n.IPOutput("route", "show", "proto", "201")
	if err != nil {
		return "", err
	}
	v6, err := n.IPOutput("-6", "route", "show", "proto", "201")
	return v4 + v6, err
}

// DefaultRoutes is `ip route show default` for both families.
func (n *Node) DefaultRoutes() (string, error) {
	v4, err := n.IPOutput("route", "show", "default")
	if err != nil {
		return "", err
	}
	v6, err := n.IPOutput("-6", "route", "show", "default")
	return v4 + v6, err
}

// Route returns `ip route show exact PREFIX` (either family), or "" if there is none.
func (n *Node) Route(p netip.Prefix) (string, error) {
	args := []string{"route", "show", "exact", p.String()}
	if p.Addr().Is6() {
		args = append([]string{"-6"}, args...)
	}
	out, err := n.IPOutput(args...)
	return strings.TrimSpace(out), err
}

// RouteVia reports whether the node has a proto 201 route for p whose only next hop is via.
func (n *Node) RouteVia(p netip.Prefix, via netip.Addr) error {
	r, err := n.Route(p)
	if err != nil {
		return err
	}
	if r == "" {
		return fmt.Errorf("%s: no route to %s", n.Name, p)
	}
	if !strings.Contains(r, "proto 201") || !strings.Contains(r, "via "+via.String()+" ") || strings.Count(r, "via ") != 1 {
		return fmt.Errorf("%s: route to %s is %q, want proto 201 via %s only", n.Name, p, r, via)
	}
	return nil
}

// NoRoute reports an error while the node has any route for exactly p.
func (n *Node) NoRoute(p netip.Prefix) error {
	r, err := n.Route(p)
	if err != nil {
		return err
	}
	if r != "" {
		return fmt.Errorf("%s: still has %q", n.Name, r)
	}
	return nil
}

// Ctl runs bin/podroutectl --socket <this node's socket> args... and returns its standard
// output.
func (n *Node) Ctl(args ...string) ([]byte, error) {
	full := append([]string{"--socket", n.Socket}, args...)
	cmd := exec.Command(filepath.Join(n.lab.bin, "podroutectl"), full...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("podroutectl %s: %v: %s", strings.Join(full, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// CtlJSON runs podroutectl with -o json and decodes its output into v.
func (n *Node) CtlJSON(v any, args ...string) error {
	out, err := n.Ctl(append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("podroutectl %s: decode %q: %w", strings.Join(args, " "), out, err)
	}
	return nil
}

// Neighbors is `podroutectl bgp neighbors -o json`.
func (n *Node) Neighbors() ([]agentapi.Neighbor, error) {
	var out []agentapi.Neighbor
	err := n.CtlJSON(&out, "bgp", "neighbors")
	return out, err
}

// NeighborsAdvertised is `podroutectl bgp neighbors --advertised -o json`: with the
// prefixes advertised to each peer.
func (n *Node) NeighborsAdvertised() ([]agentapi.Neighbor, error) {
	var out []agentapi.Neighbor
	err := n.CtlJSON(&out, "bgp", "neighbors", "--advertised")
	return out, err
}

// BGPRoutes is `podroutectl bgp routes -o json`.
func (n *Node) BGPRoutes() (agentapi.Routes, error) {
	var out agentapi.Routes
	err := n.CtlJSON(&out, "bgp", "routes")
	return out, err
}

// Status is `podroutectl status -o json`.
func (n *Node) Status() (agentapi.Status, error) {
	var out agentapi.Status
	err := n.CtlJSON(&out, "status")
	return out, err
}

// Established reports an error unless the node has a session established with every peer
// address given.
func (n *Node) Established(peers ...netip.Addr) error {
	ns, err := n.Neighbors()
	if err != nil {
		return err
	}
	state := map[string]string{}
	for _, p := range ns {
		state[p.Address] = p.State
	}
	for _, p := range peers {
		if s := state[p.String()]; s != "established" {
			return fmt.Errorf("%s: session with %s is %q (neighbors: %v)", n.Name, p, s, state)
		}
	}
	return nil
}

// Probe is an HTTP probe answer.
type Probe struct {
	Code int
	Body string
}

// ProbeSocket GETs path (/readyz, /healthz, /metrics) from the agent over its unix socket.
func (n *Node) ProbeSocket(path string) (Probe, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", n.Socket)
		},
	}}
	defer c.CloseIdleConnections()
	return probe(c, "http://agent"+path)
}

// ProbeHealthAddress GETs path from the agent's --health-address, connecting from inside the
// node's namespace.
func (n *Node) ProbeHealthAddress(path string) (Probe, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := n.Do(func() error {
				var d net.Dialer
				var err error
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	defer c.CloseIdleConnections()
	return probe(c, "http://"+HealthAddress+path)
}

func probe(c *http.Client, url string) (Probe, error) {
	resp, err := c.Get(url)
	if err != nil {
		return Probe{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return Probe{Code: resp.StatusCode, Body: string(b)}, err
}

// ConfList is the CNI conflist the node's agent wrote (its path and contents); an error if
// there is none.
func (n *Node) ConfList() (string, []byte, error) {
	matches, _ := filepath.Glob(filepath.Join(n.ConfDir, "*.conflist"))
	if len(matches) == 0 {
		return "", nil, fmt.Errorf("%s: no conflist in %s", n.Name, n.ConfDir)
	}
	if len(matches) > 1 {
		return "", nil, fmt.Errorf("%s: several conflists in %s: %v", n.Name, n.ConfDir, matches)
	}
	b, err := os.ReadFile(matches[0])
	return matches[0], b, err
}

// cniNode is a libcni client whose plugins run in this node's namespace, found in pluginDirs
// (the plugin directory the agent installed into, for podroute's own pods).
func (n *Node) cniNode(pluginDirs []string) (*cniutil.Node, error) {
	h, err := n.NS()
	if err != nil {
		return nil, err
	}
	return &cniutil.Node{
		NS:       h,
		CNI:      libcni.NewCNIConfigWithCacheDir(pluginDirs, n.cniCache, nil),
		CacheDir: n.cniCache,
	}, nil
}

// Tail returns the last lines of s.
func Tail(s string, lines int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// PodReady reports whether the pod's Ready condition is true.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// NodeReady reports whether the Node's Ready condition is true.
func NodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
