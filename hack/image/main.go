// Command image builds podroute's container image offline, from the project's own static
// binaries and no base image, as a docker-archive tar (the format `docker save` writes and
// `docker load`, `ctr -n k8s.io images import` and `podman load` read).
//
//	go run ./hack/image -bin bin -version v0.1.0 -o build/podroute-image.tar
//
// The image holds one layer:
//
//	/usr/local/bin/podroute-agent       the node agent (the entrypoint)
//	/usr/local/bin/podroutectl          the operator's CLI (kubectl exec ... podroutectl status)
//	/opt/podroute/bin/podroute          the CNI plugin the agent installs into /opt/cni/bin
//	/opt/podroute/bin/podroute-ipam     -> podroute
//	/usr/sbin/nft + its shared libraries and loader, copied from the build machine's nftables
//	                                    package: the agent's egress masquerade runs nft
//	/usr/share/doc/<package>/copyright  of each package those files come from, when known
//
// The build is reproducible: entries sorted, owner 0:0, a fixed modification time
// ($SOURCE_DATE_EPOCH, default 0), so the same inputs give the same bytes and digests.
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

const (
	// Repository is the image's name; the tag is the version.
	Repository = "podroute/podroute"
	// PluginDir is where the image carries the CNI plugin (the agent's --cni-plugin).
	PluginDir = "/opt/podroute/bin"
	// Entrypoint is the node agent.
	Entrypoint = "/usr/local/bin/podroute-agent"
	// Path is the image's PATH; knftables looks nft up on it.
	Path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	bin := fs.String("bin", "bin", "directory holding podroute, podroute-agent and podroutectl (make build)")
	version := fs.String("version", "dev", "image tag")
	out := fs.String("o", "build/podroute-image.tar", "output docker-archive tar")
	nft := fs.String("nft", "/usr/sbin/nft", "the nft binary to carry, with the libraries ldd lists (empty: none; the agent then needs --masquerade=false)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	epoch, err := sourceDateEpoch()
	if err != nil {
		return err
	}
	spec := Spec{
		Tag: Repository + ":" + *version, Version: *version, Created: epoch,
		Files: []File{
			{Path: "/usr/local/bin/podroute-agent", Source: filepath.Join(*bin, "podroute-agent"), Mode: 0o755},
			{Path: "/usr/local/bin/podroutectl", Source: filepath.Join(*bin, "podroutectl"), Mode: 0o755},
			{Path: PluginDir + "/podroute", Source: filepath.Join(*bin, "podroute"), Mode: 0o755},
			{Path: PluginDir + "/podroute-ipam", Link: "podroute"},
		},
	}
	if *nft != "" {
		files, err := NativeFiles(*nft)
		if err != nil {
			return err
		}
		spec.Files = append(spec.Files, files...)
	}
	img, err := Build(spec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(*out, img.Archive, 0o644); err != nil {
		return err
	}
	fmt.Printf("%s\t%s\n\tconfig %s\n\tlayer  %s (%d bytes)\n", *out, spec.Tag, img.ConfigDigest, img.LayerDigest, img.LayerSize)
	return nil
}

func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
	}
	return time.Unix(n, 0).UTC(), nil
}

// File is one entry of the layer: a copy of Source, or a symlink to Link.
type File struct {
	Path   string // absolute path in the image
	Source string // file on the build machine (symlinks followed)
	Link   string // symlink target, instead of Source
	Mode   int64  // permission bits of a file
}

// Spec is what goes into the image.
type Spec struct {
	Tag     string // repository:tag, e.g. podroute/podroute:v0.1.0
	Version string
	Created time.Time
	Files   []File
}

// Image is a built archive and its digests.
type Image struct {
	Archive      []byte
	Config       []byte
	ConfigDigest string // sha256:...
	LayerDigest  string // sha256:... of the uncompressed layer tar, also its diff_id
	LayerSize    int
}

// Manifest is one entry of a docker-archive's manifest.json.
type Manifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// Config is the part of the image configuration podroute sets.
type Config struct {
	Architecture string       `json:"architecture"`
	OS           string       `json:"os"`
	Created      string       `json:"created"`
	Config       RunConfig    `json:"config"`
	RootFS       RootFS       `json:"rootfs"`
	History      []HistoryRow `json:"history"`
}

type RunConfig struct {
	Entrypoint []string          `json:"Entrypoint"`
	Env        []string          `json:"Env"`
	Labels     map[string]string `json:"Labels,omitempty"`
}

type RootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type HistoryRow struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

// NativeFiles returns a dynamically linked executable and what it needs to run: the shared
// libraries and the loader ldd lists, each at the path ldd names, and the copyright file of
// each Debian package they come from (when dpkg knows it).
func NativeFiles(exe string) ([]File, error) {
	out, err := exec.Command("ldd", exe).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w (is it installed? apt-get install nftables)", exe, err)
	}
	files := []File{{Path: exe, Source: exe, Mode: 0o755}}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0] // the loader
		default:
			continue // linux-vdso, or "statically linked"
		}
		mode := int64(0o644)
		if strings.Contains(path.Base(lib), "ld-linux") {
			mode = 0o755
		}
		files = append(files, File{Path: path.Clean(lib), Source: lib, Mode: mode})
	}
	seen := map[string]bool{}
	for _, f := range slicesClone(files) {
		pkg := debianPackage(f.Source)
		if pkg == "" || seen[pkg] {
			continue
		}
		seen[pkg] = true
		c := "/usr/share/doc/" + pkg + "/copyright"
		if _, err := os.Stat(c); err == nil {
			files = append(files, File{Path: c, Source: c, Mode: 0o644})
		}
	}
	return files, nil
}

