package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Attachment identifies one interface of one container, the unit that owns addresses.
type Attachment struct {
	ContainerID, IfName string
}

// Allocation is the addresses of one attachment. Each IP carries its subnet's
// prefix length (e.g. 10.244.1.7/24), one per range set, in range-set order.
type Allocation struct {
	Attachment
	IPs []netip.Prefix
}

// errInvalidAttachment is wrapped when a container ID or interface name cannot
// be recorded faithfully in the store.
var errInvalidAttachment = errors.New("invalid attachment")

func (att Attachment) validate() error {
	switch {
	case att.ContainerID == "":
		return fmt.Errorf("%w: empty container ID", errInvalidAttachment)
	case att.IfName == "":
		return fmt.Errorf("%w: empty interface name", errInvalidAttachment)
	case strings.ContainsRune(att.ContainerID, 0), strings.ContainsRune(att.IfName, 0):
		return fmt.Errorf("%w: NUL byte in container ID or interface name", errInvalidAttachment)
	case strings.ContainsRune(att.IfName, '/'):
		return fmt.Errorf("%w: interface name %q contains '/'", errInvalidAttachment, att.IfName)
	case len(encodeOwner(att)) >= unix.PathMax:
		return fmt.Errorf("%w: container ID is too long", errInvalidAttachment)
	}
	return nil
}

// Allocator hands out addresses of one network. It is safe for concurrent use
// by goroutines, by other Allocators and by other processes on the same store.
type Allocator struct {
	cfg         *Config
	dir         string
	lockTimeout time.Duration
	// sem queues this Allocator's goroutines in-process before they poll the
	// flock, which keeps a busy process from burning CPU on lock retries.
	sem chan struct{}
}

// Open opens (creating if needed) the store for one network under cfg.DataDir/<network>/.
func Open(cfg *Config, network string) (*Allocator, error) {
	if cfg == nil {
		return nil, fieldErr("ipam", "missing")
	}
	if err := checkNetName(network); err != nil {
		return nil, err
	}
	c := cfg.clone()
	if err := c.normalize(); err != nil {
		return nil, err
	}
	dir := filepath.Join(c.DataDir, network)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create store: %w", err)
	}
	return &Allocator{cfg: c, dir: dir, lockTimeout: DefaultLockTimeout, sem: make(chan struct{}, 1)}, nil
}

// withStore runs fn holding the network's lock.
func (a *Allocator) withStore(fn func(d *storeDir) error) error {
	deadline := time.Now().Add(a.lockTimeout)
	timer := time.NewTimer(a.lockTimeout)
	defer timer.Stop()
	select {
	case a.sem <- struct{}{}:
	case <-timer.C:
		return fmt.Errorf("%w (%s)", ErrBusy, a.dir)
	}
	defer func() { <-a.sem }()

	lockPath := filepath.Join(a.dir, lockName)
	unlock, err := flockFile(lockPath, deadline)
	if errors.Is(err, unix.ENOENT) {
		// The data dir was removed under us; recreate it rather than fail every ADD.
		if mkErr := os.MkdirAll(a.dir, 0o755); mkErr != nil {
			return fmt.Errorf("create store: %w", mkErr)
		}
		unlock, err = flockFile(lockPath, deadline)
	}
	if err != nil {
		return err
	}
	defer unlock()
	d, err := openStoreDir(a.dir)
	if err != nil {
		return err
	}
	defer d.close()
	return fn(d)
}

// Status returns nil iff an ADD could be served: ranges are configured and
// the store directory exists and is writable. Exhaustion is not a failure.
func (a *Allocator) Status() error {
	if len(a.cfg.Ranges) == 0 {
		return fieldErr("ipam.ranges", "no range configured")
	}
	fi, err := os.Stat(a.dir)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("status: store %s is not a directory", a.dir)
	}
	d, err := openStoreDir(a.dir)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	defer d.close()
	if err := d.probe(); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	return nil
}
