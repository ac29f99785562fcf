package cniconf

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
)

type parsedConf struct {
	CNIVersion  string   `json:"cniVersion"`
	CNIVersions []string `json:"cniVersions"`
	Name        string   `json:"name"`
	Plugins     []struct {
		Type string `json:"type"`
		MTU  int    `json:"mtu"`
		IPAM struct {
			Type    string `json:"type"`
			DataDir string `json:"dataDir"`
			Ranges  [][]struct {
				Subnet string `json:"subnet"`
			} `json:"ranges"`
		} `json:"ipam"`
		ChainedPlugins []string        `json:"chainedPlugins"`
		Capabilities   map[string]bool `json:"capabilities"`
		Backend        string          `json:"backend"`
	} `json:"plugins"`
}

func parse(t *testing.T, b []byte) parsedConf {
	t.Helper()
	var c parsedConf
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("invalid JSON: %v\n%s", err, b)
	}
	return c
}

func prefixes(ss ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range ss {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}

func testOpts(t *testing.T) Options {
	dir := t.TempDir()
	return Options{ConfDir: filepath.Join(dir, "net.d"), BinDir: filepath.Join(dir, "bin")}
}

func TestRender(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cidrs []string
		mtu   int
	}{
		{"ipv4", []string{"10.244.1.0/24"}, 1500},
		{"dual-stack", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, 9000},
		{"ipv6", []string{"fd00:10:244:1::/64"}, 1280},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Render(testOpts(t), NodeNetwork{PodCIDRs: prefixes(tc.cidrs...), MTU: tc.mtu})
			if err != nil {
				t.Fatal(err)
			}
			c := parse(t, out)
			if c.CNIVersion != "1.0.0" || c.Name != "podroute" {
				t.Errorf("cniVersion %q name %q", c.CNIVersion, c.Name)
			}
			if strings.Join(c.CNIVersions, ",") != "0.3.1,0.4.0,1.0.0,1.1.0" {
				t.Errorf("cniVersions %v", c.CNIVersions)
			}
			if len(c.Plugins) != 2 {
				t.Fatalf("want podroute and portmap, got %d plugins:\n%s", len(c.Plugins), out)
			}
			p := c.Plugins[0]
			if p.Type != "podroute" || p.MTU != tc.mtu || p.IPAM.Type != "podroute-ipam" || p.IPAM.DataDir != "/var/lib/cni/podroute" {
				t.Errorf("plugin %+v", p)
			}
			if !slices.Equal(p.ChainedPlugins, []string{"portmap"}) {
				t.Errorf("podroute's chainedPlugins %q, want [portmap]", p.ChainedPlugins)
			}
			pm := c.Plugins[1]
			if pm.Type != "portmap" || !pm.Capabilities["portMappings"] || len(pm.Capabilities) != 1 || pm.Backend != "nftables" {
				t.Errorf("portmap entry %+v, want type portmap, capabilities {portMappings: true}, backend nftables", pm)
			}
			// libcni reads it as a list of two and hands portmap the port mappings.
			list, err := libcni.NetworkConfFromBytes(out)
			if err != nil {
				t.Fatalf("libcni: %v", err)
			}
			if len(list.Plugins) != 2 || list.Plugins[1].Network.Type != "portmap" || !list.Plugins[1].Network.Capabilities["portMappings"] {
				t.Errorf("libcni sees %+v", list.Plugins)
			}
			if len(p.IPAM.Ranges) != len(tc.cidrs) {
				t.Fatalf("ranges %+v, want one set per CIDR %v", p.IPAM.Ranges, tc.cidrs)
			}
			for i, set := range p.IPAM.Ranges {
				if len(set) != 1 || set[0].Subnet != tc.cidrs[i] {
					t.Errorf("range set %d: %+v, want [%s]", i, set, tc.cidrs[i])
				}
			}
			if !bytes.HasSuffix(out, []byte("}\n")) {
				t.Errorf("no trailing newline")
			}
		})
	}
}

