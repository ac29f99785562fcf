package cni_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/podroute/podroute/cniconf"
	"github.com/podroute/podroute/test/cniutil"
)

// The pod's port mappings (hostPort -> containerPort), as kubelet hands them to the runtime
// and the runtime to portmap (runtimeConfig.portMappings).
const (
	tcpHostPort, tcpPodPort = 8080, 80
	udpHostPort, udpPodPort = 8053, 53
)

// portMapping is an entry of the portMappings capability.
type portMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// An external host's addresses: a namespace routed to the node through a veth of its own.
var (
	extGatewayV4 = netip.MustParsePrefix("198.51.100.1/24")
	extHostV4    = netip.MustParsePrefix("198.51.100.2/24")
	extGatewayV6 = netip.MustParsePrefix("2001:db8:100::1/64")
	extHostV6    = netip.MustParsePrefix("2001:db8:100::2/64")
)

// TestHostPort runs the conflist the agent writes (cniconf.Render: podroute, then the
// reference portmap plugin) through libcni for a pod with hostPort mappings, TCP and UDP: the
// pod is reachable at the node's IPv4 and IPv6 addresses on the host ports from a host
// outside the node (the source address kept), from another pod, from the node itself (and at
// 127.0.0.1 for IPv4) and from the pod itself (hairpin); CHECK passes; DEL removes the
// mappings, after which the host port is refused and portmap's tables hold no rule.
func TestHostPort(t *testing.T) {
	cniutil.RequirePodroute(t)
	cniutil.RequireRefPlugins(t, "portmap")
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("portmap's nftables backend runs nft: %v (apt-get install nftables)", err)
	}
	t.Parallel()
	node := cniutil.NewNode(t)
	conf, err := cniconf.Render(
		cniconf.Options{ConfDir: t.TempDir(), DataDir: t.TempDir()},
		cniconf.NodeNetwork{PodCIDRs: []netip.Prefix{netip.MustParsePrefix(cniutil.PodSubnetV4), netip.MustParsePrefix(cniutil.PodSubnetV6)}, MTU: 1500},
	)
	if err != nil {
		t.Fatal(err)
	}
	list := cniutil.MustList(t, conf)
	if len(list.Plugins) != 2 || list.Plugins[1].Network.Type != "portmap" {
		t.Fatalf("the agent's conflist does not chain portmap:\n%s", conf)
	}
	ctx := context.Background()

	srv, cli := node.NewPod(t), node.NewPod(t)
	rt := srv.RuntimeConf()
	rt.CapabilityArgs = map[string]any{"portMappings": []portMapping{
		{HostPort: tcpHostPort, ContainerPort: tcpPodPort, Protocol: "tcp"},
		{HostPort: udpHostPort, ContainerPort: udpPodPort, Protocol: "udp"},
	}}
	res, err := node.Add(ctx, list, rt)
	if err != nil {
		t.Fatalf("ADD with port mappings: %v", err)
	}
	srvIPs := map[bool]net.IP{} // by isV4
	r, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range podIPs(r) {
		srvIPs[isV4(ip)] = ip
	}
	if srvIPs[true] == nil || srvIPs[false] == nil {
		t.Fatalf("pod addresses %v: want one of each family", podIPs(r))
	}
	cliRes := node.MustAddPod(t, list, cli)
	cliIPs := map[bool]net.IP{}
	for _, ip := range podIPs(cliRes) {
		cliIPs[isV4(ip)] = ip
	}
	ext := externalHost(t, node)
	serveEcho(t, srv.NS)

	if err := node.Check(ctx, list, rt); err != nil {
		t.Errorf("CHECK of the pod with port mappings: %v", err)
	}
	for _, fam := range []struct {
		v4     bool
		nodeIP net.IP
	}{{true, cniutil.NodeIPv4}, {false, cniutil.NodeIPv6}} {
		name := map[bool]string{true: "IPv4", false: "IPv6"}[fam.v4]
		tcpAddr := net.JoinHostPort(fam.nodeIP.String(), strconv.Itoa(tcpHostPort))
		udpAddr := net.JoinHostPort(fam.nodeIP.String(), strconv.Itoa(udpHostPort))
		extIP := map[bool]net.IP{true: extHostV4.Addr().AsSlice(), false: extHostV6.Addr().AsSlice()}[fam.v4]
		for _, c := range []struct {
			from     string
			ns       ns.NetNS
			addr     string
			udp      bool
			wantFrom net.IP // the client address the pod must see; nil: any (masqueraded)
		}{
			{"an external host over TCP", ext, tcpAddr, false, extIP},
			{"an external host over UDP", ext, udpAddr, true, extIP},
			{"another pod over TCP", cli.NS, tcpAddr, false, cliIPs[fam.v4]},
			{"another pod over UDP", cli.NS, udpAddr, true, cliIPs[fam.v4]},
			{"the node itself over TCP", node.NS, tcpAddr, false, nil},
			{"the pod itself (hairpin) over TCP", srv.NS, tcpAddr, false, nil},
		} {
			seen, err := ask(c.ns, c.addr, c.udp)
			if err != nil {
				t.Errorf("%s: %s -> %s: %v", name, c.from, c.addr, err)
				continue
			}
			if c.wantFrom != nil && !net.ParseIP(seen).Equal(c.wantFrom) {
				t.Errorf("%s: %s -> %s: the pod saw the connection from %s, want %s", name, c.from, c.addr, seen, c.wantFrom)
			}
			t.Logf("%s: %s -> %s: answered by the pod, which saw %s", name, c.from, c.addr, seen)
		}
	}
	// A client on the node may use localhost: portmap maps 127.0.0.1 too (IPv4 only), which
	// takes route_localnet on the pod's host veth and a masquerade.
	local := net.JoinHostPort("127.0.0.1", strconv.Itoa(tcpHostPort))
	if seen, err := ask(node.NS, local, false); err != nil {
		t.Errorf("the node itself -> %s: %v", local, err)
	} else {
		t.Logf("the node itself -> %s: answered by the pod, which saw %s", local, seen)
	}

	for _, fam := range []string{"ip", "ip6"} {
		if rules := hostportRules(t, node, fam, srv.ContainerID); len(rules) == 0 {
			t.Errorf("no %s rule of the pod in table %s cni_hostport while it is up", fam, fam)
		}
	}
	if err := node.Del(ctx, list, rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	for _, fam := range []string{"ip", "ip6"} {
		if rules := hostportRules(t, node, fam, ""); len(rules) != 0 {
			t.Errorf("%s rules left in table %s cni_hostport after DEL: %v", fam, fam, rules)
		}
	}
	for _, nodeIP := range []net.IP{cniutil.NodeIPv4, cniutil.NodeIPv6} {
		addr := net.JoinHostPort(nodeIP.String(), strconv.Itoa(tcpHostPort))
		if seen, err := ask(ext, addr, false); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("an external host -> %s after DEL: answer from %q, error %v; want connection refused by the node", addr, seen, err)
		}
	}
	// DEL of something already deleted succeeds, as the spec wants.
	if err := node.Del(ctx, list, rt); err != nil {
		t.Errorf("second DEL: %v", err)
	}
}

