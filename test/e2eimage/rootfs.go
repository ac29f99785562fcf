package e2eimage

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podroute/podroute/hack/image/archive"
)

// rootfs is the shared Debian root file system: the tree debootstrap made and its layer.
type rootfs struct {
	dir    string // <cache>/rootfs/<key>
	root   string // dir/root: the tree
	diffID string // the layer's digest
}

// layer opens the root file system's layer tar and checks it is the one recorded.
func (r *rootfs) layer() (*archive.Layer, error) {
	l, err := archive.LayerFile(filepath.Join(r.dir, "layer.tar"))
	if err != nil {
		return nil, err
	}
	if l.DiffID != r.diffID {
		return nil, fmt.Errorf("%s/layer.tar has digest %s, %s was recorded: remove %s to build it again", r.dir, l.DiffID, r.diffID, r.dir)
	}
	return l, nil
}

// rootfsKey names the root file system tree by what decides its content: the suite, the
// architecture, the packages and treeRevision. (Debian's point releases change
// package versions under one key; packages.txt records the ones a tree has.)
func rootfsKey(arch string) string {
	pkgs := append([]string(nil), rootfsPackages...)
	sort.Strings(pkgs)
	sum := sha256.Sum256([]byte(fmt.Sprintf("revision %s\nsuite %s\narch %s\nvariant minbase\npackages %s\n", treeRevision, Suite, arch, strings.Join(pkgs, ","))))
	return Suite + "-" + arch + "-" + hex.EncodeToString(sum[:])[:16]
}

// layerRevision is that of the rules making the layer from the tree (skipInLayer): a change
// makes the layer again from the tree at hand, without debootstrap.
const layerRevision = "2"

// ensureRootfs returns the root file system, making the tree with debootstrap when the
// cache has none for the current key (and removing those of older keys), and its layer when
// the tree has none of the current layerRevision.
func (b *builder) ensureRootfs() (*rootfs, error) {
	arch, err := debianArch()
	if err != nil {
		return nil, err
	}
	key := rootfsKey(arch)
	parent := filepath.Join(b.cache, "rootfs")
	r := &rootfs{dir: filepath.Join(parent, key)}
	r.root = filepath.Join(r.dir, "root")
	stamp := filepath.Join(r.dir, "layer.diffid")
	if data, err := os.ReadFile(stamp); err == nil {
		if rev, id, ok := strings.Cut(strings.TrimSpace(string(data)), " "); ok && rev == layerRevision {
			r.diffID = id
			return r, nil
		}
	}

	if _, err := os.Stat(filepath.Join(r.dir, "debootstrap.done")); err != nil {
		if err := b.makeTree(parent, key, arch); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	tmp := filepath.Join(r.dir, fmt.Sprintf(".layer.tar.%d", os.Getpid()))
	l, err := archive.TreeLayer(tmp, r.root, b.mtime, skipInLayer)
	if err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, filepath.Join(r.dir, "layer.tar")); err != nil {
		return nil, err
	}
	if err := os.WriteFile(stamp, []byte(layerRevision+" "+l.DiffID+"\n"), 0o644); err != nil {
		return nil, err
	}
	r.diffID = l.DiffID
	b.Logf("root file system layer %s (%d MB) from %s in %v", l.DiffID, l.Size>>20, r.root, time.Since(start).Round(time.Second))
	return r, nil
}

