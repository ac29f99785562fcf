// Package cni_test drives the real podroute binary (bin/podroute, built by `make build`)
// through libcni, and directly by exec, against real pod network namespaces inside a throw-away
// node network namespace. Needs root.
package cni_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/podroute/podroute/routes"
	"github.com/podroute/podroute/test/cniutil"
)

// What podroute promises every pod and every host veth.
var (
	gatewayV4 = net.IPv4(169, 254, 1, 1).To4()
	gatewayV6 = net.ParseIP("fe80::ecee:eeff:feee:eeee")
	hostMAC   = "ee:ee:ee:ee:ee:ee"
)

// hostGroup is the interface group of every host veth (IFLA_GROUP): the NetworkPolicy table
// holds the traffic of a veth in it until the agent has judged its pod.
const hostGroup = 201

const pingTimeout = 2 * time.Second

// env is one podroute network on its own node.
type env struct {
	node    *cniutil.Node
	net     cniutil.Net
	conf    []byte
	list    *libcni.NetworkConfigList
	dataDir string
}

// newEnv makes a node and a podroute network over the given range sets, with the IPAM data in
// a fresh directory. mutate, if given, adjusts the network before it is rendered.
func newEnv(t *testing.T, ranges [][]cniutil.Range, mutate ...func(*cniutil.Net)) *env {
	t.Helper()
	cniutil.RequirePodroute(t)
	e := &env{node: cniutil.NewNode(t), dataDir: t.TempDir()}
	e.net = cniutil.Net{DataDir: e.dataDir, Ranges: ranges}
	for _, m := range mutate {
		m(&e.net)
	}
	e.render(t)
	return e
}

func (e *env) render(t *testing.T) {
	t.Helper()
	e.conf = e.net.Podroute()
	e.list = cniutil.MustList(t, e.conf)
}

func (e *env) name() string {
	if e.net.Name == "" {
		return "podnet"
	}
	return e.net.Name
}

// reservations lists the addresses the IPAM store of this network holds.
func (e *env) reservations(t *testing.T) []net.IP {
	t.Helper()
	ips, err := cniutil.Reservations(filepath.Join(e.dataDir, e.name()))
	if err != nil {
		t.Fatalf("read IPAM store: %v", err)
	}
	return ips
}

func (e *env) add(t *testing.T, p *cniutil.Pod) *current.Result {
	t.Helper()
	return e.node.MustAddPod(t, e.list, p)
}

func (e *env) del(t *testing.T, p *cniutil.Pod) {
	t.Helper()
	if err := e.node.DelPod(context.Background(), e.list, p); err != nil {
		t.Fatalf("DEL %s/%s: %v", p.Namespace, p.Name, err)
	}
}

func podIPs(res *current.Result) []net.IP {
	var ips []net.IP
	for _, ipc := range res.IPs {
		ips = append(ips, ipc.Address.IP)
	}
	return ips
}

func isV4(ip net.IP) bool { return ip.To4() != nil }

func hostPrefix(ip net.IP) *net.IPNet {
	if isV4(ip) {
		return &net.IPNet{IP: ip.To4(), Mask: net.CIDRMask(32, 32)}
	}
	return &net.IPNet{IP: ip, Mask: net.CIDRMask(128, 128)}
}

