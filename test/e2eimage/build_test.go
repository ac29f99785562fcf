package e2eimage

import (
	"io/fs"
	"strings"
	"testing"
)

// Without hack/kube/build.sh's binaries the error says what to run.
func TestBuildNamesTheMissingStep(t *testing.T) {
	_, err := Build(Options{BinDir: t.TempDir(), CacheDir: t.TempDir(), Logf: t.Logf})
	if err == nil || !strings.Contains(err.Error(), "agnhost") || !strings.Contains(err.Error(), "hack/kube/build.sh") {
		t.Fatalf("error %v, want one naming agnhost and hack/kube/build.sh", err)
	}
}

type entry struct{ dir bool }

func (e entry) Name() string               { return "" }
func (e entry) IsDir() bool                { return e.dir }
func (e entry) Type() fs.FileMode          { return 0 }
func (e entry) Info() (fs.FileInfo, error) { return nil, nil }

func TestSkipInLayer(t *testing.T) {
	for rel, want := range map[string]bool{
		"etc/resolv.conf":                     true,
		"etc/hostname":                        true,
		"etc/hosts":                           false,
		"etc/passwd":                          false,
		"var/lib/apt/lists/x_Packages":        true,
		"var/cache/apt/pkgcache.bin":          true,
		"var/log/dpkg.log":                    true,
		"usr/share/man/man1/dig.1.gz":         true,
		"usr/share/locale/de/LC_MESSAGES/x":   true,
		"usr/share/doc/curl/changelog.gz":     true,
		"usr/share/doc/curl/copyright":        false,
		"usr/bin/dig":                         false,
		"var/cache/debconf/config.dat":        false,
		"var/cache/debconf/config.dat-old":    true,
		"usr/share/zoneinfo/Etc/UTC":          false,
		"usr/lib/x86_64-linux-gnu/xtables/x":  false,
		"usr/share/nginx/html/index.html":     false,
		"var/lib/dpkg/status":                 false,
		"usr/share/ca-certificates/mozilla/x": false,
	} {
		if got := skipInLayer(rel, entry{}); got != want {
			t.Errorf("%s: skipped %v, want %v", rel, got, want)
		}
	}
	// Directories stay, empty, so that packages find them.
	for _, dir := range []string{"var/log", "var/log/nginx", "var/lib/apt/lists", "usr/share/man"} {
		if skipInLayer(dir, entry{dir: true}) {
			t.Errorf("directory %s skipped", dir)
		}
	}
}
