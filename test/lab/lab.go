// Package lab runs a multi-node podroute cluster out of real components on one machine, for
// integration tests and demonstrations:
//
//   - a "fabric" network namespace holding a Linux bridge: the rack's L2 segment, with
//     192.0.2.0/24 and 2001:db8::/64 (documentation ranges, which exist only inside the lab's
//     namespaces); the bridge itself holds 192.0.2.254 and 2001:db8::fe, the nodes' default
//     gateway;
//   - a real kube-apiserver and etcd (package test/kube), reachable from every node at
//     https://192.0.2.254:6443 across the fabric;
//   - nodes: one network namespace each, joined to the fabric bridge by a veth (the node's
//     "uplink", 192.0.2.(10+i) and 2001:db8::(10+i)), a Node object with spec.podCIDRs
//     10.244.i.0/24 and fd00:10:244:i::/64, and a podroute-agent process inside the namespace;
//   - pods: network namespaces wired by the real podroute CNI plugin, through libcni, with the
//     conflist the node's agent wrote;
//   - probes: ping, TCP, a UDP sequence flow that counts lost packets, kernel route snapshots,
//     podroutectl against each node's agent socket;
//   - a rogue BGP speaker: a Node on the fabric whose "agent" is a hostile GoBGP speaker
//     (optionally announcing a generated range of prefixes, for scale measurements);
//   - data-path measurements between namespaces: TCP throughput, request/response round
//     trips, iperf3 (perf.go).
//
// Nothing is changed in the network namespace the test process runs in. Every namespace is
// named with a prefix holding the process ID (prt<pid>-<n>-...), so concurrent runs do not
// clash, and namespaces left behind by a run that died are swept by the next one. Everything
// is torn down in t.Cleanup, on success and failure alike.
//
// The API server runs in the test process's own network namespace, on loopback, like any
// test/kube cluster. A small TCP relay with its listening socket opened inside the fabric
// namespace forwards 192.0.2.254:6443 to it, so agents reach the API server across the fabric
// and through their uplinks (an uplink flap cuts their API connection too), while the root
// namespace gets no interface, address or route.
package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/podroute/podroute/test/cniutil"
	"github.com/podroute/podroute/test/kube"
)

// Addressing of the fabric.
var (
	FabricIPv4       = netip.MustParseAddr("192.0.2.254")
	FabricIPv6       = netip.MustParseAddr("2001:db8::fe")
	FabricPrefixV4   = netip.MustParsePrefix("192.0.2.0/24")
	FabricPrefixV6   = netip.MustParsePrefix("2001:db8::/64")
	DefaultClusterV4 = netip.MustParsePrefix("10.244.0.0/16")
	DefaultClusterV6 = netip.MustParsePrefix("fd00:10:244::/56")
)

const (
	// APIPort is the port of the API server relay on the fabric.
	APIPort = 6443
	// NamePrefix starts the name of every network namespace the lab creates.
	NamePrefix = "prt"
	// UplinkName is the node end of a node's veth to the fabric.
	UplinkName = "uplink"
	bridgeName = "fabric"
)

// Options configures New.
type Options struct {
	// ClusterCIDRs are passed to every agent (default 10.244.0.0/16 and fd00:10:244::/56).
	ClusterCIDRs []netip.Prefix
	// AgentArgs are appended to every agent's command line.
	AgentArgs []string
	// BinDir holds podroute, podroute-agent and podroutectl (default: the repository's bin/).
	BinDir string
	// Kube is passed to kube.Start; AdvertiseAddress and the endpoint reconciler are set by
	// the lab.
	Kube kube.Options
	// ControlPlane, when set, names a node that is the cluster's control-plane node, as
	// kubeadm makes one: etcd and kube-apiserver run inside its namespace (index 1 on the
	// fabric, 192.0.2.11), the apiserver is reached by every node at that address
	// (APIServerURL) and publishes it in the "kubernetes" Service, and it reaches kubelets
	// and pods the way that node does (its own agent, once one runs there). Without it the
	// apiserver runs in the test process's namespace behind a relay at 192.0.2.254:6443.
	ControlPlane string
}

