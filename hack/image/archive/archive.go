// Package archive writes container images as docker-archive tars: the format `docker save`
// writes and `docker load`, `ctr -n k8s.io images import` and `podman load` read. Nothing is
// pulled: an image is built offline from layers made of files of the build machine, of bytes,
// or of a whole root file system tree (NewLayer, TreeLayer).
//
// The output is reproducible: a layer's entries are sorted (or walked in lexical order), owned
// by 0:0 unless a File says otherwise, and all carry one modification time, so the same inputs
// give the same bytes, digests and image IDs.
//
// An archive holds one or more images; a layer several of them share is stored once:
//
//	<config sha256>.json     each image's configuration, named by its digest (the image ID)
//	<diff_id hex>/layer.tar  each layer, uncompressed, named by its digest (its diff_id)
//	<diff_id hex>/VERSION    "1.0"
//	manifest.json            [{Config, RepoTags, Layers}] per image
//	repositories             repository -> tag -> top layer, for older readers
package archive

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// File is one entry of a layer: a regular file (its content from Source or Data), a symlink
// (Link) or a directory (Dir). Directories above every entry are added (0755, 0:0) unless
// given.
type File struct {
	Path   string // absolute, clean path in the image
	Source string // file on the build machine whose content the entry gets (symlinks followed)
	Data   []byte // the content, instead of Source
	Link   string // symlink target, instead of content
	Dir    bool   // a directory
	// Mode is the permission bits, with the setuid (04000), setgid (02000) and sticky (01000)
	// bits; 0 means 0644 for a file, 0755 for a directory, 0777 for a symlink.
	Mode     int64
	UID, GID int
	// Xattrs are extended attributes the runtime sets when it unpacks the layer, e.g.
	// "security.capability" (see FileCapability).
	Xattrs map[string]string
}

// Layer is an uncompressed layer tar, held in memory or in a file.
type Layer struct {
	DiffID string // sha256:<hex> of the tar, the image configuration's diff_id
	Size   int64
	data   []byte
	path   string
}

// Hex is the layer digest without its "sha256:".
func (l *Layer) Hex() string { return strings.TrimPrefix(l.DiffID, "sha256:") }

// Open returns the layer's tar.
func (l *Layer) Open() (io.ReadCloser, error) {
	if l.path == "" {
		return io.NopCloser(bytes.NewReader(l.data)), nil
	}
	return os.Open(l.path)
}

// Bytes returns the layer's tar (read from its file if it has one).
func (l *Layer) Bytes() ([]byte, error) {
	if l.path == "" {
		return l.data, nil
	}
	return os.ReadFile(l.path)
}

// NewLayer builds a layer in memory from files: entries sorted by path, every directory
// above them added, owner 0:0 unless given, modification time mtime.
func NewLayer(files []File, mtime time.Time) (*Layer, error) {
	var buf bytes.Buffer
	h := sha256.New()
	if err := writeFiles(io.MultiWriter(&buf, h), files, mtime); err != nil {
		return nil, err
	}
	return &Layer{DiffID: "sha256:" + hex.EncodeToString(h.Sum(nil)), Size: int64(buf.Len()), data: buf.Bytes()}, nil
}

// LayerFile is a layer tar already on disk (one TreeLayer wrote, say); its digest is
// computed by reading it.
func LayerFile(path string) (*Layer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, err
	}
	return &Layer{DiffID: "sha256:" + hex.EncodeToString(h.Sum(nil)), Size: n, path: path}, nil
}

