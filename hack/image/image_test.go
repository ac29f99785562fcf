package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildBinaries builds podroute's four binaries the way make build does.
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range []struct{ out, pkg string }{
		{"podroute", "../../cmd/podroute"},
		{"podroute-agent", "../../cmd/podroute-agent"},
		{"podroutectl", "../../cmd/podroutectl"},
		{"podroute-lbipam", "../../cmd/podroute-lbipam"},
	} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	return dir
}

// refPortmap is the reference portmap plugin hack/install-ref-cni.sh builds.
func refPortmap(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "build", "ref-cni", "portmap"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%v: run hack/install-ref-cni.sh", err)
	}
	return p
}

func readTar(t *testing.T, data []byte) (names []string, hdrs map[string]*tar.Header, files map[string][]byte) {
	t.Helper()
	hdrs, files = map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names, hdrs, files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		hdrs[h.Name], files[h.Name] = h, b
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestImage(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft (Debian package nftables) to carry into the image")
	}
	bin := buildBinaries(t)
	portmap := refPortmap(t)
	out := t.TempDir()
	a, b := filepath.Join(out, "a.tar"), filepath.Join(out, "b.tar")
	for _, o := range []string{a, b} {
		if err := run([]string{"-bin", bin, "-lbipam", filepath.Join(bin, "podroute-lbipam"), "-portmap", portmap, "-version", "v0.0.0-test", "-o", o}); err != nil {
			t.Fatal(err)
		}
	}
	archive, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(b); !bytes.Equal(archive, again) {
		t.Fatal("two builds from the same inputs differ")
	}

	// The archive: manifest.json -> config (named by its digest) -> diff_ids -> the layer.
	_, _, files := readTar(t, archive)
	var man []Manifest
	if err := json.Unmarshal(files["manifest.json"], &man); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(man) != 1 || !slices.Equal(man[0].RepoTags, []string{"podroute/podroute:v0.0.0-test"}) || len(man[0].Layers) != 1 {
		t.Fatalf("manifest %+v", man)
	}
	cfgBytes, ok := files[man[0].Config]
	if !ok {
		t.Fatalf("config %s not in the archive", man[0].Config)
	}
	if want := sha(cfgBytes) + ".json"; man[0].Config != want {
		t.Errorf("config file %s, its digest names it %s", man[0].Config, want)
	}
	var cfg Config
	if err := json.Unmarshal(cfgBytes, &cfg); err != nil {
		t.Fatal(err)
	}
	layer, ok := files[man[0].Layers[0]]
	if !ok {
		t.Fatalf("layer %s not in the archive", man[0].Layers[0])
	}
	diffID := "sha256:" + sha(layer)
	if !slices.Equal(cfg.RootFS.DiffIDs, []string{diffID}) || cfg.RootFS.Type != "layers" {
		t.Errorf("rootfs %+v, layer's digest %s", cfg.RootFS, diffID)
	}
	if man[0].Layers[0] != sha(layer)+"/layer.tar" {
		t.Errorf("layer path %s", man[0].Layers[0])
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/usr/local/bin/podroute-agent"}) ||
		!slices.Contains(cfg.Config.Env, "PATH="+Path) || cfg.OS != "linux" || cfg.Architecture == "" {
		t.Errorf("config %+v", cfg)
	}
	t.Logf("image podroute/podroute:v0.0.0-test config sha256:%s layer %s (%d bytes)", sha(cfgBytes), diffID, len(layer))

	// The layer: sorted, owned by root, fixed time, the files podroute needs.
	names, hdrs, content := readTar(t, layer)
	if !slices.IsSorted(names) {
		t.Errorf("layer entries not sorted: %v", names)
	}
	for _, n := range names {
		h := hdrs[n]
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: uid %d gid %d mtime %v", n, h.Uid, h.Gid, h.ModTime)
		}
	}
	for name, want := range map[string]struct {
		typ  byte
		mode int64
		src  string
	}{
		"usr/local/bin/podroute-agent":   {tar.TypeReg, 0o755, filepath.Join(bin, "podroute-agent")},
		"usr/local/bin/podroutectl":      {tar.TypeReg, 0o755, filepath.Join(bin, "podroutectl")},
		"usr/local/bin/podroute-lbipam":  {tar.TypeReg, 0o755, filepath.Join(bin, "podroute-lbipam")},
		"opt/podroute/bin/podroute":      {tar.TypeReg, 0o755, filepath.Join(bin, "podroute")},
		"opt/podroute/bin/podroute-ipam": {tar.TypeSymlink, 0o777, ""},
		"opt/podroute/bin/portmap":       {tar.TypeReg, 0o755, portmap},
		"usr/sbin/nft":                   {tar.TypeReg, 0o755, "/usr/sbin/nft"},
		"lib64/ld-linux-x86-64.so.2":     {tar.TypeReg, 0o755, ""},
		"opt/podroute/bin/":              {tar.TypeDir, 0o755, ""},
	} {
		h, ok := hdrs[name]
		if !ok {
			t.Errorf("%s missing from the layer", name)
			continue
		}
		if h.Typeflag != want.typ || h.Mode != want.mode {
			t.Errorf("%s: type %c mode %o, want %c %o", name, h.Typeflag, h.Mode, want.typ, want.mode)
		}
		if want.src != "" {
			if src, _ := os.ReadFile(want.src); !bytes.Equal(src, content[name]) {
				t.Errorf("%s differs from %s", name, want.src)
			}
		}
	}
	if h := hdrs["opt/podroute/bin/podroute-ipam"]; h != nil && h.Linkname != "podroute" {
		t.Errorf("podroute-ipam links to %q", h.Linkname)
	}
	if !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, "lib/") && strings.Contains(n, "libnftables.so") }) {
		t.Errorf("libnftables not carried: %v", names)
	}

	t.Run("RunsInChroot", func(t *testing.T) { testChroot(t, layer) })
	t.Run("ContainerdImport", func(t *testing.T) { testContainerd(t, a) })
}

