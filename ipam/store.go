package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

const (
	lockName     = "lock"
	cursorPrefix = "last_reserved_ip."
	tmpPrefix    = ".tmp-"
)

// crashHook is called at every step of a mutation where a process could die;
// tests replace it to SIGKILL themselves there.
var crashHook = func(point string) {}

// errTaken means the address already has a reservation entry.
var errTaken = errors.New("address already reserved")

// reservation is one address entry of the store.
type reservation struct {
	name   string // directory entry; addr.String() for entries podroute wrote
	addr   netip.Addr
	target string     // link target; "/" if the entry is not a symlink
	owner  Attachment // decoded target; zero if the entry is not a podroute reservation
}

func newReservation(name string, a netip.Addr, target string) reservation {
	return reservation{name: name, addr: a, target: target, owner: decodeOwner(target)}
}

// storeDir is an open network directory. It uses raw descriptors and *at
// calls: names resolve against the directory without a path walk, and no
// runtime poller bookkeeping is paid for files that never block.
type storeDir struct {
	path string
	fd   int
}

func openStoreDir(path string) (*storeDir, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &storeDir{path: path, fd: fd}, nil
}

func (d *storeDir) close() { _ = unix.Close(d.fd) }

// names lists the directory with getdents(2) into one buffer.
func (d *storeDir) names() ([]string, error) {
	if _, err := unix.Seek(d.fd, 0, 0); err != nil {
		return nil, fmt.Errorf("rewind store %s: %w", d.path, err)
	}
	buf := make([]byte, 16<<10)
	names := make([]string, 0, 256)
	for {
		n, err := unix.Getdents(d.fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read store %s: %w", d.path, err)
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

// load returns every reservation, from the index when it is current and from
// the link targets otherwise (then rewriting the index before the caller
// changes anything). It also removes scratch files left by a writer that
// died: callers hold the lock, so no live writer can own one.
func (d *storeDir) load() ([]reservation, error) {
	names, err := d.names()
	if err != nil {
		return nil, err
	}
	type entry struct {
		name string
		addr netip.Addr
	}
	entries := make([]entry, 0, len(names))
	for _, name := range names {
		if strings.HasPrefix(name, tmpPrefix) {
			if err := unix.Unlinkat(d.fd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				return nil, fmt.Errorf("remove stale %s: %w", filepath.Join(d.path, name), err)
			}
			continue
		}
		a, err := netip.ParseAddr(name)
		if err != nil || a.Zone() != "" {
			continue // lock, index, cursors, or something an operator left here
		}
		entries = append(entries, entry{name, a})
	}

	out := make([]reservation, 0, len(entries))
	if idx, ok := d.readIndex(); ok && len(idx) == len(entries) {
		for _, e := range entries {
			target, ok := idx[e.name]
			if !ok {
				break
			}
			out = append(out, newReservation(e.name, e.addr, target))
		}
		if len(out) == len(entries) {
			return out, nil
		}
		out = out[:0]
	}

	buf := make([]byte, unix.PathMax)
	for _, e := range entries {
		n, err := unix.Readlinkat(d.fd, e.name, buf)
		switch {
		case err == nil:
			out = append(out, newReservation(e.name, e.addr, string(buf[:n])))
		case errors.Is(err, unix.EINVAL):
			// Not a symlink: unknown owner, but the address stays taken so
			// nothing is handed out twice; GC reclaims it.
			out = append(out, newReservation(e.name, e.addr, "/"))
		case errors.Is(err, unix.ENOENT):
		default:
			return nil, fmt.Errorf("read reservation %s: %w", filepath.Join(d.path, e.name), err)
		}
	}
	if err := d.saveIndex(out); err != nil {
		return nil, err
	}
	return out, nil
}

// reserve atomically creates the reservation of a for att; it fails with
// errTaken if any entry of that name exists.
func (d *storeDir) reserve(a netip.Addr, att Attachment) error {
	err := unix.Symlinkat(encodeOwner(att), d.fd, a.String())
	if errors.Is(err, unix.EEXIST) {
		return errTaken
	}
	if err != nil {
		return fmt.Errorf("reserve %s in %s: %w", a, d.path, err)
	}
	return nil
}

// remove deletes a reservation entry; a missing entry is not an error.
func (d *storeDir) remove(name string) error {
	if err := unix.Unlinkat(d.fd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("release %s in %s: %w", name, d.path, err)
	}
	return nil
}

// readCursor returns the last address reserved from range set i, if recorded.
func (d *storeDir) readCursor(i int) (netip.Addr, bool) {
	b, err := os.ReadFile(filepath.Join(d.path, cursorPrefix+strconv.Itoa(i)))
	if err != nil {
		return netip.Addr{}, false // absent or unreadable: start from the beginning
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(b)))
	return a, err == nil
}

var tmpSeq atomic.Uint64

// cursorWidth fits the longest IPv6 text form plus a newline.
const cursorWidth = 40

// writeCursor records a as the last address reserved from range set i. It
// overwrites a fixed-width record with a single write(2) of less than a page:
// the kernel never tears such a write when the writer dies, and readers are
// excluded by the lock. This avoids the create+rename of a new file, which
// costs a directory update on every ADD. The cursor is only a hint: a value
// that does not parse or lies outside the range is ignored, never trusted.
func (d *storeDir) writeCursor(i int, a netip.Addr) error {
	name := cursorPrefix + strconv.Itoa(i)
	fd, err := unix.Openat(d.fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("write cursor %s: %w", filepath.Join(d.path, name), err)
	}
	rec := fmt.Sprintf("%-*s\n", cursorWidth-1, a.String())
	_, werr := unix.Pwrite(fd, []byte(rec), 0)
	cerr := unix.Close(fd)
	if werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("write cursor %s: %w", filepath.Join(d.path, name), werr)
	}
	return nil
}

// probe checks that a file can be created in the directory.
func (d *storeDir) probe() error {
	tmp := fmt.Sprintf("%sstatus-%d-%d", tmpPrefix, os.Getpid(), tmpSeq.Add(1))
	fd, err := unix.Openat(d.fd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("store %s is not writable: %w", d.path, err)
	}
	_ = unix.Close(fd)
	// A concurrent load may already have swept it.
	if err := unix.Unlinkat(d.fd, tmp, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("store %s: remove probe: %w", d.path, err)
	}
	return nil
}

// encodeOwner is the symlink target of a reservation: "<containerID>/<ifname>".
// Interface names cannot contain '/', so the last '/' splits it unambiguously.
func encodeOwner(att Attachment) string { return att.ContainerID + "/" + att.IfName }

func decodeOwner(target string) Attachment {
	i := strings.LastIndexByte(target, '/')
	if i < 0 {
		return Attachment{ContainerID: target}
	}
	return Attachment{ContainerID: target[:i], IfName: target[i+1:]}
}