func TestRenderNoPortmap(t *testing.T) {
	o := testOpts(t)
	o.NoPortmap = true
	out, err := Render(o, NodeNetwork{PodCIDRs: prefixes("10.244.1.0/24"), MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	c := parse(t, out)
	if len(c.Plugins) != 1 || c.Plugins[0].Type != "podroute" {
		t.Fatalf("want podroute alone:\n%s", out)
	}
	if bytes.Contains(out, []byte("chainedPlugins")) || bytes.Contains(out, []byte("portmap")) {
		t.Errorf("podroute alone, yet the configuration mentions a chain:\n%s", out)
	}
}

func TestRenderOptions(t *testing.T) {
	o := testOpts(t)
	o.NetworkName, o.DataDir, o.CNIVersion = "rack7", "/data/ipam", "1.0.0"
	out, err := Render(o, NodeNetwork{PodCIDRs: prefixes("10.1.0.0/16"), MTU: 1450})
	if err != nil {
		t.Fatal(err)
	}
	c := parse(t, out)
	if c.Name != "rack7" || c.CNIVersion != "1.0.0" || c.Plugins[0].IPAM.DataDir != "/data/ipam" {
		t.Errorf("%+v", c)
	}
}

func TestRenderValidation(t *testing.T) {
	good := NodeNetwork{PodCIDRs: prefixes("10.244.1.0/24"), MTU: 1500}
	for _, tc := range []struct {
		name string
		mod  func(*Options, *NodeNetwork)
		want string
	}{
		{"no pod CIDR", func(o *Options, n *NodeNetwork) { n.PodCIDRs = nil }, "no pod CIDR"},
		{"host bits", func(o *Options, n *NodeNetwork) { n.PodCIDRs = prefixes("10.244.1.5/24") }, "host bits"},
		{"invalid prefix", func(o *Options, n *NodeNetwork) { n.PodCIDRs = []netip.Prefix{{}} }, "not a valid prefix"},
		{"overlap", func(o *Options, n *NodeNetwork) { n.PodCIDRs = prefixes("10.244.0.0/16", "10.244.1.0/24") }, "overlap"},
		{"mtu zero", func(o *Options, n *NodeNetwork) { n.MTU = 0 }, "MTU 0 is outside"},
		{"mtu too big", func(o *Options, n *NodeNetwork) { n.MTU = 70000 }, "MTU 70000 is outside"},
		{"mtu v6", func(o *Options, n *NodeNetwork) { n.PodCIDRs = prefixes("fd00::/64"); n.MTU = 1200 }, "minimum for IPv6"},
		{"conf dir empty", func(o *Options, n *NodeNetwork) { o.ConfDir = "" }, "ConfDir is empty"},
		{"conf dir relative", func(o *Options, n *NodeNetwork) { o.ConfDir = "etc/cni" }, "not an absolute path"},
		{"data dir relative", func(o *Options, n *NodeNetwork) { o.DataDir = "data" }, "DataDir \"data\" is not an absolute"},
		{"file name path", func(o *Options, n *NodeNetwork) { o.FileName = "a/b.conflist" }, "plain file name"},
		{"file name ext", func(o *Options, n *NodeNetwork) { o.FileName = "10-podroute.conf" }, "must end in .conflist"},
		{"version", func(o *Options, n *NodeNetwork) { o.CNIVersion = "2.0.0" }, "CNIVersion"},
		{"network name", func(o *Options, n *NodeNetwork) { o.NetworkName = "bad name" }, "plugin rejects"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, n := testOpts(t), good
			tc.mod(&o, &n)
			_, err := Render(o, n)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
			if _, _, err := Write(o, n); err == nil {
				t.Fatalf("Write accepted what Render rejects")
			}
		})
	}
}

func TestWriteAtomic(t *testing.T) {
	o := testOpts(t)
	net := func(i int) NodeNetwork {
		return NodeNetwork{PodCIDRs: prefixes("10.244.1.0/24", "fd00:10:244:1::/64"), MTU: 1300 + i}
	}
	path, changed, err := Write(o, net(0))
	if err != nil || !changed {
		t.Fatalf("first write: changed %v err %v", changed, err)
	}
	if path != filepath.Join(o.ConfDir, "10-podroute.conflist") {
		t.Fatalf("path %s", path)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("stat %v %v", st, err)
	}

	stop := make(chan struct{})
	var reads atomic.Int64
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(path)
			if err != nil {
				errc <- err
				return
			}
			var c parsedConf
			if err := json.Unmarshal(b, &c); err != nil || len(c.Plugins) != 2 {
				errc <- errors.New("partial configuration read: " + string(b))
				return
			}
			reads.Add(1)
		}
	}()
	for i := 1; i <= 200; i++ {
		if _, changed, err := Write(o, net(i)); err != nil || !changed {
			t.Fatalf("write %d: changed %v err %v", i, changed, err)
		}
	}
	close(stop)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d concurrent reads", reads.Load())
	c := parse(t, mustRead(t, path))
	if c.Plugins[0].MTU != 1500 {
		t.Errorf("final MTU %d", c.Plugins[0].MTU)
	}
	assertOnly(t, o.ConfDir, "10-podroute.conflist")
}