// externalHost makes a namespace standing for a host outside the node, on a link of its own
// to the node (a veth: ext-<n> on the node, eth0 inside), with routes to the node's addresses
// through it.
func externalHost(t *testing.T, node *cniutil.Node) ns.NetNS {
	t.Helper()
	host := cniutil.NewPodNS(t)
	const nodeSide = "ext0"
	err := node.Do(func() error {
		la := netlink.NewLinkAttrs()
		la.Name = nodeSide
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "ext0-peer"}); err != nil {
			return fmt.Errorf("add %s: %w", nodeSide, err)
		}
		peer, err := netlink.LinkByName("ext0-peer")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(peer, int(host.NS.Fd())); err != nil {
			return err
		}
		return upWithAddrs(nodeSide, extGatewayV4, extGatewayV6)
	})
	if err != nil {
		t.Fatalf("node side of the external link: %v", err)
	}
	err = host.NS.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("ext0-peer")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetName(l, "eth0"); err != nil {
			return err
		}
		if err := upWithAddrs("eth0", extHostV4, extHostV6); err != nil {
			return err
		}
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		for _, gw := range []netip.Prefix{extGatewayV4, extGatewayV6} {
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.Addr().AsSlice()}); err != nil {
				return fmt.Errorf("default via %s: %w", gw.Addr(), err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("external host: %v", err)
	}
	return host.NS
}