// assertWired checks everything ADD promises for pod p with result res: the result, the pod's
// interface, addresses and routes, the host veth, the host routes and the sysctls.
func (e *env) assertWired(t *testing.T, p *cniutil.Pod, res *current.Result, wantV4, wantV6 bool) {
	t.Helper()
	ips := podIPs(res)
	var gotV4, gotV6 int
	for _, ip := range ips {
		if isV4(ip) {
			gotV4++
		} else {
			gotV6++
		}
	}
	if gotV4 != b2i(wantV4) || gotV6 != b2i(wantV6) {
		t.Fatalf("result IPs %v: want %d IPv4 and %d IPv6", ips, b2i(wantV4), b2i(wantV6))
	}
	subnets := map[bool]*net.IPNet{}
	_, subnets[true], _ = net.ParseCIDR(cniutil.PodSubnetV4)
	_, subnets[false], _ = net.ParseCIDR(cniutil.PodSubnetV6)
	for _, ipc := range res.IPs {
		if !subnets[isV4(ipc.Address.IP)].Contains(ipc.Address.IP) {
			t.Errorf("result IP %s outside the configured subnet", ipc.Address.IP)
		}
		if ones, bits := ipc.Address.Mask.Size(); ones != bits {
			t.Errorf("result IP %s: want a /%d, the pod's own address only", ipc.Address.String(), bits)
		}
		wantGW := gatewayV6
		if isV4(ipc.Address.IP) {
			wantGW = gatewayV4
		}
		if !ipc.Gateway.Equal(wantGW) {
			t.Errorf("result IP %s: gateway %v, want %s", ipc.Address.IP, ipc.Gateway, wantGW)
		}
	}

	hostName := p.HostVeth()
	var sawHost, sawPod bool
	for _, iface := range res.Interfaces {
		switch {
		case iface.Name == hostName && iface.Sandbox == "":
			sawHost = true
			if iface.Mac != hostMAC {
				t.Errorf("result host interface %s: mac %s, want %s", iface.Name, iface.Mac, hostMAC)
			}
		case iface.Name == p.IfName && iface.Sandbox == p.NS.Path():
			sawPod = true
		}
	}
	if !sawHost || !sawPod {
		t.Errorf("result interfaces %+v: want host %s and pod %s in %s", ifaces(res), hostName, p.IfName, p.NS.Path())
	}

	// Pod side.
	podLink, err := cniutil.Link(p.NS, p.IfName)
	if err != nil || podLink == nil {
		t.Fatalf("pod interface %s: missing (%v)", p.IfName, err)
	}
	if podLink.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("pod interface %s is down", p.IfName)
	}
	wantMTU := e.net.MTU
	if wantMTU == 0 {
		wantMTU = 1500
	}
	if podLink.Attrs().MTU != wantMTU {
		t.Errorf("pod interface %s: mtu %d, want %d", p.IfName, podLink.Attrs().MTU, wantMTU)
	}
	addrs, err := cniutil.Addrs(p.NS, p.IfName, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var global []string
	for _, a := range addrs {
		if !a.IP.IsLinkLocalUnicast() {
			global = append(global, a.IPNet.String())
		}
	}
	var want []string
	for _, ip := range ips {
		want = append(want, hostPrefix(ip).String())
	}
	slices.Sort(global)
	slices.Sort(want)
	if !slices.Equal(global, want) {
		t.Errorf("pod addresses %v, want exactly %v", global, want)
	}
	if wantV4 {
		r, err := cniutil.RouteTo(p.NS, hostPrefix(gatewayV4))
		if err != nil || r == nil || r.Scope != netlink.SCOPE_LINK || r.LinkIndex != podLink.Attrs().Index {
			t.Errorf("pod: want route %s dev %s scope link, got %+v (%v)", gatewayV4, p.IfName, r, err)
		}
		d, err := cniutil.DefaultRoute(p.NS, netlink.FAMILY_V4)
		if err != nil || d == nil || !d.Gw.Equal(gatewayV4) || d.LinkIndex != podLink.Attrs().Index {
			t.Errorf("pod: want default via %s dev %s, got %+v (%v)", gatewayV4, p.IfName, d, err)
		}
	}
	if wantV6 {
		d, err := cniutil.DefaultRoute(p.NS, netlink.FAMILY_V6)
		if err != nil || d == nil || !d.Gw.Equal(gatewayV6) || d.LinkIndex != podLink.Attrs().Index {
			t.Errorf("pod: want IPv6 default via %s dev %s, got %+v (%v)", gatewayV6, p.IfName, d, err)
		}
	}

	e.assertHostSide(t, p, ips, wantV6)
}

