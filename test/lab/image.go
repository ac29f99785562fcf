package lab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/podroute/podroute/hack/image/archive"
	"github.com/podroute/podroute/test/cniutil"
)

// The offline images every kubelet node imports into its containerd: nothing is pulled.
const (
	// PauseImage is the pod sandbox image (containerd's default sandbox_image): the static
	// binary of hack/image/pause run without arguments.
	PauseImage = "registry.k8s.io/pause:3.6"
	// NetcheckImage runs the same binary as /netcheck; a container's args pick the mode:
	// `serve-tcp PORT`, `connect HOST:PORT [SECONDS]`, `sleep`, `addrs` (see
	// hack/image/pause). Pods use it with imagePullPolicy: Never.
	NetcheckImage = "podroute.test/netcheck:1"
)

// imageSource is the package of the images' binary, inside podroute's module.
const imageSource = "./hack/image/pause"

var (
	imagesOnce sync.Once
	imagesDir  string
	imagesErr  error
)

// images builds the images' binary (static, from hack/image/pause) and writes the two
// image archives into build/image, once per test process. It returns their paths, keyed by
// image reference.
func images() (map[string]string, error) {
	imagesOnce.Do(func() {
		root, err := cniutil.RepoRoot()
		if err != nil {
			imagesErr = err
			return
		}
		imagesDir = filepath.Join(root, "build", "image")
		if err := os.MkdirAll(imagesDir, 0o755); err != nil {
			imagesErr = err
			return
		}
		bin := filepath.Join(imagesDir, fmt.Sprintf("pause.%d", os.Getpid()))
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, imageSource)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
		if out, err := cmd.CombinedOutput(); err != nil {
			imagesErr = fmt.Errorf("go build %s: %v: %s", imageSource, err, strings.TrimSpace(string(out)))
			return
		}
		defer os.Remove(bin)
		exe, err := os.ReadFile(bin)
		if err != nil {
			imagesErr = err
			return
		}
		for _, img := range []struct{ ref, name string }{{PauseImage, "pause"}, {NetcheckImage, "netcheck"}} {
			data, err := dockerArchive(img.ref, img.name, exe)
			if err != nil {
				imagesErr = fmt.Errorf("image %s: %w", img.ref, err)
				return
			}
			// Written aside and renamed: another test process may read the same path.
			path := filepath.Join(imagesDir, img.name+".tar")
			tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
			if err := os.WriteFile(tmp, data, 0o644); err != nil {
				imagesErr = err
				return
			}
			if err := os.Rename(tmp, path); err != nil {
				imagesErr = err
				return
			}
		}
	})
	if imagesErr != nil {
		return nil, imagesErr
	}
	return map[string]string{
		PauseImage:    filepath.Join(imagesDir, "pause.tar"),
		NetcheckImage: filepath.Join(imagesDir, "netcheck.tar"),
	}, nil
}

// dockerArchive returns a docker-archive (the format of `docker save`, which
// `ctr images import` reads) of a one-layer image tagged ref, whose layer holds exe as
// /name and whose entrypoint is /name.
func dockerArchive(ref, name string, exe []byte) ([]byte, error) {
	mtime := time.Unix(0, 0)
	files := []archive.File{{Path: "/" + name, Data: exe, Mode: 0o755}}
	for _, d := range []string{"dev", "etc", "proc", "sys"} {
		files = append(files, archive.File{Path: "/" + d, Dir: true})
	}
	files = append(files, archive.File{Path: "/tmp", Dir: true, Mode: 0o1777})
	layer, err := archive.NewLayer(files, mtime)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	err = archive.Write(&out, archive.Image{
		Tags:      []string{ref},
		Layers:    []*archive.Layer{layer},
		Created:   mtime,
		CreatedBy: []string{"podroute test/lab"},
		Config: archive.RunConfig{
			Entrypoint: []string{"/" + name},
			Env:        []string{"PATH=/"},
			WorkingDir: "/",
		},
	})
	if err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
