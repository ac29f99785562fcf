package cniutil

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The node's own addresses, on its "uplink" interface. Documentation ranges: they exist only
// inside the node namespace, and give the node a source address for traffic to its pods.
var (
	NodeIPv4 = net.IPv4(192, 0, 2, 10).To4()
	NodeIPv6 = net.ParseIP("2001:db8::10")
)

// NodeUplink is the name of the node namespace's uplink interface.
const NodeUplink = "node0"

// Node is a network namespace standing in for a Kubernetes node's root namespace, with a libcni
// client whose plugins run inside it.
type Node struct {
	NS       ns.NetNS
	CNI      *libcni.CNIConfig
	CacheDir string // libcni's result cache, private to this node

	gcCNI   *libcni.CNIConfig // a client with an empty cache, for GC
	pods    atomic.Int64
	destroy sync.Once
}

// NewNode creates a node namespace with loopback up and an uplink holding NodeIPv4/24 and
// NodeIPv6/64, and a libcni client (plugin path PluginPath(), private cache dir). The namespace,
// and with it every host veth and route in it, goes away in tb.Cleanup.
func NewNode(tb testing.TB) *Node {
	tb.Helper()
	RequireRoot(tb)
	nodeNS, err := testutils.NewNS()
	if err != nil {
		tb.Fatalf("create node netns: %v", err)
	}
	cache := tb.TempDir()
	n := &Node{
		NS:       nodeNS,
		CNI:      libcni.NewCNIConfigWithCacheDir(PluginPath(), cache, nil),
		CacheDir: cache,
		gcCNI:    libcni.NewCNIConfigWithCacheDir(PluginPath(), tb.TempDir(), nil),
	}
	tb.Cleanup(func() {
		if err := n.Destroy(); err != nil {
			tb.Errorf("remove node netns: %v", err)
		}
	})
	err = nodeNS.Do(func(ns.NetNS) error { return setupUplink() })
	if err != nil {
		tb.Fatalf("set up node netns: %v", err)
	}
	return n
}

// Destroy closes and unmounts the node namespace; the kernel then destroys it with every
// interface and route in it. Idempotent; NewNode's cleanup calls it too.
func (n *Node) Destroy() error {
	var err error
	n.destroy.Do(func() { err = removeNS(n.NS) })
	return err
}

// setupUplink runs inside the node namespace. The uplink is one end of a veth pair whose other
// end also stays in the node namespace (both up, so it has carrier): kernels without the dummy
// driver have veth.
func setupUplink() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	la := netlink.NewLinkAttrs()
	la.Name = NodeUplink
	veth := &netlink.Veth{LinkAttrs: la, PeerName: NodeUplink + "-peer"}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add %s: %w", NodeUplink, err)
	}
	for _, name := range []string{NodeUplink, NodeUplink + "-peer"} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
	}
	up, err := netlink.LinkByName(NodeUplink)
	if err != nil {
		return err
	}
	for _, a := range []*netlink.Addr{
		{IPNet: &net.IPNet{IP: NodeIPv4, Mask: net.CIDRMask(24, 32)}},
		{IPNet: &net.IPNet{IP: NodeIPv6, Mask: net.CIDRMask(64, 128)}, Flags: 0x02 /* IFA_F_NODAD */},
	} {
		if err := netlink.AddrAdd(up, a); err != nil {
			return fmt.Errorf("add %s to %s: %w", a.IPNet, NodeUplink, err)
		}
	}
	return nil
}

// removeNS closes a namespace made by testutils.NewNS and removes its bind mount. The unmount
// is lazy: a plugin being started elsewhere in the process holds copies of every descriptor
// between its fork and its exec, which can keep the mount busy for a moment.
func removeNS(n ns.NetNS) error {
	path := n.Path()
	closeErr := n.Close()
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		return errors.Join(closeErr, fmt.Errorf("unmount %s: %w", path, err))
	}
	if err := os.Remove(path); err != nil {
		return errors.Join(closeErr, err)
	}
	return closeErr
}

// Do runs f on a thread switched into the node namespace. Processes started from f (the
// plugins libcni execs) inherit that namespace.
func (n *Node) Do(f func() error) error {
	return n.NS.Do(func(ns.NetNS) error { return f() })
}

// Pod is a pod sandbox: its own network namespace and the identity the runtime hands the
// plugin.
type Pod struct {
	NS          ns.NetNS
	ContainerID string
	Namespace   string // K8S_POD_NAMESPACE
	Name        string // K8S_POD_NAME
	IfName      string

	destroy sync.Once
}

// NewPod creates a pod namespace (loopback up) with a random container ID, named
// default/pod-<n>. It goes away in tb.Cleanup.
func (n *Node) NewPod(tb testing.TB) *Pod {
	tb.Helper()
	p := NewPodNS(tb)
	p.Name = fmt.Sprintf("pod-%d", n.pods.Add(1))
	return p
}

// NewPodNS creates a pod namespace, independent of any node. It goes away in tb.Cleanup, or
// earlier with Destroy.
func NewPodNS(tb testing.TB) *Pod {
	tb.Helper()
	podNS, err := testutils.NewNS()
	if err != nil {
		tb.Fatalf("create pod netns: %v", err)
	}
	p := &Pod{
		NS:          podNS,
		ContainerID: RandomID(),
		Namespace:   "default",
		Name:        "pod-" + RandomID()[:8],
		IfName:      "eth0",
	}
	tb.Cleanup(func() {
		if err := p.Destroy(); err != nil {
			tb.Errorf("remove pod netns: %v", err)
		}
	})
	err = podNS.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		tb.Fatalf("set up pod netns: %v", err)
	}
	return p
}