// upWithAddrs sets link name up with the given addresses (IPv6 without duplicate address
// detection, so they are usable at once), in the calling thread's namespace.
func upWithAddrs(name string, addrs ...netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		na := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
		if a.Addr().Is6() {
			na.Flags = syscall.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(l, na); err != nil {
			return fmt.Errorf("add %s to %s: %w", a, name, err)
		}
	}
	return netlink.LinkSetUp(l)
}

// serveEcho listens in the pod on the container ports, TCP and UDP, both families, and
// answers every request with the address it came from.
func serveEcho(t *testing.T, pod ns.NetNS) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := pod.Do(func(ns.NetNS) error {
		var err error
		if ln, err = net.Listen("tcp", ":"+strconv.Itoa(tcpPodPort)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", ":"+strconv.Itoa(udpPodPort))
		return err
	})
	if err != nil {
		t.Fatalf("listen in the pod: %v", err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
					return
				}
				fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
			}()
		}
	}()
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(from.(*net.UDPAddr).AddrPort().Addr().Unmap().String()+"\n"), from)
		}
	}()
}

// ask sends a request to addr from inside netns and returns the client address the pod
// reported. A UDP request is retried: its first datagram may race nothing, but a lost one
// must not fail the test.
func ask(netns ns.NetNS, addr string, udp bool) (string, error) {
	network := "tcp"
	if udp {
		network = "udp"
	}
	var conn net.Conn
	err := netns.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout(network, addr, pingTimeout)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	tries := 1
	if udp {
		tries = 5
	}
	var lastErr error
	for range tries {
		_ = conn.SetDeadline(time.Now().Add(pingTimeout / time.Duration(tries)))
		if _, err := conn.Write([]byte("who am I?\n")); err != nil {
			lastErr = err
			continue
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			lastErr = err
			continue
		}
		return strings.TrimSpace(line), nil
	}
	return "", lastErr
}

// hostportRules lists the rules in portmap's nftables table of family (ip or ip6) in the
// node, those commented with containerID only when it is not empty. A missing table holds
// no rule.
func hostportRules(t *testing.T, node *cniutil.Node, family, containerID string) []string {
	t.Helper()
	var out []byte
	err := node.Do(func() error {
		var err error
		out, err = exec.Command("nft", "-j", "list", "table", family, "cni_hostport").Output()
		return err
	})
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && strings.Contains(string(ee.Stderr), "No such file or directory") {
			return nil
		}
		t.Fatalf("nft list table %s cni_hostport: %v", family, err)
	}
	var listing struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &listing); err != nil {
		t.Fatalf("nft -j output: %v", err)
	}
	var rules []string
	for _, obj := range listing.Nftables {
		raw, ok := obj["rule"]
		if !ok {
			continue
		}
		var r struct {
			Chain   string `json:"chain"`
			Comment string `json:"comment"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		// The fixed jumps portmap keeps (prerouting, output, hostports_all) are not a pod's.
		if r.Comment == "" {
			continue
		}
		if containerID == "" || r.Comment == containerID {
			rules = append(rules, r.Chain+": "+string(raw))
		}
	}
	return rules
}
