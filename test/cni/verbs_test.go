package cni_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/podroute/podroute/cniconf"
	"github.com/podroute/podroute/routes"
	"github.com/podroute/podroute/test/cniutil"
)

// TestCheck: CHECK passes on a freshly added pod; it fails with a message that names the
// group once the host veth leaves its interface group, and names the host route once the
// host route to the pod is deleted by hand.
func TestCheck(t *testing.T) {
	t.Parallel()
	e := newEnv(t, [][]cniutil.Range{cniutil.V4, cniutil.V6})
	p := e.node.NewPod(t)
	res := e.add(t, p)
	ctx := context.Background()
	if err := e.node.Check(ctx, e.list, p.RuntimeConf()); err != nil {
		t.Fatalf("CHECK of a good pod: %v", err)
	}

	setGroup := func(group uint32) {
		t.Helper()
		err := e.node.Do(func() error {
			l, err := netlink.LinkByName(p.HostVeth())
			if err != nil {
				return err
			}
			return netlink.LinkSetGroup(l, int(group))
		})
		if err != nil {
			t.Fatalf("set group %d on %s: %v", group, p.HostVeth(), err)
		}
	}
	setGroup(0)
	err := e.node.Check(ctx, e.list, p.RuntimeConf())
	if err == nil {
		t.Fatalf("CHECK passed with host veth %s out of group %d", p.HostVeth(), hostGroup)
	}
	if msg := err.Error(); !strings.Contains(msg, "group 0") || !strings.Contains(msg, p.HostVeth()) {
		t.Errorf("CHECK error %q does not name the host veth %s and its group", msg, p.HostVeth())
	}
	setGroup(hostGroup)
	if err := e.node.Check(ctx, e.list, p.RuntimeConf()); err != nil {
		t.Fatalf("CHECK with the group restored: %v", err)
	}

	var v4 net.IP
	for _, ip := range podIPs(res) {
		if isV4(ip) {
			v4 = ip
		}
	}
	r, err := cniutil.RouteTo(e.node.NS, hostPrefix(v4))
	if err != nil || r == nil {
		t.Fatalf("host route to %s: %v %v", v4, r, err)
	}
	err = e.node.Do(func() error { return netlink.RouteDel(r) })
	if err != nil {
		t.Fatalf("delete host route %s: %v", r, err)
	}

	err = e.node.Check(ctx, e.list, p.RuntimeConf())
	if err == nil {
		t.Fatalf("CHECK passed with the host route to %s deleted", v4)
	}
	msg := err.Error()
	if !strings.Contains(msg, "host route") || !strings.Contains(msg, v4.String()) {
		t.Errorf("CHECK error %q does not name the missing host route to %s", msg, v4)
	}
}

// TestStatus: STATUS succeeds with a usable config and fails with code 50 when the IPAM data
// directory cannot be used.
func TestStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, [][]cniutil.Range{cniutil.V4})
	ctx := context.Background()
	if err := e.node.Status(ctx, e.list); err != nil {
		t.Errorf("STATUS with a good config: %v", err)
	}

	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := cniutil.Net{DataDir: filepath.Join(file, "data"), Ranges: [][]cniutil.Range{cniutil.V4}}
	err := e.node.Status(ctx, cniutil.MustList(t, bad.Podroute()))
	ce, ok := cniutil.CNIError(err)
	if !ok || ce.Code != 50 {
		t.Errorf("STATUS with dataDir under a regular file: %v (want CNI error code 50)", err)
	}
}

