package archive

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// NativeFiles returns a dynamically linked executable and what it needs to run: the shared
// libraries and the loader ldd lists, each at the path ldd names, and the copyright file of
// each Debian package they come from (when dpkg knows it). Libraries a program loads itself
// at run time (dlopen) are not among them.
func NativeFiles(exe string) ([]File, error) {
	out, err := exec.Command("ldd", exe).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w (is it installed?)", exe, err)
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
	for _, f := range append([]File(nil), files...) {
		pkg := DebianPackage(f.Source)
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

// DebianPackage is the package owning p on the build machine ("" if unknown), without its
// architecture.
func DebianPackage(p string) string {
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
