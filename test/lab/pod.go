package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/podroute/podroute/test/cniutil"
)

// Pod is a pod sandbox on a node: a network namespace wired by the podroute plugin.
type Pod struct {
	Name string
	Node *Node
	*NetNS
	IPv4, IPv6 netip.Addr

	cni *cniutil.Pod
}

// AddPod creates a pod namespace and runs CNI ADD for it inside the node's namespace, with
// the conflist the node's agent wrote and the plugin the agent installed, the way a
// container runtime does. The pod is deleted (CNI DEL, namespace removed) in t.Cleanup.
func (n *Node) AddPod(t testing.TB, name string) *Pod {
	t.Helper()
	p, err := n.addAgentPod(t, name)
	if err != nil {
		t.Fatalf("lab: pod %s on %s: %v", name, n.Name, err)
	}
	return p
}

func (n *Node) addAgentPod(t testing.TB, name string) (*Pod, error) {
	_, conf, err := n.ConfList()
	if err != nil {
		return nil, err
	}
	p, err := n.addPod(t, name, conf, []string{n.BinDir})
	if err != nil {
		return nil, err
	}
	if !p.IPv4.IsValid() || !p.IPv6.IsValid() {
		return nil, fmt.Errorf("CNI ADD gave %s and %s, want an IPv4 and an IPv6 address", p.IPv4, p.IPv6)
	}
	return p, nil
}

// AddPodWith is AddPod with another network configuration (conflist JSON), whose plugins are
// looked up in the agent's plugin directory, then among the reference plugins
// (cniutil.RefDir): a pod wired by the reference ptp plugin on the same node, say.
func (n *Node) AddPodWith(t testing.TB, name string, conf []byte) *Pod {
	t.Helper()
	p, err := n.addPod(t, name, conf, []string{n.BinDir, cniutil.RefDir()})
	if err != nil {
		t.Fatalf("lab: pod %s on %s: %v", name, n.Name, err)
	}
	return p
}

func (n *Node) addPod(t testing.TB, name string, conf []byte, pluginDirs []string) (*Pod, error) {
	sb, err := n.sandbox(t, name, conf, pluginDirs)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := sb.add(ctx); err != nil {
		return nil, err
	}
	return sb.Pod, nil
}

// sandbox creates the namespace of a pod named name on n (pod-<n> when empty), for the
// network conf with plugins from pluginDirs, without wiring it. CNI DEL and the namespace's
// removal run in t.Cleanup.
func (n *Node) sandbox(t testing.TB, name string, conf []byte, pluginDirs []string) (*Sandbox, error) {
	list := cniutil.MustList(t, conf)
	node, err := n.cniNode(pluginDirs)
	if err != nil {
		return nil, err
	}
	n.lab.mu.Lock()
	n.pods++
	seq := n.pods
	n.lab.mu.Unlock()
	if name == "" {
		name = fmt.Sprintf("pod-%d", seq)
	}
	podNS, err := CreateNetNS(fmt.Sprintf("%s-%s-%s", n.lab.Name, n.Name, name))
	if err != nil {
		return nil, err
	}
	h, err := podNS.NS()
	if err != nil {
		_ = podNS.Delete()
		return nil, err
	}
	cp := &cniutil.Pod{NS: h, ContainerID: cniutil.RandomID(), Namespace: PodNamespace, Name: PodObjectName(n, name), IfName: "eth0"}
	p := &Pod{Name: name, Node: n, NetNS: podNS, cni: cp}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := node.DelPod(ctx, list, cp); err != nil {
			t.Logf("lab: CNI DEL of %s on %s: %v", name, n.Name, err)
		}
		if err := podNS.Delete(); err != nil {
			t.Errorf("lab: %v", err)
		}
	})
	return &Sandbox{Pod: p, node: node, list: list}, nil
}

// add runs CNI ADD for the sandbox, the way a runtime does, and records its addresses; it
// fails only when the plugin gave none.
func (s *Sandbox) add(ctx context.Context) error {
	res, err := s.node.AddPod(ctx, s.list, s.cni)
	if err != nil {
		return fmt.Errorf("CNI ADD: %w", err)
	}
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			if a = a.Unmap(); a.Is4() {
				s.IPv4 = a
			} else {
				s.IPv6 = a
			}
		}
	}
	if !s.IPv4.IsValid() && !s.IPv6.IsValid() {
		return fmt.Errorf("CNI ADD gave no address: %v", res.IPs)
	}
	return nil
}

// Addr is the pod's address of the family of v6.
func (p *Pod) Addr(v6 bool) netip.Addr {
	if v6 {
		return p.IPv6
	}
	return p.IPv4
}

// Ping sends ICMP echo requests from p to dst until one is answered, failing after timeout.
func (p *Pod) Ping(dst netip.Addr, timeout time.Duration) error {
	h, err := p.NS()
	if err != nil {
		return err
	}
	return cniutil.Ping(h, net.IP(dst.AsSlice()), timeout)
}

// TCP connects from p to a listener opened on dst's pod and exchanges a payload.
func (p *Pod) TCP(to *Pod, dst netip.Addr, timeout time.Duration) error {
	c, err := p.NS()
	if err != nil {
		return err
	}
	s, err := to.NS()
	if err != nil {
		return err
	}
	return cniutil.TCPExchange(c, s, net.IP(dst.AsSlice()), timeout)
}