func TestWriteUnchanged(t *testing.T) {
	o := testOpts(t)
	n := NodeNetwork{PodCIDRs: prefixes("10.244.1.0/24"), MTU: 1500}
	path, _, err := Write(o, n)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(path)
	_, changed, err := Write(o, n)
	if err != nil || changed {
		t.Fatalf("rewrite of same content: changed %v err %v", changed, err)
	}
	after, _ := os.Stat(path)
	if !after.ModTime().Equal(old) || !os.SameFile(before, after) {
		t.Errorf("file touched: mtime %v, want %v", after.ModTime(), old)
	}

	// A wrong mode is repaired.
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, changed, err := Write(o, n); err != nil || !changed {
		t.Fatalf("mode repair: changed %v err %v", changed, err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", st.Mode())
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// assertOnly checks dir holds exactly names: no temporary file is left behind.
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("%s holds %v, want %v", dir, got, names)
	}
}

// script is a plugin stand-in large enough to take many writes to copy; a truncated copy
// lacks the final line and prints nothing.
func script(t *testing.T, dir, version string) (string, [32]byte) {
	t.Helper()
	var b bytes.Buffer
	b.WriteString("#!/bin/sh\n")
	pad := "# " + strings.Repeat(version, 60) + "\n"
	for b.Len() < 2<<20 {
		b.WriteString(pad)
	}
	b.WriteString("echo " + version + "\n")
	path := filepath.Join(dir, "podroute-"+version)
	if err := os.WriteFile(path, b.Bytes(), 0o700); err != nil {
		t.Fatal(err)
	}
	return path, sha256.Sum256(b.Bytes())
}

func TestInstallPlugin(t *testing.T) {
	o := testOpts(t)
	src := t.TempDir()
	v1, sum1 := script(t, src, "v1")
	v2, sum2 := script(t, src, "v2")
	bin := filepath.Join(o.BinDir, "podroute")

	o.PluginSource = v1
	if changed, err := InstallPlugin(o); err != nil || !changed {
		t.Fatalf("install: changed %v err %v", changed, err)
	}
	if changed, err := InstallPlugin(o); err != nil || changed {
		t.Fatalf("reinstall of the same binary: changed %v err %v", changed, err)
	}
	st, err := os.Lstat(bin)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed binary %v %v", st, err)
	}
	if target, err := os.Readlink(filepath.Join(o.BinDir, "podroute-ipam")); err != nil || target != "podroute" {
		t.Fatalf("podroute-ipam -> %q (%v), want podroute", target, err)
	}
	if sha256.Sum256(mustRead(t, filepath.Join(o.BinDir, "podroute-ipam"))) != sum1 {
		t.Fatal("podroute-ipam does not resolve to the plugin")
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads, execs atomic.Int64
	errs := make(chan error, 2)
	wg.Add(2)
	go func() { // readers, like a runtime opening the plugin
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(bin)
			if err != nil {
				errs <- err
				return
			}
			if s := sha256.Sum256(b); s != sum1 && s != sum2 {
				errs <- errors.New("read a binary that is neither version")
				return
			}
			reads.Add(1)
		}
	}()
	go func() { // exec, like a runtime running the plugin
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			out, err := exec.Command(bin).Output()
			// A child forked while the installer held the temporary file open keeps a
			// writable descriptor of it until its own exec: that is ETXTBSY, not a partial file.
			if errors.Is(err, syscall.ETXTBSY) {
				continue
			}
			if err != nil {
				errs <- err
				return
			}
			if v := string(out); v != "v1\n" && v != "v2\n" {
				errs <- errors.New("exec of a partial binary printed " + v)
				return
			}
			execs.Add(1)
		}
	}()
	for i := range 40 {
		o.PluginSource = v1
		want := sum1
		if i%2 == 0 {
			o.PluginSource, want = v2, sum2
		}
		if changed, err := InstallPlugin(o); err != nil || !changed {
			t.Fatalf("install %d: changed %v err %v", i, changed, err)
		}
		if sha256.Sum256(mustRead(t, bin)) != want {
			t.Fatalf("install %d: wrong content", i)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d reads, %d execs during replacement", reads.Load(), execs.Load())
	if execs.Load() == 0 {
		t.Error("no exec completed during replacement")
	}
	assertOnly(t, o.BinDir, "podroute", "podroute-ipam")

	// A stale IPAM entry (a copy, not a link) is replaced by the link.
	ipam := filepath.Join(o.BinDir, "podroute-ipam")
	if err := os.Remove(ipam); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ipam, []byte("old"), 0o755); err != nil {
		t.Fatal(err)
	}
	if changed, err := InstallPlugin(o); err != nil || !changed {
		t.Fatalf("link repair: changed %v err %v", changed, err)
	}
	if target, _ := os.Readlink(ipam); target != "podroute" {
		t.Fatalf("podroute-ipam -> %q", target)
	}
}

