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
//	/usr/local/bin/podroute-lbipam      the LoadBalancer IP allocator, the command of the
//	                                    Deployment podroute-lbipam (deploy/50-lbipam.yaml)
//	/opt/podroute/bin/podroute          the CNI plugin the agent installs into /opt/cni/bin
//	/opt/podroute/bin/podroute-ipam     -> podroute
//	/opt/podroute/bin/portmap           the reference portmap plugin (hack/install-ref-cni.sh,
//	                                    static), which the agent installs beside podroute and
//	                                    chains after it, for hostPort
//	/usr/sbin/nft + its shared libraries and loader, copied from the build machine's nftables
//	                                    package: the agent's egress masquerade runs nft
//	/usr/share/doc/<package>/copyright  of each package those files come from, when known
//
// The build is reproducible: entries sorted, owner 0:0, a fixed modification time
// ($SOURCE_DATE_EPOCH, default 0), so the same inputs give the same bytes and digests.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/podroute/podroute/hack/image/archive"
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
	// Its own flag, like -portmap, so that a -bin directory of the three binaries above
	// (test/lab's images) still builds: the allocator then comes from the repository's bin/.
	lbipam := fs.String("lbipam", filepath.Join("bin", "podroute-lbipam"), "the LoadBalancer IP allocator to carry (make build writes it; empty: none, the Deployment podroute-lbipam cannot run)")
	version := fs.String("version", "dev", "image tag")
	out := fs.String("o", "build/podroute-image.tar", "output docker-archive tar")
	nft := fs.String("nft", "/usr/sbin/nft", "the nft binary to carry, with the libraries ldd lists (empty: none; the agent then needs --masquerade=false)")
	portmap := fs.String("portmap", filepath.Join("build", "ref-cni", "portmap"), "the reference portmap plugin to carry, statically linked (hack/install-ref-cni.sh builds it; empty: none, the agent then needs --cni-portmap=false or --cni-portmap-plugin=)")
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
	if *portmap != "" {
		// It runs on the nodes' hosts, not in the image.
		if err := RequireStatic(*portmap); err != nil {
			return fmt.Errorf("-portmap: %w", err)
		}
		spec.Files = append(spec.Files, File{Path: PluginDir + "/portmap", Source: *portmap, Mode: 0o755})
	}
	if *lbipam != "" {
		if _, err := os.Stat(*lbipam); err != nil {
			return fmt.Errorf("-lbipam: %w (make build)", err)
		}
		spec.Files = append(spec.Files, File{Path: "/usr/local/bin/podroute-lbipam", Source: *lbipam, Mode: 0o755})
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

// File is one entry of the layer (see archive.File).
type File = archive.File

// Manifest and Config are the archive's manifest.json entry and image configuration.
type (
	Manifest = archive.Manifest
	Config   = archive.Config
)

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

// NativeFiles returns a dynamically linked executable, the libraries and loader it needs
// and their packages' copyright files (see archive.NativeFiles).
func NativeFiles(exe string) ([]File, error) {
	files, err := archive.NativeFiles(exe)
	if err != nil {
		return nil, fmt.Errorf("%w (apt-get install nftables)", err)
	}
	return files, nil
}

// Build makes the layer, the configuration and the archive.
func Build(s Spec) (*Image, error) {
	// /tmp for tools that want one; the agent itself writes nothing to its root file system.
	files := append(append([]File(nil), s.Files...), File{Path: "/tmp", Dir: true, Mode: 0o1777})
	layer, err := archive.NewLayer(files, s.Created)
	if err != nil {
		return nil, err
	}
	img := archive.Image{
		Tags:    []string{s.Tag},
		Layers:  []*archive.Layer{layer},
		Created: s.Created,
		Config: archive.RunConfig{
			Entrypoint: []string{Entrypoint},
			Env:        []string{"PATH=" + Path},
			Labels: map[string]string{
				"org.opencontainers.image.title":   "podroute",
				"org.opencontainers.image.version": s.Version,
				"org.opencontainers.image.source":  "https://github.com/podroute/podroute",
			},
		},
		CreatedBy: []string{"hack/image: podroute binaries and nft"},
	}
	cfg, id, err := img.ConfigJSON()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := archive.Write(&buf, img); err != nil {
		return nil, err
	}
	return &Image{
		Archive: buf.Bytes(), Config: cfg,
		ConfigDigest: id, LayerDigest: layer.DiffID, LayerSize: int(layer.Size),
	}, nil
}