func writeFiles(w io.Writer, files []File, mtime time.Time) error {
	type entry struct {
		hdr  *tar.Header
		f    File
		file bool
	}
	entries := map[string]entry{}
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return fmt.Errorf("image path %q is not clean and absolute", f.Path)
		}
		name := strings.TrimPrefix(f.Path, "/")
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if _, clash := entries[d]; clash {
				return fmt.Errorf("image path /%s is a file and a directory", d)
			}
			if _, ok := entries[d+"/"]; !ok {
				entries[d+"/"] = entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}}
			}
		}
		if f.Dir {
			name += "/"
		}
		if e, dup := entries[name]; dup && !(f.Dir && e.f.Path == "") {
			return fmt.Errorf("image path %s given twice", f.Path)
		}
		if _, dup := entries[strings.TrimSuffix(name, "/")+"/"]; dup && !f.Dir {
			return fmt.Errorf("image path %s is also a directory", f.Path)
		}
		h := &tar.Header{Name: name, Mode: f.Mode, Uid: f.UID, Gid: f.GID}
		for k, v := range f.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		e := entry{hdr: h, f: f}
		switch {
		case f.Dir:
			h.Typeflag = tar.TypeDir
			if h.Mode == 0 {
				h.Mode = 0o755
			}
		case f.Link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.Link
			if h.Mode == 0 {
				h.Mode = 0o777
			}
		default:
			h.Typeflag, e.file = tar.TypeReg, true
			if h.Mode == 0 {
				h.Mode = 0o644
			}
			if f.Source == "" {
				h.Size = int64(len(f.Data))
			} else {
				fi, err := os.Stat(f.Source) // follows symlinks: the image gets the content
				if err != nil {
					return err
				}
				if !fi.Mode().IsRegular() {
					return fmt.Errorf("%s (for %s) is not a regular file", f.Source, f.Path)
				}
				h.Size = fi.Size()
			}
		}
		entries[name] = e
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tar.NewWriter(w)
	for _, n := range names {
		e := entries[n]
		if err := writeHeader(tw, e.hdr, mtime); err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
		if !e.file {
			continue
		}
		if e.f.Source == "" {
			if _, err := tw.Write(e.f.Data); err != nil {
				return err
			}
			continue
		}
		if err := copyFile(tw, e.f.Source, e.hdr.Size); err != nil {
			return err
		}
	}
	return tw.Close()
}

// copyFile writes exactly size bytes of src: a file that changed size since it was looked at
// fails the build rather than corrupting the tar.
func copyFile(w io.Writer, src string, size int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%s: read %d bytes, expected %d (changed while building?)", src, n, size)
	}
	return nil
}

// writeHeader writes h with the fixed time and no user or group names, in the simplest format
// that holds it (USTAR, else PAX: long or non-ASCII names, extended attributes).
func writeHeader(tw *tar.Writer, h *tar.Header, mtime time.Time) error {
	h.ModTime, h.Uname, h.Gname = mtime, "", ""
	h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
	h.Format = tar.FormatUnknown // the writer picks the first of USTAR, PAX, GNU that fits
	return tw.WriteHeader(h)
}

// FileCapability is the value of a "security.capability" extended attribute (version 2,
// effective) granting the capabilities numbered caps, e.g. 10 for CAP_NET_BIND_SERVICE: what
// `setcap cap_net_bind_service=+ep FILE` writes.
func FileCapability(caps ...uint) string {
	var permitted [2]uint32
	for _, c := range caps {
		permitted[c/32] |= 1 << (c % 32)
	}
	b := make([]byte, 0, 20)
	le := func(v uint32) { b = append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24)) }
	le(0x02000000 | 0x1) // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
	le(permitted[0])
	le(0) // inheritable
	le(permitted[1])
	le(0)
	return string(b)
}

