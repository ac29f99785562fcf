package policy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

var hostMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}

// kpod is a pod of the kernel test: a namespace with eth0, wired to the node as podroute's
// plugin wires it (/32 and /128, link-local gateways, host routes, permanent neighbours).
type kpod struct {
	ns     ns.NetNS
	veth   string
	v4, v6 net.IP
}

func newNetNS(t *testing.T) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close(); _ = testutils.UnmountNS(n) })
	return n
}

func do(t *testing.T, n ns.NetNS, f func() error) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

// routingNode is a throwaway node namespace that forwards both families, for the tests that
// load rulesets into the kernel (root and the nft binary, which CI installs).
func routingNode(t *testing.T) ns.NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and nftables")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs the nft binary (Debian package nftables)")
	}
	node := newNetNS(t)
	do(t, node, func() error {
		for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	return node
}

func wirePod(t *testing.T, node ns.NetNS, i int, veth string) *kpod {
	t.Helper()
	p := &kpod{ns: newNetNS(t), veth: veth,
		v4: net.ParseIP(fmt.Sprintf("10.99.0.%d", i)), v6: net.ParseIP(fmt.Sprintf("fd99::%d", i))}
	podMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, byte(i)}
	do(t, node, func() error {
		v := &netlink.Veth{
			LinkAttrs:        netlink.LinkAttrs{Name: veth, HardwareAddr: hostMAC, Group: PodInterfaceGroup},
			PeerName:         "eth0",
			PeerNamespace:    netlink.NsFd(int(p.ns.Fd())),
			PeerHardwareAddr: podMAC,
		}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		l, err := netlink.LinkByName(veth)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		for _, ip := range []net.IP{p.v4, p.v6} {
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: host(ip), Scope: netlink.SCOPE_LINK}); err != nil {
				return err
			}
			if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: ip, HardwareAddr: podMAC, State: netlink.NUD_PERMANENT, Family: family(ip)}); err != nil {
				return err
			}
		}
		return nil
	})
	do(t, p.ns, func() error {
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		for _, ip := range []net.IP{p.v4, p.v6} {
			if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: host(ip), Flags: 0x02 /* IFA_F_NODAD */}); err != nil {
				return err
			}
		}
		gw4, gw6 := net.ParseIP("169.254.1.1"), net.ParseIP("fe80::1")
		for _, gw := range []net.IP{gw4, gw6} {
			if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: gw, HardwareAddr: hostMAC, State: netlink.NUD_PERMANENT, Family: family(gw)}); err != nil {
				return err
			}
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: host(gw4), Scope: netlink.SCOPE_LINK}); err != nil {
			return err
		}
		for _, gw := range []net.IP{gw4, gw6} {
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw}); err != nil {
				return fmt.Errorf("default via %s: %w", gw, err)
			}
		}
		return nil
	})
	return p
}

func host(ip net.IP) *net.IPNet {
	if ip.To4() != nil {
		return &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}
	}
	return &net.IPNet{IP: ip, Mask: net.CIDRMask(128, 128)}
}

func family(ip net.IP) int {
	if ip.To4() != nil {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// serve starts TCP echo servers and UDP echo servers in a namespace, on every address.
func serve(t *testing.T, n ns.NetNS, tcp, udp []int) {
	t.Helper()
	do(t, n, func() error {
		for _, port := range tcp {
			l, err := net.Listen("tcp", fmt.Sprintf("[::]:%d", port))
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						_ = c.SetDeadline(time.Now().Add(5 * time.Second))
						line, _ := bufio.NewReader(c).ReadString('\n')
						_, _ = c.Write([]byte(line))
					}()
				}
			}()
		}
		for _, port := range udp {
			pc, err := net.ListenPacket("udp", fmt.Sprintf("[::]:%d", port))
			if err != nil {
				return err
			}
			t.Cleanup(func() { pc.Close() })
			go func() {
				buf := make([]byte, 1500)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					_, _ = pc.WriteTo(buf[:n], from)
				}
			}()
		}
		return nil
	})
}