// Lab is a running lab. Its methods may be called from several goroutines.
type Lab struct {
	// Name is the prefix of every namespace of this lab (prt<pid>-<n>).
	Name string
	// Dir holds the kubeconfig, and one directory per node (CNI config and plugin, IPAM
	// data, agent socket and log).
	Dir string
	// Kube is the control plane; Kube.Client acts as cluster admin.
	Kube *kube.Cluster
	// Kubeconfig is the agents' kubeconfig: the API server at APIServerURL.
	Kubeconfig string
	// APIServerURL is where nodes reach the API server: https://192.0.2.254:6443 (the
	// relay), or the control-plane node's address (Options.ControlPlane).
	APIServerURL string
	// ControlPlane is the control-plane node (Options.ControlPlane), or nil.
	ControlPlane *Node
	// Fabric is the fabric namespace.
	Fabric *NetNS

	opts Options
	bin  string
	t    testing.TB

	mu    sync.Mutex
	nodes map[string]*Node
	used  map[int]bool // node indexes in use
	topo  topology     // segments, routers and links (frr.go)
}

var labSeq atomic.Int32

// New sweeps namespaces left by dead runs, starts the control plane and builds the fabric
// with the API server relay. It registers the teardown with t.Cleanup.
func New(t testing.TB, opts Options) *Lab {
	t.Helper()
	cniutil.RequireRoot(t)
	if err := Sweep(); err != nil {
		t.Logf("lab: sweeping stale namespaces: %v", err)
	}
	if len(opts.ClusterCIDRs) == 0 {
		opts.ClusterCIDRs = []netip.Prefix{DefaultClusterV4, DefaultClusterV6}
	}
	bin := opts.BinDir
	if bin == "" {
		bin = cniutil.BinDir()
	}
	for _, name := range []string{"podroute", "podroute-agent", "podroutectl"} {
		if st, err := os.Stat(filepath.Join(bin, name)); err != nil || st.Mode()&0o111 == 0 {
			t.Fatalf("lab: %s/%s missing or not executable: run make build", bin, name)
		}
	}
	l := &Lab{
		Name:  fmt.Sprintf("%s%d-%d", NamePrefix, os.Getpid(), labSeq.Add(1)),
		Dir:   t.TempDir(),
		opts:  opts,
		bin:   bin,
		t:     t,
		nodes: map[string]*Node{},
		used:  map[int]bool{},
	}

	// The fabric first: the relay needs its address.
	fabric, err := CreateNetNS(l.Name + "-fabric")
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	l.Fabric = fabric
	t.Cleanup(func() {
		if err := fabric.Delete(); err != nil {
			t.Errorf("lab: %v", err)
		}
	})
	if err := fabric.IP(
		[]string{"link", "add", bridgeName, "type", "bridge"},
		[]string{"addr", "add", FabricIPv4.String() + "/24", "dev", bridgeName},
		[]string{"addr", "add", FabricIPv6.String() + "/64", "dev", bridgeName, "nodad"},
		[]string{"link", "set", bridgeName, "up"},
	); err != nil {
		t.Fatalf("lab: fabric: %v", err)
	}
	// A switch forwards frames without the host's netfilter: where br_netfilter is built in,
	// the kernel's default would pass every frame the bridge forwards through the fabric
	// namespace's IPv4 and IPv6 hooks.
	if err := fabric.Do(func() error {
		for _, f := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"} {
			err := os.WriteFile("/proc/sys/net/bridge/"+f, []byte("0"), 0o644)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("lab: fabric: %v", err)
	}

	if opts.ControlPlane != "" {
		l.startControlPlaneNode(t)
	} else {
		ko := opts.Kube
		ko.AdvertiseAddress = FabricIPv4.String()
		// The advertised address is the relay's, not one of the apiserver's own: keep the
		// "kubernetes" Endpoints out of it.
		ko.ExtraArgs = append([]string{"--endpoint-reconciler-type=none"}, ko.ExtraArgs...)
		l.Kube = kube.Start(t, ko)

		target := strings.TrimPrefix(l.Kube.URL, "https://")
		relay, err := startRelay(fabric, netip.AddrPortFrom(FabricIPv4, APIPort).String(), target)
		if err != nil {
			t.Fatalf("lab: API server relay: %v", err)
		}
		t.Cleanup(relay.Close)
		l.APIServerURL = fmt.Sprintf("https://%s", netip.AddrPortFrom(FabricIPv4, APIPort))
	}

	l.Kubeconfig = filepath.Join(l.Dir, "agent.kubeconfig")
	if err := writeKubeconfig(l.Kubeconfig, l.APIServerURL, l.Kube.CAData, l.Kube.AdminToken); err != nil {
		t.Fatalf("lab: %v", err)
	}
	t.Logf("lab %s: fabric %s/%s, API server at %s (from this process: %s)", l.Name, FabricIPv4, FabricIPv6, l.APIServerURL, l.Kube.URL)
	return l
}

// startControlPlaneNode creates the control-plane node's namespace on the fabric and runs
// etcd and kube-apiserver in it (Options.ControlPlane). Its Node object is made once the
// API server runs, labelled and tainted as kubeadm does, without pod CIDRs (the controller
// manager allocates them).
func (l *Lab) startControlPlaneNode(t testing.TB) {
	name := l.opts.ControlPlane
	n, err := l.addNodeOn(t, name, 1, false, nil, map[string]string{ControlPlaneLabel: ""}, nil)
	if err != nil {
		t.Fatalf("lab: control-plane node %s: %v", name, err)
	}
	n.Agent = newAgent(n, nil)
	t.Cleanup(func() { _ = n.Agent.Stop() })
	l.ControlPlane = n

	ko := l.opts.Kube
	ko.NetNS = n.NetNS.Path
	ko.AdvertiseAddress = n.IPv4.String()
	l.Kube = kube.Start(t, ko)
	l.APIServerURL = l.Kube.ServerURL
	if err := l.createNodeObject(n, nil); err != nil {
		t.Fatalf("lab: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	patch := fmt.Sprintf(`{"spec":{"taints":[{"key":%q,"effect":"NoSchedule"}]}}`, ControlPlaneLabel)
	if _, err := l.Kube.Client.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("lab: taint %s: %v", name, err)
	}
}

// ControlPlaneLabel labels and taints (NoSchedule) the control-plane node, as kubeadm does.
const ControlPlaneLabel = "node-role.kubernetes.io/control-plane"

// BinDir is where the lab takes podroute's binaries from.
func (l *Lab) BinDir() string { return l.bin }

// Node returns the node named name, or nil.
func (l *Lab) Node(name string) *Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nodes[name]
}

// Nodes returns the lab's nodes (rogue speakers excluded), ordered by index.
func (l *Lab) Nodes() []*Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*Node
	for _, n := range l.nodes {
		if !n.rogue {
			out = append(out, n)
		}
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].Index < out[j-1].Index; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func writeKubeconfig(path, server string, ca []byte, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos["podroute-agent"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "podroute-agent"}
	cfg.CurrentContext = "lab"
	return clientcmd.WriteToFile(*cfg, path)
}

// startRelay forwards connections accepted on listen, a listener opened inside the
// namespace in, to target in the process's own namespace.
func startRelay(in *NetNS, listen, target string) (*kube.Relay, error) {
	var ln net.Listener
	err := in.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", listen)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", listen, in.Name, err)
	}
	dial := kube.DialerIn("")
	return kube.StartRelay(ln, func(ctx context.Context) (net.Conn, error) { return dial(ctx, "tcp", target) }), nil
}

// Sweep deletes the namespaces of lab runs whose process is gone (killed by a timeout, say,
// before its cleanups ran), after killing whatever still runs inside them.
func Sweep() error {
	defer sweepFRR()
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
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
		n := &NetNS{Name: e.Name(), Path: filepath.Join(netnsDir, e.Name())}
		n.killAll()
		if err := n.Delete(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func processAlive(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// Poll calls f every interval until it returns nil or timeout passes; it returns f's last
// error then, prefixed with how long it tried.
func Poll(ctx context.Context, timeout, interval time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still failing after %v: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}

// Eventually is Poll that fails the test.
func Eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	if err := Poll(context.Background(), timeout, 100*time.Millisecond, f); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