// makeTree makes the tree of key with debootstrap: under a name of its own, renamed into
// place when complete, trees of other keys removed. A tree debootstrap finished is kept if
// a later step fails, and used again.
func (b *builder) makeTree(parent, key, arch string) error {
	if os.Geteuid() != 0 {
		return errNotRoot
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return fmt.Errorf("debootstrap not found: apt-get install debootstrap (hack/setup.sh installs it)")
	}
	mirror := b.Mirror
	if mirror == "" {
		mirror = os.Getenv(MirrorEnv)
	}
	if mirror == "" {
		mirror = aptMirror(Suite)
	}
	if mirror == "" {
		mirror = "http://deb.debian.org/debian"
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(parent, "."+key)
	if _, err := os.Stat(filepath.Join(tmp, "debootstrap.done")); err != nil {
		if err := b.debootstrap(tmp, arch, mirror); err != nil {
			if rerr := removeTree(tmp); rerr != nil {
				b.Logf("%v", rerr)
			}
			return err
		}
	}
	pkgs, err := exec.Command("chroot", filepath.Join(tmp, "root"), "dpkg-query", "-W", "-f", "${Package} ${Version}\n").Output()
	if err != nil {
		return fmt.Errorf("dpkg-query in the root file system: %v", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "packages.txt"), pkgs, 0o644); err != nil {
		return err
	}
	// Trees of other keys go: images of this key do not use them.
	if old, err := os.ReadDir(parent); err == nil {
		for _, e := range old {
			if p := filepath.Join(parent, e.Name()); p != tmp {
				if err := removeTree(p); err != nil {
					b.Logf("%v", err)
				}
			}
		}
	}
	if err := os.Rename(tmp, filepath.Join(parent, key)); err != nil {
		return err
	}
	b.Logf("root file system %s: %d packages (packages.txt)", filepath.Join(parent, key), strings.Count(string(pkgs), "\n"))
	return nil
}

// debootstrap makes the tree in dir/root; dir/debootstrap.log keeps its output.
func (b *builder) debootstrap(dir, arch, mirror string) error {
	if err := removeTree(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	start := time.Now()
	b.Logf("debootstrap --variant=minbase %s from %s into %s (about two minutes)", Suite, mirror, dir)
	logPath := filepath.Join(dir, "debootstrap.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command("debootstrap", "--variant=minbase", "--arch="+arch,
		"--include="+strings.Join(rootfsPackages, ","), Suite, filepath.Join(dir, "root"), mirror)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	err = cmd.Run()
	logf.Close()
	// debootstrap mounts /proc and /sys in the tree while it installs; none may stay.
	if uerr := unmountUnder(filepath.Join(dir, "root")); uerr != nil && err == nil {
		err = uerr
	}
	if err != nil {
		return fmt.Errorf("debootstrap %s: %v; its log:\n%s", Suite, err, tail(logPath, 30))
	}
	if err := addBusyboxApplets(filepath.Join(dir, "root")); err != nil {
		return err
	}
	// The downloaded packages and APT's lists, which no layer carries, need not stay either.
	for _, pattern := range []string{"var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*"} {
		files, _ := filepath.Glob(filepath.Join(dir, "root", pattern))
		for _, f := range files {
			if err := os.Remove(f); err != nil {
				return err
			}
		}
	}
	b.Logf("debootstrap done in %v", time.Since(start).Round(time.Second))
	return os.WriteFile(filepath.Join(dir, "debootstrap.done"), nil, 0o644)
}

// addBusyboxApplets links each BusyBox applet no Debian package provides (wget, ping, vi,
// ...) to busybox in /usr/bin, so what Alpine's BusyBox answers in upstream's images is
// there too; Debian's own programs (nc, ip, ps, ...) keep their names.
func addBusyboxApplets(root string) error {
	applets, err := busyboxApplets(filepath.Join(root, "usr/bin/busybox"))
	if err != nil {
		return err
	}
	for _, a := range applets {
		taken := false
		for _, dir := range []string{"usr/bin", "usr/sbin", "bin", "sbin", "usr/local/bin", "usr/local/sbin"} {
			if _, err := os.Lstat(filepath.Join(root, dir, a)); err == nil {
				taken = true
				break
			}
		}
		if taken || a == "busybox" || a == "[" || a == "[[" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(root, "usr/bin", a)); err != nil {
			return err
		}
	}
	return nil
}

// debianArch is dpkg's name for the machine's architecture.
func debianArch() (string, error) {
	if out, err := exec.Command("dpkg", "--print-architecture").Output(); err == nil {
		return strings.TrimSpace(string(out)), nil
	}
	switch runtime.GOARCH {
	case "amd64", "arm64", "s390x", "ppc64le", "riscv64":
		return runtime.GOARCH, nil
	case "arm":
		return "armhf", nil
	case "386":
		return "i386", nil
	}
	return "", fmt.Errorf("no Debian architecture for %s", runtime.GOARCH)
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		// The mount point, with spaces and the like octal-escaped.
		mp := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	return mounts, sc.Err()
}

// unmountUnder detaches every mount at or below dir.
func unmountUnder(dir string) error {
	mounts, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			return fmt.Errorf("unmount %s: %w", m, err)
		}
	}
	if left, err := mountsUnder(dir); err != nil || len(left) > 0 {
		return fmt.Errorf("still mounted under %s: %v %v", dir, left, err)
	}
	return nil
}

// removeTree removes dir after making sure nothing is mounted under it: a /proc or /dev
// left behind by a failed debootstrap must not be emptied along with the tree.
func removeTree(dir string) error {
	if _, err := os.Lstat(dir); os.IsNotExist(err) {
		return nil
	}
	if err := unmountUnder(dir); err != nil {
		return fmt.Errorf("not removing %s: %w", dir, err)
	}
	return os.RemoveAll(dir)
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
