package uninstall

import (
	"context"
	"errors"
	"golang.org/x/sys/unix"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/podroute/podroute/cni"
	"github.com/podroute/podroute/cniconf"
	"github.com/podroute/podroute/egress"
	"github.com/podroute/podroute/routes"
	"github.com/podroute/podroute/test/cniutil"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and nftables")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs the nft binary (Debian package nftables)")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// node is a throwaway network namespace and file tree holding podroute's state, made by
// podroute's own code, next to state that is not podroute's.
type node struct {
	t    *testing.T
	ns   ns.NetNS
	opts Options
	dirs struct{ conf, bin, data, run string }
}

func (n *node) in(f func() error) {
	n.t.Helper()
	if err := n.ns.Do(func(ns.NetNS) error { return f() }); err != nil {
		n.t.Fatal(err)
	}
}

func sh(t *testing.T, netns ns.NetNS, args ...string) string {
	t.Helper()
	var out []byte
	err := netns.Do(func(ns.NetNS) error {
		var err error
		out, err = exec.Command(args[0], args[1:]...).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

func newNode(t *testing.T) *node {
	needRoot(t)
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Close(); _ = testutils.UnmountNS(netns) })
	n := &node{t: t, ns: netns}
	root := t.TempDir()
	n.dirs.conf = filepath.Join(root, "etc/cni/net.d")
	n.dirs.bin = filepath.Join(root, "opt/cni/bin")
	n.dirs.data = filepath.Join(root, "var/lib/cni/podroute")
	n.dirs.run = filepath.Join(root, "run/podroute")
	n.opts = Options{
		CNI:    cniconf.Options{ConfDir: n.dirs.conf, BinDir: n.dirs.bin, DataDir: n.dirs.data},
		Socket: filepath.Join(n.dirs.run, "agent.sock"),
		Logger: logger(t),
	}

	// The uplink and addresses the agent's gateways sit on.
	sh(t, netns, "ip", "link", "set", "lo", "up")
	sh(t, netns, "ip", "link", "add", "uplink", "type", "veth", "peer", "name", "uplinkpeer")
	sh(t, netns, "ip", "link", "set", "uplinkpeer", "up")
	sh(t, netns, "ip", "link", "set", "uplink", "up")
	sh(t, netns, "ip", "addr", "add", "192.0.2.1/24", "dev", "uplink")
	sh(t, netns, "ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "uplink", "nodad")

	// The agent's routes, through the agent's reconciler.
	n.in(func() error {
		r, err := routes.NewReconciler(routes.Options{Logger: logger(t)})
		if err != nil {
			return err
		}
		defer r.Close()
		res, err := r.Reconcile([]routes.Route{
			{Prefix: pfx("10.244.1.0/24"), Blackhole: true},
			{Prefix: pfx("fd00:10:244:1::/64"), Blackhole: true},
			{Prefix: pfx("10.244.2.0/24"), NextHops: []routes.NextHop{{Gateway: ip("192.0.2.2")}}},
			{Prefix: pfx("10.244.3.0/24"), NextHops: []routes.NextHop{{Gateway: ip("192.0.2.3")}, {Gateway: ip("192.0.2.4")}}},
			{Prefix: pfx("fd00:10:244:2::/64"), NextHops: []routes.NextHop{{Gateway: ip("2001:db8::2")}}},
		})
		if err == nil {
			err = res.Err()
		}
		return err
	})

	// A pod's host veth, as the plugin leaves it: name, alias, host routes with protocol 201.
	host := cni.HostVethName("default", "web-0", "c0ffee", "eth0")
	sh(t, netns, "ip", "link", "add", host, "type", "veth", "peer", "name", "podend")
	sh(t, netns, "ip", "link", "set", host, "alias", cni.OwnerAlias("c0ffee", "eth0"))
	sh(t, netns, "ip", "link", "set", host, "up")
	sh(t, netns, "ip", "route", "add", "10.244.1.7/32", "dev", host, "scope", "link", "proto", "201")
	sh(t, netns, "ip", "-6", "route", "add", "fd00:10:244:1::7/128", "dev", host, "proto", "201")
	// A protocol-201 route in another table is podroute's too.
	sh(t, netns, "ip", "route", "add", "10.244.9.0/24", "via", "192.0.2.9", "proto", "201", "table", "100")

	// What is not podroute's: a veth with a podroute-like name but no podroute alias, another
	// veth, routes with other protocols, another nftables table.
	sh(t, netns, "ip", "link", "add", "prnotours", "type", "veth", "peer", "name", "keep1")
	sh(t, netns, "ip", "link", "set", "prnotours", "alias", "someone else's")
	sh(t, netns, "ip", "link", "add", "vethkeep", "type", "veth", "peer", "name", "keep2")
	sh(t, netns, "ip", "link", "set", "vethkeep", "up")
	sh(t, netns, "ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.254", "proto", "static")
	sh(t, netns, "ip", "route", "add", "10.244.1.8/32", "dev", "vethkeep", "proto", "static")
	sh(t, netns, "ip", "route", "add", "blackhole", "203.0.113.0/24")
	sh(t, netns, "nft", "add", "table", "inet", "keepme")

	// The egress table, through the agent's egress package.
	n.in(func() error {
		m, err := egress.New(logger(t))
		if err != nil {
			return err
		}
		return m.Sync(context.Background(), egress.Config{
			PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24")}, ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}, Enabled: true,
		})
	})

	// Files: the conflist and the plugin, through cniconf; IPAM reservations; the socket.
	src := filepath.Join(root, "podroute-plugin")
	if err := os.WriteFile(src, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	portmap := filepath.Join(root, "portmap-plugin") // what the image carries
	if err := os.WriteFile(portmap, []byte("#!/bin/sh\necho portmap\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	n.opts.CNI.PortmapSource = portmap
	cn := n.opts.CNI
	cn.PluginSource = src
	if _, err := cniconf.InstallPlugin(cn); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cniconf.Write(cn, cniconf.NodeNetwork{PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24")}, MTU: 1500}); err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(n.dirs.conf, "05-other.conflist"), []byte("{}"), 0o644))
	must(t, os.WriteFile(filepath.Join(n.dirs.bin, "loopback"), []byte("x"), 0o755))
	must(t, os.MkdirAll(filepath.Join(n.dirs.data, "podroute"), 0o755))
	must(t, os.WriteFile(filepath.Join(n.dirs.data, "podroute", "lock"), nil, 0o600))
	must(t, os.Symlink("c0ffee:eth0", filepath.Join(n.dirs.data, "podroute", "10.244.1.7")))
	must(t, os.MkdirAll(n.dirs.run, 0o755))
	ln, err := net.Listen("unix", n.opts.Socket)
	must(t, err)
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // a stale socket, as a stopped agent leaves it
	return n
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// state is what a node looks like: links, routes, tables, files.
type state struct {
	links, routes4, routes6, tables, files string
}

func (n *node) state() state {
	var files []string
	_ = filepath.Walk(filepath.Dir(filepath.Dir(filepath.Dir(n.dirs.conf))), func(p string, _ os.FileInfo, err error) error {
		if err == nil {
			files = append(files, p)
		}
		return nil
	})
	return state{
		links:   sh(n.t, n.ns, "ip", "-o", "link", "show"),
		routes4: sh(n.t, n.ns, "ip", "route", "show", "table", "all"),
		routes6: sh(n.t, n.ns, "ip", "-6", "route", "show", "table", "all"),
		tables:  sh(n.t, n.ns, "nft", "list", "tables"),
		files:   strings.Join(files, "\n"),
	}
}

func (n *node) run(o Options) (Report, error) {
	var rep Report
	var err error
	n.in(func() error {
		rep, err = Run(context.Background(), o)
		return nil
	})
	for _, it := range rep.Items {
		n.t.Logf("report: %s", it)
	}
	return rep, err
}

func kinds(rep Report) map[string][]string {
	m := map[string][]string{}
	for _, it := range rep.Items {
		m[it.Kind] = append(m[it.Kind], it.Name)
	}
	return m
}

func TestUninstall(t *testing.T) {
	n := newNode(t)
	before := n.state()
	host := cni.HostVethName("default", "web-0", "c0ffee", "eth0")

	t.Run("RefusesWhileAgentRuns", func(t *testing.T) {
		live := filepath.Join(t.TempDir(), "live.sock")
		ln, err := net.Listen("unix", live)
		must(t, err)
		defer ln.Close()
		o := n.opts
		o.Socket = live
		if _, err := n.run(o); !errors.Is(err, ErrAgentRunning) {
			t.Fatalf("err %v, want ErrAgentRunning", err)
		}
		if after := n.state(); after != before {
			t.Fatalf("state changed by a refused run")
		}
	})

	t.Run("DryRun", func(t *testing.T) {
		o := n.opts
		o.DryRun = true
		rep, err := n.run(o)
		if err != nil {
			t.Fatal(err)
		}
		if after := n.state(); after != before {
			t.Fatalf("dry run changed the node:\nbefore %+v\nafter  %+v", before, after)
		}
		k := kinds(rep)
		want := map[string]int{KindCNIConfig: 1, KindPlugin: 3, KindVeth: 1, KindRoute: 8, KindNFTable: 1, KindIPAMData: 1, KindSocket: 1, KindSocketDir: 1}
		for kind, count := range want {
			if len(k[kind]) != count {
				t.Errorf("dry run lists %d %s (%q), want %d", len(k[kind]), kind, k[kind], count)
			}
		}
		all := strings.Join(k[KindRoute], "\n")
		for _, r := range []string{"blackhole 10.244.1.0/24", "blackhole fd00:10:244:1::/64", "10.244.2.0/24 via 192.0.2.2",
			"10.244.3.0/24 nexthop via 192.0.2.3 nexthop via 192.0.2.4", "fd00:10:244:2::/64 via 2001:db8::2",
			"10.244.1.7/32 dev " + host, "fd00:10:244:1::7/128 dev " + host, "10.244.9.0/24 via 192.0.2.9 proto 201 table 100"} {
			if !strings.Contains(all, r) {
				t.Errorf("dry run does not list route %q", r)
			}
		}
		if !strings.HasPrefix(k[KindVeth][0], host+" ") {
			t.Errorf("veth %q, want %s", k[KindVeth], host)
		}
	})

	t.Run("Remove", func(t *testing.T) {
		rep, err := n.run(n.opts)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Items) != 17 {
			t.Errorf("%d items removed, want 17", len(rep.Items))
		}
		s := n.state()
		if strings.Contains(s.links, host) || strings.Contains(s.links, "podend") {
			t.Errorf("pod veth left:\n%s", s.links)
		}
		for _, l := range []string{"uplink", "prnotours", "keep1", "vethkeep", "keep2"} {
			if !strings.Contains(s.links, l+":") && !strings.Contains(s.links, l+"@") {
				t.Errorf("link %s removed:\n%s", l, s.links)
			}
		}
		for _, r := range []string{s.routes4, s.routes6} {
			if strings.Contains(r, "proto 201") {
				t.Errorf("protocol 201 route left:\n%s", r)
			}
		}
		for _, r := range []string{"198.51.100.0/24 via 192.0.2.254 dev uplink proto static", "10.244.1.8 dev vethkeep proto static", "blackhole 203.0.113.0/24"} {
			if !strings.Contains(s.routes4, r) {
				t.Errorf("route %q removed:\n%s", r, s.routes4)
			}
		}
		if strings.Contains(s.tables, "podroute") || !strings.Contains(s.tables, "table inet keepme") {
			t.Errorf("nftables tables after uninstall:\n%s", s.tables)
		}
		for _, p := range []string{
			filepath.Join(n.dirs.conf, cniconf.DefaultFileName), filepath.Join(n.dirs.bin, "podroute"),
			filepath.Join(n.dirs.bin, "podroute-ipam"), filepath.Join(n.dirs.bin, "portmap"), n.dirs.data, n.dirs.run,
		} {
			if _, err := os.Lstat(p); !os.IsNotExist(err) {
				t.Errorf("%s left (%v)", p, err)
			}
		}
		for _, p := range []string{filepath.Join(n.dirs.conf, "05-other.conflist"), filepath.Join(n.dirs.bin, "loopback"), filepath.Dir(n.dirs.data)} {
			if _, err := os.Lstat(p); err != nil {
				t.Errorf("%s removed: %v", p, err)
			}
		}
	})

	t.Run("Idempotent", func(t *testing.T) {
		before := n.state()
		rep, err := n.run(n.opts)
		if err != nil || len(rep.Items) != 0 {
			t.Fatalf("second run: %d items, err %v; want nothing", len(rep.Items), err)
		}
		if after := n.state(); after != before {
			t.Fatal("second run changed the node")
		}
	})
}

func TestOptionsRefuseDangerousDataDir(t *testing.T) {
	for _, d := range []string{"/", "/var", "/var/lib", "relative/dir", "/var/lib/../lib/x"} {
		o := Options{CNI: cniconf.Options{DataDir: d}}
		if err := o.defaults(); err == nil {
			t.Errorf("DataDir %q accepted", d)
		}
	}
	o := Options{CNI: cniconf.Options{DataDir: "/etc/cni/net.d/x", ConfDir: "/etc/cni/net.d"}}
	if err := o.defaults(); err != nil {
		t.Errorf("DataDir inside nothing of ours: %v", err)
	}
	o = Options{CNI: cniconf.Options{DataDir: "/opt/cni/bin2", BinDir: "/opt/cni/bin2/sub"}}
	if err := o.defaults(); err == nil {
		t.Error("DataDir holding BinDir accepted")
	}
}

// TestSocketDirMountPoint: /run/podroute as a mount point (the agent container's hostPath
// volume, say) is emptied and kept, without an error: the mount is not podroute's.
func TestSocketDirMountPoint(t *testing.T) {
	n := newNode(t)
	must(t, unix.Mount(n.dirs.run, n.dirs.run, "", unix.MS_BIND, ""))
	t.Cleanup(func() { _ = unix.Unmount(n.dirs.run, unix.MNT_DETACH) })
	rep, err := n.run(n.opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range rep.Items {
		if it.Err != nil {
			t.Errorf("%s: %v", it, it.Err)
		}
		if it.Kind == KindSocketDir {
			t.Errorf("the mount point %s is reported: %s", n.dirs.run, it)
		}
	}
	if _, err := os.Stat(n.dirs.run); err != nil {
		t.Errorf("mount point %s removed: %v", n.dirs.run, err)
	}
	if _, err := os.Lstat(n.opts.Socket); !os.IsNotExist(err) {
		t.Errorf("socket %s left (%v)", n.opts.Socket, err)
	}
}

// TestUninstallOtherPortmap: a portmap in the CNI bin directory that is not the copy podroute
// carries (the runtime packages', another network plugin's, a newer one) stays, as does any
// portmap when the uninstaller is given none to compare with.
func TestUninstallOtherPortmap(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(n *node, o *Options)
	}{
		{"different content", func(n *node, o *Options) {
			must(t, os.Remove(filepath.Join(n.dirs.bin, "portmap")))
			must(t, os.WriteFile(filepath.Join(n.dirs.bin, "portmap"), []byte("the distribution's"), 0o755))
		}},
		{"no source to compare with", func(n *node, o *Options) { o.CNI.PortmapSource = "" }},
		{"source unreadable", func(n *node, o *Options) { o.CNI.PortmapSource = filepath.Join(t.TempDir(), "missing") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			o := n.opts
			tc.mutate(n, &o)
			pm := filepath.Join(n.dirs.bin, "portmap")
			before, err := os.ReadFile(pm)
			must(t, err)
			rep, err := n.run(o)
			if err != nil {
				t.Fatal(err)
			}
			for _, it := range rep.Items {
				if it.Name == pm {
					t.Errorf("report lists %s", it)
				}
			}
			if after, err := os.ReadFile(pm); err != nil || string(after) != string(before) {
				t.Errorf("%s changed or removed: %q %v", pm, after, err)
			}
			if _, err := os.Lstat(filepath.Join(n.dirs.bin, "podroute")); !os.IsNotExist(err) {
				t.Errorf("podroute not removed: %v", err)
			}
		})
	}
}

// TestUninstallOnABusyNode: the interface and route lists uninstall reads are dumps the
// kernel interrupts when a table changes meanwhile; on a busy node uninstall retries them
// instead of failing.
func TestUninstallOnABusyNode(t *testing.T) {
	n := newNode(t)
	cniutil.Busy(t, n.ns)
	rep, err := n.run(n.opts)
	if err != nil {
		t.Fatalf("uninstall on a busy node: %v", err)
	}
	if k := kinds(rep); len(k[KindVeth]) != 1 || len(k[KindRoute]) != 8 {
		t.Errorf("removed %q veths and %q routes, want 1 and 8", k[KindVeth], k[KindRoute])
	}
	// Each later run lists the interfaces and routes again and finds nothing of podroute's.
	for i := range 30 {
		rep, err := n.run(n.opts)
		if err != nil || len(rep.Items) != 0 {
			t.Fatalf("run #%d on a busy node: %d items, err %v; want nothing", i+2, len(rep.Items), err)
		}
	}
}
