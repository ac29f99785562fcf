package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// The index caches the owner of every reservation so that loading the store
// costs one readdir and one small file read instead of a readlink per
// address. The reservations stay the only truth; the index is trusted only
// when its checksum holds and it names exactly the reservations in the
// directory, otherwise it is rebuilt from the link targets.
//
// Why an equal set of names means equal owners: every mutation runs under the
// lock, starts from an index that is accurate (load rewrites it after a
// rebuild, before anything changes) and rewrites it after its last change.
// A writer that dies in between has only added entries (Allocate) or only
// removed them (Release, GC, or Allocate undoing its own additions), so the
// names differ from the index unless it undid exactly its own additions, and
// then the owners are unchanged as well. An operator who edits a link target
// in place should delete the index file, which forces a rebuild.

const (
	indexName  = "index"
	indexMagic = "podroute-ipam-index v1"
	maxIndex   = 64 << 20 // far beyond any real store; guards against a corrupt size
)

// crcTable is built on first use: the plugin is exec'd per pod, and building it in init would
// cost every invocation, DEL and STATUS included.
var crcTable = sync.OnceValue(func() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) })

// readIndex returns entry name -> link target, or ok=false if the index is
// absent, torn or malformed. Format: a header line
// "podroute-ipam-index v1 len=<body bytes> crc=<crc32c of body>", then one
// line per reservation, "<name> <target length>:<target>"; the length prefix
// lets a target hold any byte without escaping.
func (d *storeDir) readIndex() (map[string]string, bool) {
	fd, err := unix.Openat(d.fd, indexName, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Size < 0 || st.Size > maxIndex {
		return nil, false
	}
	b := make([]byte, st.Size)
	for off := 0; off < len(b); {
		n, err := unix.Read(fd, b[off:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n <= 0 {
			return nil, false
		}
		off += n
	}
	return parseIndex(b)
}

func parseIndex(b []byte) (map[string]string, bool) {
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 {
		return nil, false
	}
	header, body := string(b[:nl]), b[nl+1:]
	var n int
	var sum uint32
	if _, err := fmt.Sscanf(header, indexMagic+" len=%d crc=%08x", &n, &sum); err != nil {
		return nil, false
	}
	// Bytes past len are the tail of a longer old index whose truncation a
	// dying writer did not get to.
	if n < 0 || n > len(body) || crc32.Checksum(body[:n], crcTable()) != sum {
		return nil, false
	}
	body = body[:n]
	out := make(map[string]string, bytes.Count(body, []byte{'\n'}))
	for len(body) > 0 {
		sp := bytes.IndexByte(body, ' ')
		colon := bytes.IndexByte(body, ':')
		if sp <= 0 || colon < sp {
			return nil, false
		}
		tlen, err := strconv.Atoi(string(body[sp+1 : colon]))
		end := colon + 1 + tlen
		if err != nil || tlen < 0 || end >= len(body) || body[end] != '\n' {
			return nil, false
		}
		out[string(body[:sp])] = string(body[colon+1 : end])
		body = body[end+1:]
	}
	return out, true
}

// saveIndex overwrites the index in place: one pwrite, then a truncate. A
// writer that dies midway leaves a checksum mismatch, i.e. a rebuild, never
// a wrong owner. If the index cannot be written it is removed, which has the
// same effect.
func (d *storeDir) saveIndex(res []reservation) error {
	var body strings.Builder
	for _, r := range res {
		body.WriteString(r.name)
		body.WriteByte(' ')
		body.WriteString(strconv.Itoa(len(r.target)))
		body.WriteByte(':')
		body.WriteString(r.target)
		body.WriteByte('\n')
	}
	b := []byte(fmt.Sprintf("%s len=%d crc=%08x\n%s", indexMagic, body.Len(),
		crc32.Checksum([]byte(body.String()), crcTable()), body.String()))
	err := d.writeIndex(b)
	if err != nil {
		if rmErr := unix.Unlinkat(d.fd, indexName, 0); rmErr != nil && !errors.Is(rmErr, unix.ENOENT) {
			return fmt.Errorf("write index in %s: %w (and removing it: %v)", d.path, err, rmErr)
		}
	}
	return nil
}

func (d *storeDir) writeIndex(b []byte) error {
	fd, err := unix.Openat(d.fd, indexName, unix.O_WRONLY|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for off := 0; off < len(b); {
		n, err := unix.Pwrite(fd, b[off:], int64(off))
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		off += n
	}
	return unix.Ftruncate(fd, int64(len(b)))
}

// refreshIndex records the state after a mutation. Failing to is harmless:
// the mutation only added or only removed names, so the old index no longer
// matches the directory and the next load rebuilds it.
func (d *storeDir) refreshIndex(res []reservation) { _ = d.saveIndex(res) }