// assertHostSide checks the node's half of what ADD promises for pod p with addresses ips: the
// host veth, the host routes and the sysctls.
func (e *env) assertHostSide(t *testing.T, p *cniutil.Pod, ips []net.IP, wantV6 bool) {
	t.Helper()
	hostName := p.HostVeth()
	wantV4 := slices.ContainsFunc(ips, isV4)
	host, err := cniutil.Link(e.node.NS, hostName)
	if err != nil || host == nil {
		names, _ := cniutil.LinkNames(e.node.NS, "")
		t.Fatalf("host veth %s (HostVethName of %s/%s): missing (%v); node has %v", hostName, p.Namespace, p.Name, err, names)
	}
	if host.Type() != "veth" {
		t.Errorf("host interface %s: type %s, want veth", hostName, host.Type())
	}
	if host.Attrs().HardwareAddr.String() != hostMAC {
		t.Errorf("host veth %s: mac %s, want %s", hostName, host.Attrs().HardwareAddr, hostMAC)
	}
	if want := "podroute:" + p.ContainerID + ":" + p.IfName; host.Attrs().Alias != want {
		t.Errorf("host veth %s: alias %q, want %q", hostName, host.Attrs().Alias, want)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("host veth %s is down", hostName)
	}
	if host.Attrs().Group != hostGroup {
		t.Errorf("host veth %s: group %d, want %d", hostName, host.Attrs().Group, hostGroup)
	}
	hostAddrs, err := cniutil.Addrs(e.node.NS, hostName, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var sawLL bool
	for _, a := range hostAddrs {
		if isV4(a.IP) {
			t.Errorf("host veth %s has IPv4 address %s; want none", hostName, a.IPNet)
		} else if a.IP.Equal(gatewayV6) {
			sawLL = true
		} else {
			t.Errorf("host veth %s has IPv6 address %s; want only %s", hostName, a.IPNet, gatewayV6)
		}
	}
	if wantV6 && !sawLL {
		t.Errorf("host veth %s lacks %s", hostName, gatewayV6)
	}
	for _, ip := range ips {
		r, err := cniutil.RouteTo(e.node.NS, hostPrefix(ip))
		switch {
		case err != nil:
			t.Errorf("host route to %s: %v", ip, err)
		case r == nil:
			t.Errorf("host route to %s: missing", hostPrefix(ip))
		// IPv6 routes carry no scope in Linux (they always read back as global), so the scope
		// is checked for IPv4 only.
		case r.LinkIndex != host.Attrs().Index || r.Protocol != routes.Protocol || r.Gw != nil ||
			isV4(ip) && r.Scope != netlink.SCOPE_LINK:
			t.Errorf("host route to %s: ifindex %d proto %d scope %d gw %v; want dev %s (ifindex %d) scope link proto %d",
				ip, r.LinkIndex, r.Protocol, r.Scope, r.Gw, hostName, host.Attrs().Index, routes.Protocol)
		}
	}

	// Sysctls.
	if wantV4 {
		e.assertSysctl(t, "net.ipv4.ip_forward", "1")
		e.assertSysctl(t, "net/ipv4/conf/"+hostName+"/proxy_arp", "1")
	}
	if wantV6 {
		e.assertSysctl(t, "net.ipv6.conf.all.forwarding", "1")
	}
}

func (e *env) assertSysctl(t *testing.T, name, want string) {
	t.Helper()
	got, err := cniutil.ReadSysctl(e.node.NS, name)
	if err != nil || got != want {
		t.Errorf("node sysctl %s = %q (%v), want %q", name, got, err, want)
	}
}

// assertGone checks that nothing of pod p (host veth, host routes to ips, reservations of
// ips, pod interface) is left.
func (e *env) assertGone(t *testing.T, p *cniutil.Pod, ips []net.IP) {
	t.Helper()
	if l, err := cniutil.Link(e.node.NS, p.HostVeth()); err != nil || l != nil {
		t.Errorf("host veth %s still there (%v)", p.HostVeth(), err)
	}
	for _, ip := range ips {
		if r, err := cniutil.RouteTo(e.node.NS, hostPrefix(ip)); err != nil || r != nil {
			t.Errorf("host route to %s still there: %v (%v)", ip, r, err)
		}
		for _, res := range e.reservations(t) {
			if res.Equal(ip) {
				t.Errorf("reservation of %s still in the IPAM store", ip)
			}
		}
	}
	if _, err := os.Stat(p.NS.Path()); err == nil {
		if l, err := cniutil.Link(p.NS, p.IfName); err != nil || l != nil {
			t.Errorf("pod interface %s still there (%v)", p.IfName, err)
		}
	}
}

// assertClean checks that the node has no podroute veth, no podroute route and the store no
// reservation.
func (e *env) assertClean(t *testing.T) {
	t.Helper()
	if names, err := cniutil.LinkNames(e.node.NS, "pr"); err != nil || len(names) > 0 {
		t.Errorf("host veths left: %v (%v)", names, err)
	}
	rs, err := cniutil.Routes(e.node.NS, netlink.FAMILY_ALL, routes.Protocol)
	if err != nil || len(rs) > 0 {
		t.Errorf("proto %d routes left: %v (%v)", routes.Protocol, rs, err)
	}
	if res := e.reservations(t); len(res) > 0 {
		t.Errorf("reservations left: %v", res)
	}
}

// assertPings pings every address in ips from inside each of the given namespaces.
func assertPings(t *testing.T, from map[string]*cniutil.Pod, node *cniutil.Node, ips []net.IP) {
	t.Helper()
	for _, ip := range ips {
		if node != nil {
			if err := cniutil.Ping(node.NS, ip, pingTimeout); err != nil {
				t.Errorf("node -> %s: %v", ip, err)
			}
		}
		for name, p := range from {
			if err := cniutil.Ping(p.NS, ip, pingTimeout); err != nil {
				t.Errorf("%s -> %s: %v", name, ip, err)
			}
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func ifaces(res *current.Result) string {
	var s []string
	for _, i := range res.Interfaces {
		s = append(s, fmt.Sprintf("%s(%s,%q)", i.Name, i.Mac, i.Sandbox))
	}
	return strings.Join(s, " ")
}

// waitFor polls cond every 20ms until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		return cond(), nil
	})
	if err != nil {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// parallel runs f(0..n-1) in n goroutines and waits for all.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(i)
		}()
	}
	wg.Wait()
}