// exchange sends a line from namespace n and tells whether its echo came back: the request
// got through and so did the reply.
func exchange(n ns.NetNS, network string, to net.IP, port int, wait time.Duration) bool {
	ok := false
	_ = n.Do(func(ns.NetNS) error {
		addr := net.JoinHostPort(to.String(), fmt.Sprint(port))
		c, err := net.DialTimeout(network, addr, wait)
		if err != nil {
			return nil
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(wait))
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return nil
		}
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		ok = err == nil && string(buf[:n]) == "ping\n"
		return nil
	})
	return ok
}

type flowCheck struct {
	name    string
	from    ns.NetNS
	network string
	to      net.IP
	port    int
	want    bool
}

// runChecks runs the checks in parallel: a denied one waits out its timeout.
func runChecks(t *testing.T, checks []flowCheck) {
	t.Helper()
	var wg sync.WaitGroup
	got := make([]bool, len(checks))
	for i, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wait := 2 * time.Second
			if !c.want {
				wait = 500 * time.Millisecond
			}
			got[i] = exchange(c.from, c.network, c.to, c.port, wait)
		}()
	}
	wg.Wait()
	for i, c := range checks {
		if got[i] != c.want {
			t.Errorf("%s (%s to %s port %d): got through = %v, want %v", c.name, c.network, c.to, c.port, got[i], c.want)
		}
	}
}

