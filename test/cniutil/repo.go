// Package cniutil holds the helpers shared by podroute's CNI integration tests (test/cni) and
// benchmarks (test/cnibench): a throw-away "node" network namespace, pod namespaces, a libcni
// client whose plugins run inside the node namespace, and probes (ping, TCP, links, routes,
// IPAM reservations) that run inside a chosen namespace.
//
// Nothing here touches the network namespace the test process starts in: every plugin runs,
// and every probe looks, inside namespaces the helpers created and remove again in
// t.Cleanup.
package cniutil

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	repoOnce sync.Once
	repoRoot string
	repoErr  error
)

// RepoRoot is the directory holding podroute's go.mod, found by walking up from the working
// directory (go test runs a package's tests in that package's directory).
func RepoRoot() (string, error) {
	repoOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			repoErr = err
			return
		}
		for {
			if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
				if containsModule(data, "github.com/podroute/podroute") {
					repoRoot = dir
					return
				}
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				repoErr = errors.New("cannot find podroute's go.mod above the working directory")
				return
			}
			dir = parent
		}
	})
	return repoRoot, repoErr
}

func containsModule(gomod []byte, module string) bool {
	for _, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" && f[1] == module {
			return true
		}
	}
	return false
}

// BinDir is the directory of the podroute binaries the tests exec (see Binaries): built from
// the working tree, never a stale bin/. When the build fails, the error goes to stderr and
// the directory lacks the binaries; RequirePodroute fails the test with it.
func BinDir() string {
	dir, err := Binaries()
	if err != nil {
		reportBuild.Do(func() { fmt.Fprintf(os.Stderr, "cniutil: %v\n", err) })
	}
	return dir
}

var reportBuild sync.Once

// RefDir is where hack/install-ref-cni.sh puts the reference plugins (ptp, host-local,
// loopback, bridge) and cnitool.
func RefDir() string {
	root, err := RepoRoot()
	if err != nil {
		return filepath.Join("build", "ref-cni")
	}
	return filepath.Join(root, "build", "ref-cni")
}

// PluginPath is the search path handed to libcni (and so to the plugins as CNI_PATH): podroute's
// own binaries first, then the reference plugins.
func PluginPath() []string {
	return []string{BinDir(), RefDir()}
}

// PodroutePath is the path of the podroute plugin binary.
func PodroutePath() string { return filepath.Join(BinDir(), "podroute") }

// RequireRoot fails the test unless it runs as root: creating network namespaces, veths and
// routes needs CAP_NET_ADMIN and CAP_SYS_ADMIN.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatalf("these tests create network namespaces and must run as root (euid is %d)", os.Geteuid())
	}
}

// RequirePodroute fails the test unless podroute and podroute-ipam are built (BinDir).
func RequirePodroute(tb testing.TB) {
	tb.Helper()
	RequireRoot(tb)
	dir, err := Binaries()
	if err != nil {
		tb.Fatal(err)
	}
	for _, name := range []string{"podroute", "podroute-ipam"} {
		p := filepath.Join(dir, name)
		if err := executable(p); err != nil {
			tb.Fatalf("%s: %v", p, err)
		}
	}
}

// RequireRefPlugins fails the test unless the reference plugins it names are installed.
func RequireRefPlugins(tb testing.TB, names ...string) {
	tb.Helper()
	RequireRoot(tb)
	for _, name := range names {
		p := filepath.Join(RefDir(), name)
		if err := executable(p); err != nil {
			tb.Fatalf("%s: %v: run hack/install-ref-cni.sh", p, err)
		}
	}
}

func executable(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("not an executable file")
	}
	return nil
}
