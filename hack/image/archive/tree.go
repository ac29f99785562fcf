package archive

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// TreeLayer writes the tree under root (a root file system: debootstrap's output, say) as a
// layer tar to the file dst and returns the layer. Entries come in lexical order, each
// directory before what it holds; they keep their owners, permission, setuid, setgid and
// sticky bits and a "security.capability" attribute, and get modification time mtime. A file
// with several links is stored once, its other names as hard links. Device nodes, FIFOs and
// sockets are left out (the runtime provides /dev), and so is every entry skip reports
// (rel is the slash-separated path under root, "etc/passwd"; a skipped directory is left
// out whole). skip may be nil.
func TreeLayer(dst, root string, mtime time.Time, skip func(rel string, d fs.DirEntry) bool) (*Layer, error) {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(dst)
	if err != nil {
		return nil, err
	}
	hw := &hashingWriter{w: f, h: sha256.New()}
	err = writeTree(hw, root, mtime, skip)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return nil, err
	}
	return &Layer{DiffID: "sha256:" + hex.EncodeToString(hw.h.Sum(nil)), Size: hw.n, path: dst}, nil
}

func writeTree(w *hashingWriter, root string, mtime time.Time, skip func(string, fs.DirEntry) bool) error {
	tw := tar.NewWriter(w)
	type inode struct{ dev, ino uint64 }
	links := map[inode]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if skip != nil && skip(rel, d) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat", p)
		}
		h := &tar.Header{Name: rel, Mode: int64(fi.Mode().Perm()), Uid: int(st.Uid), Gid: int(st.Gid)}
		if fi.Mode()&fs.ModeSetuid != 0 {
			h.Mode |= 0o4000
		}
		if fi.Mode()&fs.ModeSetgid != 0 {
			h.Mode |= 0o2000
		}
		if fi.Mode()&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		switch {
		case fi.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, rel+"/"
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			h.Typeflag, h.Linkname = tar.TypeSymlink, target
		case fi.Mode().IsRegular():
			id := inode{uint64(st.Dev), st.Ino}
			if first, ok := links[id]; ok && st.Nlink > 1 {
				h.Typeflag, h.Linkname = tar.TypeLink, first
				break
			}
			links[id] = rel
			h.Typeflag, h.Size = tar.TypeReg, fi.Size()
			if cap, err := getxattr(p, "security.capability"); err != nil {
				return err
			} else if cap != "" {
				h.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": cap}
			}
		default:
			return nil // device, FIFO, socket
		}
		if err := writeHeader(tw, h, mtime); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if h.Typeflag == tar.TypeReg {
			return copyFile(tw, p, h.Size)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// getxattr is the attribute's value, or "" when the file has none.
func getxattr(p, name string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(p, name, buf)
	switch {
	case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("%s: getxattr %s: %w", p, name, err)
	}
	return string(buf[:n]), nil
}
