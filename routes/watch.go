package routes

import (
	"context"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// watchRcvBuf is large enough for the notifications of a full reconcile of thousands of
// routes (the reconciler's own changes are echoed to the subscription too).
const watchRcvBuf = 4 << 20

// Watch signals when the kernel may have drifted from what the agent installed, so the caller
// can reconcile promptly instead of waiting for its periodic resync:
//   - an agent route was deleted (by hand, or by the kernel for an IPv6 route whose link went
//     away);
//   - a link became up and running: the kernel flushes IPv4 routes of a link that goes down
//     without telling anyone, and routes that failed while it was down can now be added.
//
// Signals are coalesced into a channel with a buffer of one: a burst costs one Reconcile. The
// channel is closed when ctx ends or the subscription fails (e.g. the socket overran); the
// caller should reconcile then and call Watch again. Watch listens in Options.NetNS, or the
// current namespace if none was given.
func (r *Reconciler) Watch(ctx context.Context) (<-chan struct{}, error) {
	r.mu.Lock()
	if r.h == nil {
		r.mu.Unlock()
		return nil, errClosed
	}
	var ns *netns.NsHandle
	if r.ns.IsOpen() {
		n := r.ns
		ns = &n
	}
	r.mu.Unlock()

	done := make(chan struct{})
	var stop sync.Once
	closeDone := func() { stop.Do(func() { close(done) }) }
	onErr := func(err error) { r.log.Debug("route watch", "err", err) }

	routeCh := make(chan netlink.RouteUpdate, 256)
	ropts := netlink.RouteSubscribeOptions{Namespace: ns, ErrorCallback: onErr,
		ReceiveBufferSize: watchRcvBuf, ReceiveBufferForceSize: true}
	if err := netlink.RouteSubscribeWithOptions(routeCh, done, ropts); err != nil {
		// Forcing the buffer size needs CAP_NET_ADMIN; settle for what the sysctl allows.
		ropts.ReceiveBufferForceSize = false
		if err := netlink.RouteSubscribeWithOptions(routeCh, done, ropts); err != nil {
			closeDone()
			return nil, err
		}
	}
	linkCh := make(chan netlink.LinkUpdate, 64)
	lopts := netlink.LinkSubscribeOptions{Namespace: ns, ErrorCallback: onErr, ListExisting: true}
	if err := netlink.LinkSubscribeWithOptions(linkCh, done, lopts); err != nil {
		closeDone()
		go drain(routeCh)
		return nil, err
	}

	out := make(chan struct{}, 1)
	signal := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	go func() {
		defer close(out)
		up := make(map[int]bool) // link index -> up and running, seeded by ListExisting
		rc, lc := routeCh, linkCh
		ctxDone := ctx.Done()
		// Keep draining both until they are closed: the subscriptions block on send otherwise.
		for rc != nil || lc != nil {
			select {
			case <-ctxDone:
				ctxDone = nil
				closeDone()
			case u, ok := <-rc:
				if !ok {
					rc = nil
					if ctx.Err() == nil {
						signal()
						closeDone()
					}
					continue
				}
				if u.Type == unix.RTM_DELROUTE && u.Table == r.table && isAgentRoute(&u.Route) {
					signal()
				}
			case u, ok := <-lc:
				if !ok {
					lc = nil
					if ctx.Err() == nil {
						signal()
						closeDone()
					}
					continue
				}
				idx := u.Attrs().Index
				if u.Header.Type == unix.RTM_DELLINK {
					delete(up, idx)
					continue
				}
				isUp := u.Attrs().RawFlags&(unix.IFF_UP|unix.IFF_RUNNING) == unix.IFF_UP|unix.IFF_RUNNING
				was, known := up[idx]
				up[idx] = isUp
				if isUp && known && !was {
					signal()
				}
			}
		}
	}()
	return out, nil
}

func drain[T any](ch <-chan T) {
	for range ch {
	}
}