// RunConfig is the part of an image configuration that says how its containers run.
type RunConfig struct {
	User         string              `json:"User,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Env          []string            `json:"Env"`
	Entrypoint   []string            `json:"Entrypoint"`
	Cmd          []string            `json:"Cmd,omitempty"`
	WorkingDir   string              `json:"WorkingDir,omitempty"`
	Labels       map[string]string   `json:"Labels,omitempty"`
}

// Config is an image configuration (the JSON whose digest is the image ID).
type Config struct {
	Architecture string       `json:"architecture"`
	OS           string       `json:"os"`
	Created      string       `json:"created"`
	Config       RunConfig    `json:"config"`
	RootFS       RootFS       `json:"rootfs"`
	History      []HistoryRow `json:"history"`
}

type RootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type HistoryRow struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

// Manifest is one entry of a docker-archive's manifest.json.
type Manifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// Image is what goes into an archive: tags, layers (bottom first) and how it runs.
type Image struct {
	Tags    []string // repository:tag, e.g. registry.k8s.io/pause:3.10
	Layers  []*Layer
	Config  RunConfig
	Created time.Time
	// CreatedBy describes each layer in the history (default: "podroute hack/image/archive").
	CreatedBy []string
	// Architecture defaults to the build machine's (runtime.GOARCH).
	Architecture string
}

// ConfigJSON returns the image configuration and its digest, the image ID (sha256:<hex>).
func (img *Image) ConfigJSON() ([]byte, string, error) {
	if len(img.Layers) == 0 {
		return nil, "", fmt.Errorf("image %v has no layer", img.Tags)
	}
	created := img.Created.UTC().Format(time.RFC3339)
	cfg := Config{
		Architecture: img.Architecture,
		OS:           "linux",
		Created:      created,
		Config:       img.Config,
		RootFS:       RootFS{Type: "layers"},
	}
	if cfg.Architecture == "" {
		cfg.Architecture = runtime.GOARCH
	}
	for i, l := range img.Layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.DiffID)
		by := "podroute hack/image/archive"
		if i < len(img.CreatedBy) {
			by = img.CreatedBy[i]
		}
		cfg.History = append(cfg.History, HistoryRow{Created: created, CreatedBy: by})
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(data)
	return data, "sha256:" + hex.EncodeToString(sum[:]), nil
}

// Write writes a docker-archive of the images to w.
func Write(w io.Writer, images ...Image) error {
	if len(images) == 0 {
		return fmt.Errorf("no image to write")
	}
	mtime := images[0].Created
	tw := tar.NewWriter(w)
	add := func(name string, data []byte) error {
		h := &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))}
		if err := writeHeader(tw, h, mtime); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	var manifests []Manifest
	repos := map[string]map[string]string{}
	written := map[string]bool{}
	for i := range images {
		img := &images[i]
		cfg, id, err := img.ConfigJSON()
		if err != nil {
			return err
		}
		cfgName := strings.TrimPrefix(id, "sha256:") + ".json"
		if !written[cfgName] {
			if err := add(cfgName, cfg); err != nil {
				return err
			}
			written[cfgName] = true
		}
		m := Manifest{Config: cfgName, RepoTags: append([]string{}, img.Tags...)}
		for _, l := range img.Layers {
			dir := l.Hex()
			m.Layers = append(m.Layers, dir+"/layer.tar")
			if written[dir] {
				continue
			}
			written[dir] = true
			if err := writeHeader(tw, &tar.Header{Name: dir + "/", Typeflag: tar.TypeDir, Mode: 0o755}, mtime); err != nil {
				return err
			}
			if err := add(dir+"/VERSION", []byte("1.0")); err != nil {
				return err
			}
			if err := writeHeader(tw, &tar.Header{Name: dir + "/layer.tar", Typeflag: tar.TypeReg, Mode: 0o644, Size: l.Size}, mtime); err != nil {
				return err
			}
			r, err := l.Open()
			if err != nil {
				return err
			}
			n, err := io.Copy(tw, r)
			r.Close()
			if err != nil {
				return fmt.Errorf("layer %s: %w", l.DiffID, err)
			}
			if n != l.Size {
				return fmt.Errorf("layer %s: %d bytes, expected %d", l.DiffID, n, l.Size)
			}
		}
		manifests = append(manifests, m)
		top := img.Layers[len(img.Layers)-1].Hex()
		for _, t := range img.Tags {
			repo, tag := SplitTag(t)
			if repos[repo] == nil {
				repos[repo] = map[string]string{}
			}
			repos[repo][tag] = top
		}
	}
	man, err := json.Marshal(manifests)
	if err != nil {
		return err
	}
	if err := add("manifest.json", man); err != nil {
		return err
	}
	reposJSON, err := json.Marshal(repos)
	if err != nil {
		return err
	}
	if err := add("repositories", reposJSON); err != nil {
		return err
	}
	return tw.Close()
}

// WriteFile writes a docker-archive of the images to path: written aside and renamed into
// place, so a reader (another test process) never sees half an archive.
func WriteFile(path string, images ...Image) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	err = Write(f, images...)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// SplitTag splits repository:tag (the tag after the last colon past the last slash; "latest"
// when there is none).
func SplitTag(ref string) (repo, tag string) {
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i], ref[i+1:]
	}
	return ref, "latest"
}

// hashingWriter counts and hashes what goes through it.
type hashingWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (hw *hashingWriter) Write(p []byte) (int, error) {
	n, err := hw.w.Write(p)
	hw.h.Write(p[:n])
	hw.n += int64(n)
	return n, err
}
