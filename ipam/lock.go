package ipam

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultLockTimeout bounds how long a mutation waits for the network's lock.
const DefaultLockTimeout = 30 * time.Second

// flockFile takes an exclusive flock(2) on path, polling until deadline.
// Each call opens its own descriptor: flock locks belong to the open file
// description, so two goroutines of one process exclude each other just like
// two processes do, and the kernel drops the lock if the holder dies.
// Polling (rather than a blocking flock) is what makes the wait boundable.
func flockFile(path string, deadline time.Time) (unlock func(), err error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file %s: %w", path, err)
	}
	backoff := 100 * time.Microsecond
	for {
		err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = unix.Close(fd) }, nil // close releases the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			_ = unix.Close(fd)
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			_ = unix.Close(fd)
			return nil, fmt.Errorf("%w (%s)", ErrBusy, path)
		}
		// Jitter keeps dozens of waiting plugin processes from waking in step.
		sleep := backoff/2 + rand.N(backoff)
		if sleep > left {
			sleep = left
		}
		time.Sleep(sleep)
		if backoff < 10*time.Millisecond {
			backoff *= 2
		}
	}
}