// TestKernel loads the compiled ruleset into a real kernel, in a throwaway node namespace
// with veth pods, and sends traffic through it.
func TestKernel(t *testing.T) {
	node := routingNode(t)
	do(t, node, func() error {
		// The node's own addresses (a real node has them on its uplink).
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		for _, a := range []string{"192.168.99.1/32", "fd99:ff::1/128"} {
			addr, _ := netlink.ParseAddr(a)
			addr.Flags = 0x02 // IFA_F_NODAD
			if err := netlink.AddrAdd(lo, addr); err != nil {
				return err
			}
		}
		return nil
	})
	a := wirePod(t, node, 1, "pra000000000001") // client
	b := wirePod(t, node, 2, "prb000000000002") // server
	c := wirePod(t, node, 3, "prc000000000003") // comes later
	serve(t, a.ns, []int{8080}, nil)
	serve(t, b.ns, []int{8080, 9000}, []int{5353, 5354})

	local := func(p *kpod, name, app string, ports ...NamedPort) LocalPod {
		return LocalPod{HostVeth: p.veth, Pod: Pod{Namespace: "default", Name: name, Labels: map[string]string{"app": app},
			IPs: addrs(p.v4.String(), p.v6.String()), Ports: ports}}
	}
	in := &Input{
		Policies: []*networkingv1.NetworkPolicy{
			policy("default", "server", map[string]string{"app": "server"},
				ingressRule(peers(podPeer("app", "client")), port("TCP", 8080), namedPort("UDP", "dns")),
				ingressRule(nil, port("TCP", 9000))),
			policy("default", "client", map[string]string{"app": "client"}, types(tIn, tOut),
				egressRule(peers(podPeer("app", "server")), namedPort("TCP", "http"), port("UDP", 5353))),
		},
		Local: []LocalPod{
			local(a, "a", "client"),
			local(b, "b", "server", NamedPort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080},
				NamedPort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 5353}),
		},
	}
	var r *Reconciler
	do(t, node, func() error {
		var err error
		r, err = New(testLog(t))
		return err
	})
	sync := func(in *Input) (ch Changes) {
		t.Helper()
		rs := Compile(in)
		if len(rs.Problems) > 0 {
			t.Fatalf("problems: %q", rs.Problems)
		}
		do(t, node, func() error {
			var err error
			ch, err = r.Sync(context.Background(), rs)
			return err
		})
		return ch
	}
	if ch := sync(in); !ch.TableCreated {
		t.Fatalf("first pass: %v", ch)
	}

	var checks []flowCheck
	for _, fam := range []struct {
		name string
		ip   func(*kpod) net.IP
	}{{"IPv4", func(p *kpod) net.IP { return p.v4 }}, {"IPv6", func(p *kpod) net.IP { return p.v6 }}} {
		checks = append(checks,
			flowCheck{fam.name + " client to server, TCP by named port, and its reply", a.ns, "tcp", fam.ip(b), 8080, true},
			flowCheck{fam.name + " client to server, UDP, and its reply", a.ns, "udp", fam.ip(b), 5353, true},
			flowCheck{fam.name + " client to server, UDP, a port neither allows", a.ns, "udp", fam.ip(b), 5354, false},
			flowCheck{fam.name + " client to server 9000: the server allows it, the client's egress does not", a.ns, "tcp", fam.ip(b), 9000, false},
			flowCheck{fam.name + " server to client: the client's ingress is a default deny", b.ns, "tcp", fam.ip(a), 8080, false},
			flowCheck{fam.name + " the node to the client: never policed", node, "tcp", fam.ip(a), 8080, true},
			flowCheck{fam.name + " a pod not judged yet is held", c.ns, "tcp", fam.ip(b), 9000, false},
		)
	}
	runChecks(t, checks)

	t.Run("an agent that restarts finds the table as it left it", func(t *testing.T) {
		var r2 *Reconciler
		var ch Changes
		do(t, node, func() error {
			var err error
			if r2, err = New(testLog(t)); err != nil {
				return err
			}
			ch, err = r2.Sync(context.Background(), Compile(in))
			return err
		})
		if !ch.Empty() || !ch.KernelRead {
			t.Errorf("first pass of a new reconciler: %v (read %v)", ch, ch.KernelRead)
		}
	})

	t.Run("the pod, once judged, has what the policies give it", func(t *testing.T) {
		in.Local = append(in.Local, local(c, "c", "late"))
		if ch := sync(in); ch != (Changes{ElementsAdded: 1, Operations: 2}) {
			t.Errorf("judging a pod no policy selects: %+v, want one element", ch)
		}
		runChecks(t, []flowCheck{
			{"IPv4 to a port the server opens to all", c.ns, "tcp", b.v4, 9000, true},
			{"IPv6 to a port the server opens to all", c.ns, "tcp", b.v6, 9000, true},
			{"IPv4 to a port the server opens to clients only", c.ns, "tcp", b.v4, 8080, false},
		})
	})

	t.Run("a policy change replaces one chain and repoints its pod, in one transaction", func(t *testing.T) {
		in.Policies[0] = policy("default", "server", map[string]string{"app": "server"},
			ingressRule(peers(podPeer("app", "client")), port("TCP", 8080), namedPort("UDP", "dns")),
			ingressRule(nil, port("TCP", 9001)))
		ch := sync(in)
		if ch.ChainsAdded != 1 || ch.ChainsDeleted != 1 || ch.VethsChanged != 1 || ch.SetsAdded+ch.SetsDeleted+ch.ElementsAdded+ch.ElementsDeleted != 0 {
			t.Errorf("changes %+v", ch)
		}
		runChecks(t, []flowCheck{
			{"IPv4 to the port closed now", c.ns, "tcp", b.v4, 9000, false},
			{"IPv6 client to server, still allowed", a.ns, "tcp", b.v6, 8080, true},
		})
	})

	t.Run("removing every policy leaves nothing", func(t *testing.T) {
		in.Policies = nil
		if ch := sync(in); !ch.TableDeleted {
			t.Errorf("changes %v", ch)
		}
		var out []byte
		do(t, node, func() error {
			var err error
			out, err = exec.Command("nft", "list", "tables").CombinedOutput()
			if err != nil {
				return errors.New(string(out))
			}
			return nil
		})
		if strings.Contains(string(out), TableName) {
			t.Errorf("the table is still there:\n%s", out)
		}
		runChecks(t, []flowCheck{
			{"IPv4 client to server 9000", a.ns, "tcp", b.v4, 9000, true},
			{"IPv6 server to client", b.ns, "tcp", a.v6, 8080, true},
		})
	})
}