func TestInstallPluginValidation(t *testing.T) {
	o := testOpts(t)
	if _, err := InstallPlugin(o); err == nil || !strings.Contains(err.Error(), "PluginSource is empty") {
		t.Errorf("empty source: %v", err)
	}
	o.PluginSource = "podroute"
	if _, err := InstallPlugin(o); err == nil || !strings.Contains(err.Error(), "not an absolute path") {
		t.Errorf("relative source: %v", err)
	}
	o.PluginSource = filepath.Join(t.TempDir(), "missing")
	if _, err := InstallPlugin(o); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing source: %v", err)
	}
	o.BinDir = "opt/cni/bin"
	if _, err := InstallPlugin(o); err == nil || !strings.Contains(err.Error(), "BinDir") {
		t.Errorf("relative bin dir: %v", err)
	}
}

func TestInstallPortmap(t *testing.T) {
	o := testOpts(t)
	src := t.TempDir()
	o.PluginSource, _ = script(t, src, "v1")
	pm, pmSum := script(t, src, "portmap1")
	pm2, pm2Sum := script(t, src, "portmap2")

	// Without a source, the node's own portmap is used: nothing is installed.
	if _, err := InstallPlugin(o); err != nil {
		t.Fatal(err)
	}
	assertOnly(t, o.BinDir, "podroute", "podroute-ipam")

	o.PortmapSource = pm
	if changed, err := InstallPlugin(o); err != nil || !changed {
		t.Fatalf("install: changed %v err %v", changed, err)
	}
	assertOnly(t, o.BinDir, "podroute", "podroute-ipam", "portmap")
	installed := filepath.Join(o.BinDir, "portmap")
	st, err := os.Lstat(installed)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed portmap %v %v", st, err)
	}
	if sha256.Sum256(mustRead(t, installed)) != pmSum {
		t.Fatal("installed portmap differs from its source")
	}
	if changed, err := InstallPlugin(o); err != nil || changed {
		t.Fatalf("reinstall of the same binaries: changed %v err %v", changed, err)
	}
	if p, ours, err := InstalledPortmap(o); p != installed || !ours || err != nil {
		t.Errorf("InstalledPortmap after install: %s %v %v, want %s, ours", p, ours, err, installed)
	}
	// A portmap that was there before (the distribution's, an older one) is replaced.
	o.PortmapSource = pm2
	if changed, err := InstallPlugin(o); err != nil || !changed {
		t.Fatalf("upgrade: changed %v err %v", changed, err)
	}
	if sha256.Sum256(mustRead(t, installed)) != pm2Sum {
		t.Fatal("portmap not replaced")
	}
	if out, err := exec.Command(installed).Output(); err != nil || string(out) != "portmap2\n" {
		t.Fatalf("installed portmap runs: %q %v", out, err)
	}
	other := o
	other.PortmapSource = pm
	if _, ours, err := InstalledPortmap(other); ours || err != nil {
		t.Errorf("InstalledPortmap of another portmap: ours %v err %v", ours, err)
	}
	other.PortmapSource = ""
	if _, ours, err := InstalledPortmap(other); ours || err != nil {
		t.Errorf("InstalledPortmap without a source: ours %v err %v", ours, err)
	}
	other.PortmapSource = filepath.Join(src, "missing")
	if _, ours, err := InstalledPortmap(other); ours || err == nil {
		t.Errorf("InstalledPortmap with an unreadable source: ours %v err %v, want an error", ours, err)
	}

	// Not chained, not installed (and what is there is left alone).
	o.NoPortmap, o.PortmapSource = true, pm
	if changed, err := InstallPlugin(o); err != nil || changed {
		t.Fatalf("NoPortmap: changed %v err %v", changed, err)
	}
	if sha256.Sum256(mustRead(t, installed)) != pm2Sum {
		t.Fatal("NoPortmap replaced portmap")
	}

	o.NoPortmap = false
	o.PortmapSource = "portmap"
	if _, err := InstallPlugin(o); err == nil || !strings.Contains(err.Error(), `PortmapSource "portmap" is not an absolute path`) {
		t.Errorf("relative portmap source: %v", err)
	}
	o.PortmapSource = filepath.Join(src, "missing")
	if _, err := InstallPlugin(o); err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "portmap") {
		t.Errorf("missing portmap source: %v", err)
	}
}

func TestRemove(t *testing.T) {
	o := testOpts(t)
	o.PluginSource, _ = script(t, t.TempDir(), "v1")
	o.PortmapSource, _ = script(t, t.TempDir(), "portmap")
	if _, err := InstallPlugin(o); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Write(o, NodeNetwork{PodCIDRs: prefixes("10.244.1.0/24"), MTU: 1500}); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(o.BinDir, "loopback")
	if err := os.WriteFile(other, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Remove(o); err != nil {
		t.Fatal(err)
	}
	assertOnly(t, o.ConfDir)
	// portmap is shared with the runtime's packages and other network plugins: it stays.
	assertOnly(t, o.BinDir, "loopback", "portmap")
	if err := Remove(o); err != nil {
		t.Fatalf("second remove: %v", err)
	}
}