// TestStatusChainedPlugin: with the conflist the agent writes (podroute, then portmap), STATUS
// through libcni passes while portmap is in the plugin path, and fails with code 50 and a
// message naming portmap when it is missing or not executable, where libcni alone would only
// fail to find it, with no code.
func TestStatusChainedPlugin(t *testing.T) {
	cniutil.RequirePodroute(t)
	cniutil.RequireRefPlugins(t, "portmap")
	t.Parallel()
	node := cniutil.NewNode(t)
	conf, err := cniconf.Render(cniconf.Options{ConfDir: t.TempDir(), DataDir: t.TempDir()},
		cniconf.NodeNetwork{PodCIDRs: []netip.Prefix{netip.MustParsePrefix(cniutil.PodSubnetV4)}, MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	list := cniutil.MustList(t, conf)
	if list.CNIVersion != "1.1.0" {
		t.Fatalf("libcni picked cniVersion %s from the conflist; STATUS needs 1.1.0", list.CNIVersion)
	}
	ctx := context.Background()
	status := func(path ...string) error {
		c := libcni.NewCNIConfigWithCacheDir(path, t.TempDir(), nil)
		return node.Do(func() error { return c.GetStatusNetworkList(ctx, list) })
	}
	if err := status(cniutil.PluginPath()...); err != nil {
		t.Errorf("STATUS with portmap installed: %v", err)
	}

	// A plugin directory with podroute alone (make build puts portmap in bin/ too).
	podrouteOnly := t.TempDir()
	for _, name := range []string{"podroute", "podroute-ipam"} {
		if err := os.Symlink(filepath.Join(cniutil.BinDir(), name), filepath.Join(podrouteOnly, name)); err != nil {
			t.Fatal(err)
		}
	}
	notExec := t.TempDir()
	if err := os.WriteFile(filepath.Join(notExec, "portmap"), []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		path []string
		want string
	}{
		{"portmap missing", []string{podrouteOnly}, `chained plugin "portmap": not installed: not found in CNI_PATH ` + podrouteOnly},
		{"portmap not executable", []string{podrouteOnly, notExec, cniutil.RefDir()}, `chained plugin "portmap": ` + filepath.Join(notExec, "portmap") + " is not executable"},
	} {
		err := status(tc.path...)
		ce, ok := cniutil.CNIError(err)
		if !ok || ce.Code != 50 || !strings.Contains(ce.Msg, tc.want) {
			t.Errorf("%s: STATUS %v, want CNI error code 50 saying %q", tc.name, err, tc.want)
			continue
		}
		t.Logf("%s: code %d: %s", tc.name, ce.Code, ce.Msg)
	}

	// podroute alone (--cni-portmap=false) does not need portmap.
	alone, err := cniconf.Render(cniconf.Options{ConfDir: t.TempDir(), DataDir: t.TempDir(), NoPortmap: true},
		cniconf.NodeNetwork{PodCIDRs: []netip.Prefix{netip.MustParsePrefix(cniutil.PodSubnetV4)}, MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	list = cniutil.MustList(t, alone)
	if err := status(podrouteOnly); err != nil {
		t.Errorf("STATUS of podroute alone without portmap: %v", err)
	}
}

// TestRollback: an ADD that fails part way leaves no host veth, no host route and no
// reservation behind.
func TestRollback(t *testing.T) {
	t.Parallel()
	t.Run("pool exhausted on the second range set", func(t *testing.T) {
		// Range set 0 has room; range set 1 has one address, which the first pod takes. The
		// second pod's ADD gets its IPv4 address, then fails on IPv6 and must give the IPv4 back.
		one := "fd00:10:244:1::5"
		e := newEnv(t, [][]cniutil.Range{cniutil.V4, {{Subnet: cniutil.PodSubnetV6, RangeStart: one, RangeEnd: one}}})
		first := e.node.NewPod(t)
		res := e.add(t, first)
		before := e.reservations(t)

		second := e.node.NewPod(t)
		_, err := e.node.AddPod(context.Background(), e.list, second)
		if err == nil {
			t.Fatalf("ADD succeeded with range set 1 exhausted")
		}
		t.Logf("ADD with range set 1 exhausted: %v", err)
		if ce, ok := cniutil.CNIError(err); !ok || ce.Code < 100 {
			t.Errorf("want a plugin-specific exhaustion code (>= 100), got %v", err)
		}
		assertNoTrace(t, e, second)
		if after := e.reservations(t); len(after) != len(before) {
			t.Errorf("reservations %v after the failed ADD, want only the first pod's %v", after, before)
		}
		e.assertWired(t, first, res, true, true)
	})

	t.Run("pod refuses IPv6 after the veth exists", func(t *testing.T) {
		// IPv6 is disabled inside the pod, so ADD of a dual-stack network gets its addresses,
		// creates the veth pair and configures the host end, then fails on the pod end: the
		// latest point an ADD can fail at. Everything before it must be undone.
		e := newEnv(t, [][]cniutil.Range{cniutil.V4, cniutil.V6})
		p := e.node.NewPod(t)
		err := p.NS.Do(func(ns.NetNS) error {
			for _, name := range []string{"all", "default"} {
				path := "/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6"
				if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("disable IPv6 in the pod: %v", err)
		}
		_, err = e.node.AddPod(context.Background(), e.list, p)
		if err == nil {
			t.Fatalf("dual-stack ADD succeeded in a pod with IPv6 disabled")
		}
		t.Logf("ADD into a pod with IPv6 disabled: %v", err)
		assertNoTrace(t, e, p)
		e.assertClean(t)
		if l, err := cniutil.Link(p.NS, p.IfName); err != nil || l != nil {
			t.Errorf("pod interface %s left in the pod (%v)", p.IfName, err)
		}
	})

	t.Run("interface name taken in the pod", func(t *testing.T) {
		e := newEnv(t, [][]cniutil.Range{cniutil.V4, cniutil.V6})
		p := e.node.NewPod(t)
		takeIfName(t, p)
		_, err := e.node.AddPod(context.Background(), e.list, p)
		if ce, ok := cniutil.CNIError(err); !ok || ce.Code != 100 {
			t.Fatalf("ADD with %s taken in the pod: %v (want CNI error code 100)", p.IfName, err)
		}
		assertNoTrace(t, e, p)
		e.assertClean(t)
	})

	t.Run("host interface name taken", func(t *testing.T) {
		// Another owner's interface (its alias says so) already holds the host veth's name:
		// fail, and touch nothing.
		e := newEnv(t, [][]cniutil.Range{cniutil.V4})
		p := e.node.NewPod(t)
		err := e.node.Do(func() error {
			la := netlink.NewLinkAttrs()
			la.Name = p.HostVeth()
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "squatter-peer"}); err != nil {
				return err
			}
			l, err := netlink.LinkByName(la.Name)
			if err != nil {
				return err
			}
			return netlink.LinkSetAlias(l, "someone-else")
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.node.AddPod(context.Background(), e.list, p)
		if ce, ok := cniutil.CNIError(err); !ok || ce.Code != 100 {
			t.Fatalf("ADD with the host veth name taken: %v (want CNI error code 100)", err)
		}
		if l, _ := cniutil.Link(e.node.NS, p.HostVeth()); l == nil || l.Attrs().Alias != "someone-else" {
			t.Errorf("the foreign interface %s was removed or changed", p.HostVeth())
		}
		if res := e.reservations(t); len(res) > 0 {
			t.Errorf("reservations left: %v", res)
		}
	})
}

// takeIfName creates an interface named p.IfName inside the pod's namespace.
func takeIfName(t *testing.T, p *cniutil.Pod) {
	t.Helper()
	err := p.NS.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = p.IfName
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "taken-peer"})
	})
	if err != nil {
		t.Fatalf("create %s in the pod: %v", p.IfName, err)
	}
}

// assertNoTrace checks that the node has no veth named for p and no podroute route that is not
// on some other pod's veth.
func assertNoTrace(t *testing.T, e *env, p *cniutil.Pod) {
	t.Helper()
	if l, err := cniutil.Link(e.node.NS, p.HostVeth()); err != nil || l != nil {
		t.Errorf("host veth %s left behind (%v)", p.HostVeth(), err)
	}
	rs, err := cniutil.Routes(e.node.NS, netlink.FAMILY_ALL, routes.Protocol)
	if err != nil {
		t.Fatal(err)
	}
	links, err := cniutil.Links(e.node.NS)
	if err != nil {
		t.Fatal(err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	for _, r := range rs {
		if names[r.LinkIndex] == p.HostVeth() || names[r.LinkIndex] == "" {
			t.Errorf("route %s left behind", r)
		}
	}
}

// TestDelegatedIPAM: with "ipam": {"type": "host-local"}, podroute delegates allocation by
// exec; pods get working addresses and DEL hands them back to host-local.
func TestDelegatedIPAM(t *testing.T) {
	t.Parallel()
	cniutil.RequireRefPlugins(t, "host-local")
	e := newEnv(t, [][]cniutil.Range{cniutil.V4, cniutil.V6}, func(n *cniutil.Net) { n.IPAMType = "host-local" })
	a, b := e.node.NewPod(t), e.node.NewPod(t)
	resA, resB := e.add(t, a), e.add(t, b)
	e.assertWired(t, a, resA, true, true)
	e.assertWired(t, b, resB, true, true)
	if got := len(e.reservations(t)); got != 4 {
		t.Errorf("host-local holds %d reservations, want 4", got)
	}
	assertPings(t, map[string]*cniutil.Pod{"pod a": a}, e.node, podIPs(resB))
	e.del(t, a)
	e.del(t, b)
	e.assertGone(t, a, podIPs(resA))
	e.assertGone(t, b, podIPs(resB))
	e.assertClean(t)
}

// TestCNIVersions: configurations of every older spec version podroute supports work for ADD
// and DEL, and the result comes back in the configured version.
func TestCNIVersions(t *testing.T) {
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0"} {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, [][]cniutil.Range{cniutil.V4, cniutil.V6}, func(n *cniutil.Net) { n.CNIVersion = v })
			p := e.node.NewPod(t)
			raw, err := e.node.Add(context.Background(), e.list, p.RuntimeConf())
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if raw.Version() != v {
				t.Errorf("result version %s, want %s", raw.Version(), v)
			}
			res, err := current.NewResultFromResult(raw)
			if err != nil {
				t.Fatalf("convert %s result: %v", v, err)
			}
			e.assertWired(t, p, res, true, true)
			assertPings(t, nil, e.node, podIPs(res))
			e.del(t, p)
			e.assertGone(t, p, podIPs(res))
			e.assertClean(t)
		})
	}
}