// testChroot unpacks the layer and runs the agent and nft from it with nothing of the
// build machine's file system around: the libraries nft needs are all in the image.
func testChroot(t *testing.T, layer []byte) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for chroot")
	}
	root := t.TempDir()
	cmd := exec.Command("tar", "-x", "-C", root)
	cmd.Stdin = bytes.NewReader(layer)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("unpack: %v\n%s", err, out)
	}
	inRoot := func(stdin string, args ...string) string {
		t.Helper()
		c := exec.Command(args[0], args[1:]...)
		c.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		c.Dir = "/"
		c.Env = []string{"PATH=" + Path}
		c.Stdin = strings.NewReader(stdin)
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("%v in the image: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := inRoot("", "/usr/sbin/nft", "--version"); !strings.HasPrefix(out, "nftables v1.") {
		t.Errorf("nft --version: %q", out)
	}
	// What knftables runs: a checked transaction read from stdin, and a JSON listing.
	inRoot("add table inet podroute-image-test\n", "/usr/sbin/nft", "--check", "-f", "-")
	inRoot("", "/usr/sbin/nft", "--json", "list", "tables", "inet")
	if out := inRoot("", "/usr/local/bin/podroute-agent", "--help"); !strings.Contains(out, "-uninstall") {
		t.Errorf("podroute-agent --help: %q", out)
	}
	if out := inRoot("", "/usr/local/bin/podroute-lbipam", "--help"); !strings.Contains(out, "--lease-namespace") {
		t.Errorf("podroute-lbipam --help: %q", out)
	}
	if out := inRoot("", "/opt/podroute/bin/podroute-ipam"); !strings.Contains(strings.ToLower(out), "podroute") {
		t.Errorf("podroute-ipam without CNI_COMMAND: %q", out)
	}
	// portmap answers VERSION with the CNI versions it speaks, 1.0.0 (the conflist's) among them.
	c := exec.Command("/opt/podroute/bin/portmap")
	c.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	c.Dir = "/"
	c.Env = []string{"CNI_COMMAND=VERSION"}
	c.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
	if out, err := c.Output(); err != nil || !strings.Contains(string(out), `"1.0.0"`) {
		t.Errorf("portmap VERSION in the image: %q %v", out, err)
	}
}

// TestPortmapMustBeStatic: the image refuses a portmap that would need the node's C library,
// and one that is missing, naming the flag.
func TestPortmapMustBeStatic(t *testing.T) {
	if err := RequireStatic(refPortmap(t)); err != nil {
		t.Errorf("the reference portmap: %v", err)
	}
	dynamic := "/bin/sh" // every Debian system's, dynamically linked
	if err := RequireStatic(dynamic); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("%s: %v, want it refused as dynamically linked", dynamic, err)
	}
	script := filepath.Join(t.TempDir(), "portmap")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := RequireStatic(script); err == nil {
		t.Errorf("a shell script accepted as a static executable")
	}
	dir := t.TempDir()
	for _, tc := range []struct{ portmap, want string }{
		{dynamic, "-portmap: /bin/sh is dynamically linked"},
		{filepath.Join(dir, "missing"), "-portmap: " + filepath.Join(dir, "missing")},
	} {
		err := run([]string{"-bin", dir, "-nft", "", "-portmap", tc.portmap, "-o", filepath.Join(dir, "x.tar")})
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("-portmap %s: %v, want an error starting %q", tc.portmap, err, tc.want)
		}
	}
}

// TestLBIPAMRequired: the image is not built without the allocator unless told so (-lbipam
// empty), and the error names the flag.
func TestLBIPAMRequired(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "podroute-lbipam")
	err := run([]string{"-bin", dir, "-nft", "", "-portmap", "", "-lbipam", missing, "-o", filepath.Join(dir, "x.tar")})
	if err == nil || !strings.HasPrefix(err.Error(), "-lbipam: ") || !strings.Contains(err.Error(), missing) {
		t.Errorf("-lbipam %s: %v, want an error naming the flag and the file", missing, err)
	}
}

// testContainerd imports the archive into a containerd of its own and runs nft from it.
func testContainerd(t *testing.T, archive string) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for containerd")
	}
	for _, b := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("needs %s (Debian package containerd)", b)
		}
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "containerd.sock")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
[metrics]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc")
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	d := exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	d.Stdout, d.Stderr = logf, logf
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = d.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = d.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = d.Process.Kill()
			<-done
		}
		_ = logf.Close()
		// Snapshots are mounted while containers run; none is left, but be sure.
		_ = exec.Command("umount", "-R", filepath.Join(dir, "state")).Run()
	})
	ctr := func(args ...string) (string, error) {
		out, err := exec.Command("ctr", append([]string{"--address", sock, "-n", "k8s.io"}, args...)...).CombinedOutput()
		return string(out), err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := ctr("version"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			t.Fatalf("containerd did not start:\n%s", log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, err := ctr("images", "import", archive); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	ref := "docker.io/podroute/podroute:v0.0.0-test"
	if out, err := ctr("images", "ls", "-q"); err != nil || !strings.Contains(out, ref) {
		t.Fatalf("images after import: %v\n%s", err, out)
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Log("runc not installed: imported, not run")
		return
	}
	out, err := ctr("run", "--rm", "--net-host", ref, "podroute-image-test", "/usr/sbin/nft", "--version")
	if err != nil || !strings.HasPrefix(out, "nftables v1.") {
		t.Fatalf("nft in a container of the image: %v\n%s", err, out)
	}
}
