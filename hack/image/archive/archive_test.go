package archive

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

type entry struct {
	hdr  *tar.Header
	data []byte
}

func readTar(t *testing.T, data []byte) ([]string, map[string]entry) {
	t.Helper()
	var names []string
	entries := map[string]entry{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names, entries
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		entries[h.Name] = entry{h, b}
	}
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestNewLayer(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, []byte("from disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(1700000000, 0)
	files := []File{
		{Path: "/usr/bin/tool", Source: src, Mode: 0o755, Xattrs: map[string]string{"security.capability": FileCapability(10)}},
		{Path: "/etc/motd", Data: []byte("hello\n")},
		{Path: "/usr/bin/alias", Link: "tool"},
		{Path: "/tmp", Dir: true, Mode: 0o1777},
		{Path: "/home/user", Dir: true, UID: 1000, GID: 50000, Mode: 0o700},
		// Neither fits USTAR: the entries go out as PAX.
		{Path: "/etc/ssl/certs/988a38cb.0", Link: "NetLock_Arany_=Class_Gold=_Főtanúsítvány.pem"},
		{Path: "/usr/share/" + strings.Repeat("long-directory-name/", 6) + "file", Data: []byte("x")},
	}
	l, err := NewLayer(files, mtime)
	if err != nil {
		t.Fatal(err)
	}
	data, err := l.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if l.DiffID != "sha256:"+digest(data) || l.Size != int64(len(data)) {
		t.Errorf("layer %s %d bytes, content %s %d", l.DiffID, l.Size, digest(data), len(data))
	}
	names, e := readTar(t, data)
	long := "usr/share/" + strings.Repeat("long-directory-name/", 6)
	want := []string{"etc/", "etc/motd", "etc/ssl/", "etc/ssl/certs/", "etc/ssl/certs/988a38cb.0", "home/", "home/user/", "tmp/", "usr/", "usr/bin/", "usr/bin/alias", "usr/bin/tool", "usr/share/"}
	for d := "usr/share/"; len(d) < len(long); {
		d += "long-directory-name/"
		want = append(want, d)
	}
	want = append(want, long+"file")
	if !slices.Equal(names, want) {
		t.Fatalf("entries %v, want %v", names, want)
	}
	if got := e["etc/ssl/certs/988a38cb.0"].hdr.Linkname; got != "NetLock_Arany_=Class_Gold=_Főtanúsítvány.pem" {
		t.Errorf("non-ASCII link target read back as %q", got)
	}
	for _, n := range names {
		if h := e[n].hdr; !h.ModTime.Equal(mtime) || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: mtime %v owner names %q %q", n, h.ModTime, h.Uname, h.Gname)
		}
	}
	check := func(name string, typ byte, mode int64, uid, gid int) {
		t.Helper()
		h := e[name].hdr
		if h.Typeflag != typ || h.Mode != mode || h.Uid != uid || h.Gid != gid {
			t.Errorf("%s: type %c mode %o owner %d:%d, want %c %o %d:%d", name, h.Typeflag, h.Mode, h.Uid, h.Gid, typ, mode, uid, gid)
		}
	}
	check("usr/bin/tool", tar.TypeReg, 0o755, 0, 0)
	check("etc/motd", tar.TypeReg, 0o644, 0, 0)
	check("usr/bin/alias", tar.TypeSymlink, 0o777, 0, 0)
	check("tmp/", tar.TypeDir, 0o1777, 0, 0)
	check("home/user/", tar.TypeDir, 0o700, 1000, 50000)
	check("usr/", tar.TypeDir, 0o755, 0, 0)
	if string(e["usr/bin/tool"].data) != "from disk" || string(e["etc/motd"].data) != "hello\n" {
		t.Errorf("contents %q %q", e["usr/bin/tool"].data, e["etc/motd"].data)
	}
	if got := e["usr/bin/tool"].hdr.PAXRecords["SCHILY.xattr.security.capability"]; got != FileCapability(10) {
		t.Errorf("capability attribute %x", got)
	}
	if e["usr/bin/alias"].hdr.Linkname != "tool" {
		t.Errorf("symlink to %q", e["usr/bin/alias"].hdr.Linkname)
	}

	again, err := NewLayer(files, mtime)
	if err != nil {
		t.Fatal(err)
	}
	if again.DiffID != l.DiffID {
		t.Errorf("same files, two digests: %s %s", l.DiffID, again.DiffID)
	}

	for _, bad := range [][]File{
		{{Path: "relative", Data: nil}},
		{{Path: "/a/../b", Data: nil}},
		{{Path: "/a", Data: nil}, {Path: "/a", Data: nil}},
		{{Path: "/a", Data: nil}, {Path: "/a/b", Data: nil}},
	} {
		if _, err := NewLayer(bad, mtime); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

func TestFileCapability(t *testing.T) {
	// What `setcap cap_net_bind_service=+ep` writes (getfattr -n security.capability -e hex).
	if got := hex.EncodeToString([]byte(FileCapability(10))); got != "0100000200040000000000000000000000000000" {
		t.Errorf("cap_net_bind_service=+ep: %s", got)
	}
}

func TestWriteSharesLayers(t *testing.T) {
	mtime := time.Unix(0, 0)
	base, err := NewLayer([]File{{Path: "/bin/sh", Data: []byte("shell")}}, mtime)
	if err != nil {
		t.Fatal(err)
	}
	top, err := NewLayer([]File{{Path: "/app", Data: []byte("app"), Mode: 0o755}}, mtime)
	if err != nil {
		t.Fatal(err)
	}
	images := []Image{
		{Tags: []string{"example.test/base:1", "example.test/base:latest"}, Layers: []*Layer{base}, Created: mtime,
			Config: RunConfig{Cmd: []string{"sh"}}},
		{Tags: []string{"registry.example.test:5000/ns/app:2.0"}, Layers: []*Layer{base, top}, Created: mtime,
			Config: RunConfig{Entrypoint: []string{"/app"}, User: "65532:65532", ExposedPorts: map[string]struct{}{"53/udp": {}}}},
	}
	var a, b bytes.Buffer
	if err := Write(&a, images...); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, images...); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two writes of the same images differ")
	}
	names, e := readTar(t, a.Bytes())
	var man []Manifest
	if err := json.Unmarshal(e["manifest.json"].data, &man); err != nil {
		t.Fatal(err)
	}
	if len(man) != 2 {
		t.Fatalf("manifest %+v", man)
	}
	for i, m := range man {
		if !slices.Equal(m.RepoTags, images[i].Tags) {
			t.Errorf("image %d tags %v", i, m.RepoTags)
		}
		cfgData := e[m.Config].data
		if m.Config != digest(cfgData)+".json" {
			t.Errorf("config %s has digest %s", m.Config, digest(cfgData))
		}
		var cfg Config
		if err := json.Unmarshal(cfgData, &cfg); err != nil {
			t.Fatal(err)
		}
		if len(cfg.RootFS.DiffIDs) != len(m.Layers) || len(cfg.History) != len(m.Layers) {
			t.Fatalf("image %d: %d diff_ids, %d history rows, %d layers", i, len(cfg.RootFS.DiffIDs), len(cfg.History), len(m.Layers))
		}
		for j, l := range m.Layers {
			if got := "sha256:" + digest(e[l].data); got != cfg.RootFS.DiffIDs[j] {
				t.Errorf("image %d layer %s has digest %s, config says %s", i, l, got, cfg.RootFS.DiffIDs[j])
			}
		}
		_, id, err := images[i].ConfigJSON()
		if err != nil || id != "sha256:"+digest(cfgData) {
			t.Errorf("ConfigJSON id %s, %v", id, err)
		}
	}
	var layers int
	for _, n := range names {
		if filepath.Base(n) == "layer.tar" {
			layers++
		}
	}
	if layers != 2 {
		t.Errorf("%d layer files, want 2 (the shared one once): %v", layers, names)
	}
	var repos map[string]map[string]string
	if err := json.Unmarshal(e["repositories"].data, &repos); err != nil {
		t.Fatal(err)
	}
	if repos["registry.example.test:5000/ns/app"]["2.0"] != top.Hex() || repos["example.test/base"]["latest"] != base.Hex() {
		t.Errorf("repositories %v", repos)
	}
}

func TestSplitTag(t *testing.T) {
	for ref, want := range map[string][2]string{
		"registry.k8s.io/pause:3.10":         {"registry.k8s.io/pause", "3.10"},
		"localhost:5000/x":                   {"localhost:5000/x", "latest"},
		"registry.k8s.io/coredns/coredns:v1": {"registry.k8s.io/coredns/coredns", "v1"},
	} {
		if r, tag := SplitTag(ref); r != want[0] || tag != want[1] {
			t.Errorf("%s: %s %s", ref, r, tag)
		}
	}
}

func TestTreeLayer(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "var/cache/apt"), 0o755))
	must(os.Mkdir(filepath.Join(root, "tmp"), 0o755))
	must(os.Chmod(filepath.Join(root, "tmp"), 0o777|fs.ModeSticky))
	must(os.WriteFile(filepath.Join(root, "usr/bin/a"), []byte("program"), 0o755))
	must(os.Link(filepath.Join(root, "usr/bin/a"), filepath.Join(root, "usr/bin/b")))
	must(os.Symlink("usr/bin", filepath.Join(root, "bin")))
	must(os.WriteFile(filepath.Join(root, "usr/bin/su"), []byte("su"), 0o755))
	must(os.Chmod(filepath.Join(root, "usr/bin/su"), 0o755|fs.ModeSetuid))
	must(os.WriteFile(filepath.Join(root, "var/cache/apt/pkgcache.bin"), []byte("cache"), 0o644))
	must(syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644))
	if os.Geteuid() == 0 {
		must(os.Chown(filepath.Join(root, "var/cache"), 0, 8))
	}

	mtime := time.Unix(42, 0)
	dst := filepath.Join(t.TempDir(), "layer.tar")
	l, err := TreeLayer(dst, root, mtime, func(rel string, d fs.DirEntry) bool { return rel == "var/cache/apt" })
	must(err)
	data, err := os.ReadFile(dst)
	must(err)
	if l.DiffID != "sha256:"+digest(data) || l.Size != int64(len(data)) {
		t.Fatalf("layer %s %d, file %s %d", l.DiffID, l.Size, digest(data), len(data))
	}
	if again, err := LayerFile(dst); err != nil || again.DiffID != l.DiffID {
		t.Errorf("LayerFile: %v %v", again, err)
	}
	names, e := readTar(t, data)
	want := []string{"bin", "tmp/", "usr/", "usr/bin/", "usr/bin/a", "usr/bin/b", "usr/bin/su", "var/", "var/cache/"}
	if !slices.Equal(names, want) {
		t.Fatalf("entries %v, want %v", names, want)
	}
	if h := e["usr/bin/b"].hdr; h.Typeflag != tar.TypeLink || h.Linkname != "usr/bin/a" {
		t.Errorf("hard link: %c -> %s", h.Typeflag, h.Linkname)
	}
	if h := e["bin"].hdr; h.Typeflag != tar.TypeSymlink || h.Linkname != "usr/bin" {
		t.Errorf("symlink: %c -> %s", h.Typeflag, h.Linkname)
	}
	if h := e["usr/bin/su"].hdr; h.Mode != 0o4755 {
		t.Errorf("setuid file mode %o", h.Mode)
	}
	if h := e["tmp/"].hdr; h.Mode != 0o1777 {
		t.Errorf("sticky dir mode %o", h.Mode)
	}
	if os.Geteuid() == 0 {
		if h := e["var/cache/"].hdr; h.Gid != 8 {
			t.Errorf("var/cache group %d", h.Gid)
		}
	}
	for _, n := range names {
		if !e[n].hdr.ModTime.Equal(mtime) {
			t.Errorf("%s: mtime %v", n, e[n].hdr.ModTime)
		}
	}
	if string(e["usr/bin/a"].data) != "program" {
		t.Errorf("content %q", e["usr/bin/a"].data)
	}
}
