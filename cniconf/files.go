package cniconf

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// readRegular returns the content of path if it is a regular file with mode perm.
func readRegular(path string, perm uint32) ([]byte, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || uint32(st.Mode().Perm()) != perm {
		return nil, fmt.Errorf("%s is not a regular file with mode %o", path, perm)
	}
	return os.ReadFile(path)
}

// writeFileAtomic puts content at path unless it is already there.
func writeFileAtomic(path string, content []byte, perm os.FileMode) (bool, error) {
	if sameContent(path, content, uint32(perm)) {
		return false, nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := replaceFile(path, perm, func(w io.Writer) error {
		_, err := w.Write(content)
		return err
	}); err != nil {
		return false, err
	}
	return true, nil
}

// replaceFile writes a temporary file next to path with fill, syncs it and renames it over
// path, so readers and exec(2) only ever see a complete file. The temporary name ends in
// neither .conf, .conflist nor .json, so a runtime scanning the directory never loads it.
func replaceFile(path string, perm os.FileMode, fill func(io.Writer) error) (err error) {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("creating a temporary file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err := fill(f); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	// CreateTemp makes 0600 files; umask must not narrow the mode either.
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("renaming %s to %s: %w", tmp, path, err)
	}
	return syncDir(dir)
}

// syncDir makes a rename in dir durable across a power loss.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

func fileSHA256(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return h.Sum(nil), nil
}

// InstallPlugin copies PluginSource to BinDir/podroute (mode 0755) and points the link
// BinDir/podroute-ipam at it, creating BinDir; then, when the configuration chains portmap
// (not NoPortmap) and PortmapSource is set, copies PortmapSource to BinDir/portmap the same
// way. Each is replaced by rename, so a runtime exec'ing a plugin meanwhile runs the old or
// the new binary, never a partial one; an installed binary with the same content and mode is
// left alone. changed reports whether anything was replaced.
func InstallPlugin(opts Options) (changed bool, err error) {
	if err := opts.validateBin(); err != nil {
		return false, err
	}
	if err := checkDir("PluginSource", opts.PluginSource); err != nil {
		return false, err
	}
	portmap := !opts.NoPortmap && opts.PortmapSource != ""
	if portmap && !filepath.IsAbs(opts.PortmapSource) {
		return false, fmt.Errorf("cniconf: PortmapSource %q is not an absolute path", opts.PortmapSource)
	}
	if err := os.MkdirAll(opts.BinDir, 0o755); err != nil {
		return false, fmt.Errorf("cniconf: creating %s: %w", opts.BinDir, err)
	}
	binChanged, err := installBinary(opts.PluginSource, filepath.Join(opts.BinDir, PluginName))
	if err != nil {
		return false, fmt.Errorf("cniconf: installing the plugin: %w", err)
	}
	linkChanged, err := installLink(filepath.Join(opts.BinDir, IPAMPluginName), PluginName)
	if err != nil {
		return binChanged, fmt.Errorf("cniconf: installing the IPAM plugin link: %w", err)
	}
	changed = binChanged || linkChanged
	if portmap {
		pmChanged, err := installBinary(opts.PortmapSource, filepath.Join(opts.BinDir, PortmapName))
		if err != nil {
			return changed, fmt.Errorf("cniconf: installing the portmap plugin: %w", err)
		}
		changed = changed || pmChanged
	}
	return changed, nil
}

func installBinary(src, dst string) (bool, error) {
	st, err := os.Stat(src)
	if err != nil {
		return false, fmt.Errorf("plugin source: %w", err)
	}
	if !st.Mode().IsRegular() {
		return false, fmt.Errorf("plugin source %s is not a regular file", src)
	}
	want, err := fileSHA256(src)
	if err != nil {
		return false, fmt.Errorf("plugin source: %w", err)
	}
	if have, err := installedSHA256(dst); err == nil && string(have) == string(want) {
		return false, nil
	}
	in, err := os.Open(src)
	if err != nil {
		return false, fmt.Errorf("plugin source: %w", err)
	}
	defer in.Close()
	h := sha256.New()
	if err := replaceFile(dst, 0o755, func(w io.Writer) error {
		_, err := io.Copy(io.MultiWriter(w, h), in)
		return err
	}); err != nil {
		return false, err
	}
	// The source changed under us (an image update in flight): the installed copy is
	// complete, but say so rather than pretend it matches.
	if string(h.Sum(nil)) != string(want) {
		return true, fmt.Errorf("plugin source %s changed while being copied", src)
	}
	return true, nil
}

// InstalledPortmap says whether BinDir/portmap (path) is the copy InstallPlugin makes of
// PortmapSource: a regular 0755 file with the same content, podroute's to remove. A missing
// portmap, another one, or no PortmapSource is not; err is set only when PortmapSource
// cannot be read to compare.
func InstalledPortmap(opts Options) (path string, ours bool, err error) {
	path = filepath.Join(opts.BinDir, PortmapName)
	if opts.PortmapSource == "" {
		return path, false, nil
	}
	have, err := installedSHA256(path)
	if err != nil {
		return path, false, nil
	}
	want, err := fileSHA256(opts.PortmapSource)
	if err != nil {
		return path, false, fmt.Errorf("cniconf: portmap source: %w", err)
	}
	return path, string(have) == string(want), nil
}

// installedSHA256 hashes dst if it is a regular 0755 file.
func installedSHA256(dst string) ([]byte, error) {
	st, err := os.Lstat(dst)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm() != 0o755 {
		return nil, fmt.Errorf("%s is not a regular 0755 file", dst)
	}
	return fileSHA256(dst)
}

// installLink makes path a symlink to target, replacing whatever is there by rename.
func installLink(path, target string) (bool, error) {
	if cur, err := os.Readlink(path); err == nil && cur == target {
		return false, nil
	}
	dir, base := filepath.Split(path)
	tmp, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return false, fmt.Errorf("reserving a temporary name: %w", err)
	}
	name := tmp.Name()
	_ = tmp.Close()
	// The reserved name must be free for symlink(2); nothing else uses this pattern.
	if err := os.Remove(name); err != nil {
		return false, fmt.Errorf("reserving a temporary name: %w", err)
	}
	if err := os.Symlink(target, name); err != nil {
		return false, fmt.Errorf("creating %s: %w", name, err)
	}
	if err := os.Rename(name, path); err != nil {
		_ = os.Remove(name)
		return false, fmt.Errorf("renaming %s to %s: %w", name, path, err)
	}
	return true, syncDir(dir)
}

// Remove undoes Write and InstallPlugin: the configuration first, so the runtime stops
// sending pods to podroute before its binaries go, then the plugin and its IPAM link.
// Anything already gone is fine. IPAM reservations in DataDir are left for the operator,
// and portmap for the caller to decide (InstalledPortmap): the runtime's packages
// (kubernetes-cni, containernetworking-plugins) and other network plugins install and use
// the same plugin.
func Remove(opts Options) error {
	opts = opts.withDefaults()
	if err := checkDir("ConfDir", opts.ConfDir); err != nil {
		return err
	}
	if err := opts.validateBin(); err != nil {
		return err
	}
	var errs []error
	for _, p := range []string{
		filepath.Join(opts.ConfDir, opts.FileName),
		filepath.Join(opts.BinDir, IPAMPluginName),
		filepath.Join(opts.BinDir, PluginName),
	} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cniconf: removing %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}