func slicesClone(f []File) []File { return append([]File(nil), f...) }

// debianPackage is the package owning p ("" if unknown), without its architecture.
func debianPackage(p string) string {
	cands := []string{p, "/usr" + p}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		cands = append(cands, r)
	}
	for _, c := range cands {
		out, err := exec.Command("dpkg-query", "-S", c).Output()
		if err != nil {
			continue
		}
		pkg, _, ok := strings.Cut(strings.TrimSpace(string(out)), ":")
		if ok && !strings.ContainsAny(pkg, ", ") {
			return pkg
		}
	}
	return ""
}

// Build makes the layer, the configuration and the archive.
func Build(s Spec) (*Image, error) {
	layer, err := Layer(s.Files, s.Created)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(layer)
	layerHex := hex.EncodeToString(sum[:])
	created := s.Created.UTC().Format(time.RFC3339)
	cfg := Config{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Created:      created,
		Config: RunConfig{
			Entrypoint: []string{Entrypoint},
			Env:        []string{"PATH=" + Path},
			Labels: map[string]string{
				"org.opencontainers.image.title":   "podroute",
				"org.opencontainers.image.version": s.Version,
				"org.opencontainers.image.source":  "https://github.com/podroute/podroute",
			},
		},
		RootFS:  RootFS{Type: "layers", DiffIDs: []string{"sha256:" + layerHex}},
		History: []HistoryRow{{Created: created, CreatedBy: "hack/image: podroute binaries and nft"}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	csum := sha256.Sum256(cfgJSON)
	cfgHex := hex.EncodeToString(csum[:])
	man, err := json.Marshal([]Manifest{{
		Config:   cfgHex + ".json",
		RepoTags: []string{s.Tag},
		Layers:   []string{layerHex + "/layer.tar"},
	}})
	if err != nil {
		return nil, err
	}
	repos, err := json.Marshal(map[string]map[string]string{
		strings.SplitN(s.Tag, ":", 2)[0]: {tagOf(s.Tag): layerHex},
	})
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, typ byte, data []byte) error {
		h := &tar.Header{Name: name, Typeflag: typ, Mode: 0o644, ModTime: s.Created, Format: tar.FormatUSTAR}
		if typ == tar.TypeDir {
			h.Mode = 0o755
		} else {
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, e := range []struct {
		name string
		typ  byte
		data []byte
	}{
		{cfgHex + ".json", tar.TypeReg, cfgJSON},
		{layerHex + "/", tar.TypeDir, nil},
		{layerHex + "/VERSION", tar.TypeReg, []byte("1.0")},
		{layerHex + "/layer.tar", tar.TypeReg, layer},
		{"manifest.json", tar.TypeReg, man},
		{"repositories", tar.TypeReg, repos},
	} {
		if err := add(e.name, e.typ, e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return &Image{
		Archive: buf.Bytes(), Config: cfgJSON,
		ConfigDigest: "sha256:" + cfgHex, LayerDigest: "sha256:" + layerHex, LayerSize: len(layer),
	}, nil
}

func tagOf(ref string) string {
	if _, t, ok := strings.Cut(ref, ":"); ok {
		return t
	}
	return "latest"
}

// Layer writes the files, and every directory above them, into an uncompressed tar: sorted,
// owned by 0:0, all with modification time mtime.
func Layer(files []File, mtime time.Time) ([]byte, error) {
	type entry struct {
		hdr  *tar.Header
		data []byte
	}
	entries := map[string]entry{}
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
			return nil, fmt.Errorf("image path %q is not clean and absolute", f.Path)
		}
		name := strings.TrimPrefix(f.Path, "/")
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			entries[d+"/"] = entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}}
		}
		if _, dup := entries[name]; dup {
			return nil, fmt.Errorf("image path %s given twice", f.Path)
		}
		if f.Link != "" {
			entries[name] = entry{hdr: &tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: f.Link, Mode: 0o777}}
			continue
		}
		data, err := os.ReadFile(f.Source) // follows symlinks: the image gets the content
		if err != nil {
			return nil, err
		}
		entries[name] = entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: f.Mode, Size: int64(len(data))}, data: data}
	}
	// /tmp for tools that want one; the agent itself writes nothing to its root file system.
	entries["tmp/"] = entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		h := e.hdr
		h.ModTime, h.Uid, h.Gid, h.Uname, h.Gname = mtime, 0, 0, "", ""
		h.Format = tar.FormatUSTAR
		if len(h.Name) > 100 {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("%s: %w", n, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