// Destroy closes and unmounts the pod's namespace, as a runtime does when a sandbox goes: the
// kernel then destroys the namespace and the interfaces in it. Idempotent.
func (p *Pod) Destroy() error {
	var err error
	p.destroy.Do(func() {
		err = removeNS(p.NS)
	})
	return err
}

// RandomID returns a 64-hex-digit container ID.
func RandomID() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Args are the CNI_ARGS a kubelet-driven runtime passes for this pod.
// K8S_POD_NAMESPACE and K8S_POD_NAME are left out when empty.
func (p *Pod) Args() [][2]string {
	args := [][2]string{{"IgnoreUnknown", "1"}}
	if p.Namespace != "" {
		args = append(args, [2]string{"K8S_POD_NAMESPACE", p.Namespace})
	}
	if p.Name != "" {
		args = append(args, [2]string{"K8S_POD_NAME", p.Name})
	}
	return append(args, [2]string{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID})
}

// CNIArgs is Args in CNI_ARGS form.
func (p *Pod) CNIArgs() string {
	s := ""
	for i, kv := range p.Args() {
		if i > 0 {
			s += ";"
		}
		s += kv[0] + "=" + kv[1]
	}
	return s
}

// RuntimeConf is the libcni runtime configuration for this pod.
func (p *Pod) RuntimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.NS.Path(),
		IfName:      p.IfName,
		Args:        p.Args(),
	}
}

// Attachment is the pod's GC attachment key.
func (p *Pod) Attachment() types.GCAttachment {
	return types.GCAttachment{ContainerID: p.ContainerID, IfName: p.IfName}
}

// HostVeth is the name podroute gives the pod's host-side veth.
func (p *Pod) HostVeth() string { return HostVethName(p.Namespace, p.Name, p.ContainerID, p.IfName) }

// HostVethName is podroute's host veth naming rule: "pr" and the first 13 hex digits of
// sha1("<namespace>.<name>") when the pod's namespace and name are known, else of
// sha1(<container ID>); an interface other than eth0 appends ".<ifname>" to the hashed key.
// Kept here as an independent statement of the rule the plugin must follow (the plugin's own
// is cni.HostVethName).
func HostVethName(podNamespace, podName, containerID, ifName string) string {
	key := containerID
	if podNamespace != "" && podName != "" {
		key = podNamespace + "." + podName
	}
	if ifName != "" && ifName != "eth0" {
		key += "." + ifName
	}
	sum := sha1.Sum([]byte(key))
	return "pr" + hex.EncodeToString(sum[:])[:13]
}

// Add runs ADD for the whole list inside the node namespace and returns the result as
// returned by the plugin (in the list's cniVersion).
func (n *Node) Add(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (types.Result, error) {
	var res types.Result
	err := n.Do(func() error {
		var err error
		res, err = n.CNI.AddNetworkList(ctx, list, rt)
		return err
	})
	return res, err
}

// AddPod is Add for p, with the result converted to the current (1.x) result type.
func (n *Node) AddPod(ctx context.Context, list *libcni.NetworkConfigList, p *Pod) (*current.Result, error) {
	res, err := n.Add(ctx, list, p.RuntimeConf())
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

// MustAddPod is AddPod that fails the test on error.
func (n *Node) MustAddPod(tb testing.TB, list *libcni.NetworkConfigList, p *Pod) *current.Result {
	tb.Helper()
	res, err := n.AddPod(context.Background(), list, p)
	if err != nil {
		tb.Fatalf("ADD %s/%s: %v", p.Namespace, p.Name, err)
	}
	return res
}

// Del runs DEL for the whole list inside the node namespace.
func (n *Node) Del(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return n.Do(func() error { return n.CNI.DelNetworkList(ctx, list, rt) })
}

// DelPod is Del for p.
func (n *Node) DelPod(ctx context.Context, list *libcni.NetworkConfigList, p *Pod) error {
	return n.Del(ctx, list, p.RuntimeConf())
}

// Check runs CHECK for the whole list inside the node namespace.
func (n *Node) Check(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return n.Do(func() error { return n.CNI.CheckNetworkList(ctx, list, rt) })
}

// GC runs GC inside the node namespace with the given valid attachments. It uses a libcni
// client with an empty cache, so that libcni itself issues no DELs for attachments it
// remembers: whatever is removed, the plugin's GC removed.
func (n *Node) GC(ctx context.Context, list *libcni.NetworkConfigList, valid []types.GCAttachment) error {
	if valid == nil {
		valid = []types.GCAttachment{}
	}
	return n.Do(func() error {
		return n.gcCNI.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid})
	})
}

// Status runs STATUS for the whole list inside the node namespace.
func (n *Node) Status(ctx context.Context, list *libcni.NetworkConfigList) error {
	return n.Do(func() error { return n.CNI.GetStatusNetworkList(ctx, list) })
}

// CNIError returns the CNI error carried by err, if any.
func CNIError(err error) (*types.Error, bool) {
	var e *types.Error
	if errors.As(err, &e) {
		return e, true
	}
	return nil, false
}

// Interface is another attachment of the same pod sandbox: same namespace, container ID and
// pod identity, interface ifName. It shares p's namespace; destroy that through p.
func (p *Pod) Interface(ifName string) *Pod {
	return &Pod{NS: p.NS, ContainerID: p.ContainerID, Namespace: p.Namespace, Name: p.Name, IfName: ifName}
}
