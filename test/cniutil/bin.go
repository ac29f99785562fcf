package cniutil

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// BinDirEnv names a directory of podroute binaries for the tests to use as they are (a
// release's, say), instead of building the working tree.
const BinDirEnv = "PODROUTE_TEST_BIN_DIR"

// commands are the binaries the tests exec, built from the working tree.
var commands = []string{"./cmd/podroute", "./cmd/podroute-agent", "./cmd/podroutectl", "./cmd/podroute-lbipam"}

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// Binaries returns the directory of podroute's binaries for the tests to exec: podroute,
// podroute-ipam (a link to it), podroute-agent, podroutectl and podroute-lbipam, built from the working tree
// by the first call in each test process (so a test never runs what an older `make build`
// left in bin/), and the reference portmap plugin beside them, as `make build` lays out
// bin/. The directory is build/testbin, shared by the test processes of one tree: builds
// take turns under a lock, the go command relinks only what changed, and a binary is
// replaced (atomically, by rename) only when its content changed, so a process running one
// is never disturbed by another test process that finds it current.
//
// With BinDirEnv set, that directory is used as it is.
func Binaries() (string, error) {
	binOnce.Do(func() {
		if d := os.Getenv(BinDirEnv); d != "" {
			binDir = d
			return
		}
		root, err := RepoRoot()
		if err != nil {
			binErr = err
			return
		}
		binDir = filepath.Join(root, "build", "testbin")
		binErr = buildBinaries(root, binDir)
		if binErr != nil {
			binErr = fmt.Errorf("building podroute's binaries into %s: %w", binDir, binErr)
		}
	})
	return binDir, binErr
}

func buildBinaries(root, out string) error {
	unlock, err := lockDir(out)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := goBuild(root, out, commands); err != nil {
		return err
	}
	if err := ensureSymlink("podroute", filepath.Join(out, "podroute-ipam")); err != nil {
		return err
	}
	// The agent installs portmap from beside itself (--cni-portmap-plugin's default).
	if pm := filepath.Join(RefDir(), "portmap"); executable(pm) == nil {
		if err := publish(pm, filepath.Join(out, "portmap")); err != nil {
			return err
		}
	}
	return nil
}

// goBuild builds the main packages pkgs of the module at root into out, static like `make
// build` builds them, and returns the binaries' names. The go command builds into out's
// staging directory (.build), where it skips relinking a binary that is current; a binary
// then reaches out only if it differs from what out holds.
func goBuild(root, out string, pkgs []string) ([]string, error) {
	staging := filepath.Join(out, ".build")
	if err := os.MkdirAll(staging, 0o755); err != nil {
		return nil, err
	}
	args := append([]string{"build", "-trimpath", "-ldflags", "-s -w", "-o", staging + string(filepath.Separator)}, pkgs...)
	cmd := exec.Command(goTool(), args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, bytes.TrimSpace(b))
	}
	var names []string
	for _, p := range pkgs {
		name := filepath.Base(p)
		if err := publish(filepath.Join(staging, name), filepath.Join(out, name)); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}

// goTool is the go command: the one on PATH, else the one of the toolchain that built this
// test.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if r := os.Getenv("GOROOT"); r != "" {
		return filepath.Join(r, "bin", "go")
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// publish makes dst an executable copy of src, replacing it by rename, and only if its
// content differs.
func publish(src, dst string) error {
	want, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if have, err := os.ReadFile(dst); err == nil && bytes.Equal(have, want) {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, bytes.NewReader(want))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o755)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), dst)
	}
	return err
}

func ensureSymlink(target, link string) error {
	if t, err := os.Readlink(link); err == nil && t == target {
		return nil
	}
	tmp := link + ".new"
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, link)
}

// lockDir creates dir and takes an exclusive lock on it against the other test processes,
// which may be building into it at the same time (go test runs packages in parallel).
func lockDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
