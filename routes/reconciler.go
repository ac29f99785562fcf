package routes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Options configure a Reconciler.
type Options struct {
	// Handle, if set, carries every netlink request (and decides the network namespace).
	// The caller keeps ownership: Close does not close it. Without NETLINK_GET_STRICT_CHK on
	// it, the kernel ignores the dump filter and the reconciler filters in user space; with
	// it, the kernel refuses IPv6 conflict lookups and only same-metric IPv6 conflicts are
	// caught. Prefer NetNS, which gets a socket of each kind.
	Handle *netlink.Handle
	// NetNS is the network namespace to work in when Handle is nil, and the one Watch
	// subscribes in. Values <= 0 (netns.None() is -1) mean the caller's current namespace.
	// The reconciler keeps its own duplicate of the handle; the caller may close theirs.
	NetNS netns.NsHandle
	// Table is the routing table the agent's routes live in; 0 means main (254).
	Table int
	// OnLink sets RTNH_F_ONLINK on every next hop so the kernel accepts gateways that are not
	// covered by a connected route. Off by default: a peer that is not a neighbour on a shared
	// segment is usually a misconfiguration the kernel should refuse loudly. Needs LinkIndex.
	OnLink bool
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
}

// Result summarises one Reconcile.
type Result struct {
	Added, Replaced, Removed, Unchanged int
	// Errors lists the routes that could not be brought in line; the others were.
	Errors []*RouteError
}

// Changed is the number of kernel routes written or deleted.
func (r Result) Changed() int { return r.Added + r.Replaced + r.Removed }

// Err joins the per-route errors, nil if there were none.
func (r Result) Err() error {
	errs := make([]error, len(r.Errors))
	for i, e := range r.Errors {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// Reconciler keeps the kernel's agent routes (protocol 201, with a gateway, multipath or
// blackhole) in one table equal to a desired set. It is safe for concurrent use; calls are
// serialised.
//
// Behaviour, in short:
//   - Only routes with protocol Protocol in the configured table that have the agent's shape
//     (blackhole, or unicast with a gateway on every next hop) are ever replaced or deleted. The CNI plugin's pod routes (same
//     protocol, no gateway, on a device) and every route with another protocol are never
//     touched, whatever the desired set is, including empty.
//   - Conflicts: if a prefix the agent wants is held in the table by a route it does not own
//     (an operator's static route, a pod route, any metric), the agent does not install its
//     own next to it: that prefix gets a RouteError wrapping ErrConflict and the other route
//     stays in charge. Detection is a FIB-match lookup before adding plus an exclusive add, so
//     a same-metric holder is always caught; one at another metric hidden behind a more
//     specific route or a reject route may be missed, and one added after the agent's route
//     coexists, with the kernel's metric order deciding.
//   - Routes are added exclusively, changed with an atomic replace (no moment without a
//     route) keeping the kernel entry's metric and TOS, and removed only after all adds and
//     replaces so traffic moving to a new prefix never sees a gap.
//   - A desired route that fails (invalid, unreachable gateway, link down, conflict) gets a
//     RouteError; the rest proceed. Whatever the kernel has for a prefix that is still
//     desired is kept, even if the desired version of it is invalid or failed to install.
//   - No cache: every Reconcile reads the kernel, so hand-deleted routes and routes flushed
//     by a link going down come back on the next run, and leftovers from a previous agent
//     are swept on the first one.
type Reconciler struct {
	mu        sync.Mutex
	h         *netlink.Handle   // changes and lookups
	dh        *netlink.Handle   // dumps; strict-checking when the reconciler opened it
	lh        []*netlink.Handle // extra sockets for parallel lookups, opened on demand
	ownHandle bool
	ns        netns.NsHandle // duplicate owned by the reconciler, or netns.None()
	table     int
	onlink    bool
	log       *slog.Logger
	lastDump  int // size of the previous dump, to size the next
}

// NewReconciler returns a Reconciler working as configured by opts. Close releases it.
func NewReconciler(opts Options) (*Reconciler, error) {
	table := opts.Table
	switch {
	case table == 0:
		table = unix.RT_TABLE_MAIN
	case table < 0 || int64(table) > math.MaxUint32:
		return nil, fmt.Errorf("routes: table %d out of range", opts.Table)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	r := &Reconciler{table: table, onlink: opts.OnLink, ns: netns.None(),
		log: log.With("component", "routes", "table", table)}
	if opts.NetNS > 0 {
		fd, err := unix.FcntlInt(uintptr(opts.NetNS), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("routes: duplicate netns handle: %w", err)
		}
		r.ns = netns.NsHandle(fd)
	}
	if opts.Handle != nil {
		r.h, r.dh = opts.Handle, opts.Handle
		return r, nil
	}
	var err error
	if r.h, err = r.newHandle(); err == nil {
		r.dh, err = r.newHandle()
	}
	if err != nil {
		if r.h != nil {
			r.h.Close()
		}
		r.closeNS()
		return nil, fmt.Errorf("routes: netlink handle: %w", err)
	}
	r.ownHandle = true
	// Strict checking makes the kernel honour the protocol/table filter in route dumps, so a
	// node with a large table is not dumped whole on every reconcile. It gets its own socket
	// because strict IPv6 route lookups reject the flags the conflict lookup needs.
	if err := r.dh.SetStrictCheck(true); err != nil {
		r.log.Debug("netlink strict check unavailable; filtering dumps in user space", "err", err)
	}
	return r, nil
}

func (r *Reconciler) newHandle() (*netlink.Handle, error) {
	if r.ns.IsOpen() {
		return netlink.NewHandleAt(r.ns, unix.NETLINK_ROUTE)
	}
	return netlink.NewHandle(unix.NETLINK_ROUTE)
}

// Close releases the netlink handle (if the reconciler opened it) and its namespace handle.
func (r *Reconciler) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ownHandle && r.h != nil {
		r.h.Close()
		r.dh.Close()
		for _, h := range r.lh {
			h.Close()
		}
	}
	r.h, r.dh, r.lh = nil, nil, nil
	r.closeNS()
	return nil
}

func (r *Reconciler) closeNS() {
	if r.ns.IsOpen() {
		_ = r.ns.Close()
	}
	r.ns = netns.None()
}

var errClosed = errors.New("routes: reconciler is closed")

// Owned returns the agent routes currently in the kernel, sorted by prefix.
func (r *Reconciler) Owned() ([]Route, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return nil, errClosed
	}
	krs, err := r.dump()
	if err != nil {
		return nil, err
	}
	out := make([]Route, 0, len(krs))
	for i := range krs {
		out = append(out, fromKernel(&krs[i]))
	}
	slices.SortFunc(out, func(a, b Route) int { return comparePrefix(a.Prefix, b.Prefix) })
	return out, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// dump lists the agent routes in the table, both families. The request carries the protocol
// and table so a strict-checking socket gets only those back.
func (r *Reconciler) dump() ([]netlink.Route, error) {
	const attempts = 5
	var err error
	for range attempts {
		var all []netlink.Route
		if all, err = r.dumpOnce(); err == nil {
			return all, nil
		}
		// An interrupted dump may miss routes, and acting on it could report false conflicts,
		// so retry rather than use it.
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("routes: list protocol %d routes in table %d: %w", Protocol, r.table, err)
}

func (r *Reconciler) dumpOnce() ([]netlink.Route, error) {
	filter := &netlink.Route{Protocol: Protocol, Table: r.table}
	mask := netlink.RT_FILTER_PROTOCOL | netlink.RT_FILTER_TABLE
	all := make([]netlink.Route, 0, r.lastDump) // netlink.Route is large; avoid regrowing
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		err := r.dh.RouteListFilteredIter(fam, filter, mask, func(kr netlink.Route) bool {
			if kr.Table == r.table && isAgentRoute(&kr) {
				all = append(all, kr)
			}
			return true
		})
		if errors.Is(err, unix.ENOENT) {
			continue // a strict dump of a table that does not exist yet
		}
		if err != nil {
			return nil, err
		}
	}
	r.lastDump = len(all)
	return all, nil
}

// Reconcile makes the agent routes in the kernel equal to desired: it adds what is missing,
// replaces what differs and removes agent routes that are no longer desired. The returned
// error is fatal for the run (the kernel could not be read; nothing was changed); failures of
// single routes are in Result.Errors. Running it again with the same input changes nothing.
func (r *Reconciler) Reconcile(desired []Route) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res Result
	if r.h == nil {
		return res, errClosed
	}
	start := time.Now()

	want := make(map[netip.Prefix]Route, len(desired))
	order := make([]netip.Prefix, 0, len(desired))
	keep := make(map[netip.Prefix]bool, len(desired))
	for _, d := range desired {
		c, err := canonical(d, r.onlink)
		if err != nil {
			if d.Prefix.IsValid() && d.Prefix == d.Prefix.Masked() {
				keep[d.Prefix] = true
			}
			res.fail(r.log, d, "validate", err)
			continue
		}
		keep[c.Prefix] = true
		if prev, dup := want[c.Prefix]; dup {
			if !sameRoute(prev, c) {
				res.fail(r.log, d, "validate", fmt.Errorf("%w: duplicate prefix %s with different next hops; the first is used", ErrInvalidRoute, c.Prefix))
			}
			continue
		}
		want[c.Prefix] = c
		order = append(order, c.Prefix)
	}

	krs, err := r.dump()
	if err != nil {
		return res, err
	}
	have := make(map[netip.Prefix]*netlink.Route, len(krs))
	var stale []*netlink.Route
	for i := range krs {
		kr := &krs[i]
		p := kernelPrefix(kr)
		if _, dup := have[p]; dup || !p.IsValid() {
			// Several agent routes for one prefix (other metric or TOS, e.g. left by an older
			// agent): the first in dump order is the one in use; the rest go.
			stale = append(stale, kr)
			continue
		}
		have[p] = kr
	}

	var missing []netip.Prefix
	for _, p := range order {
		if _, ok := have[p]; !ok {
			missing = append(missing, p)
		}
	}
	holders := r.holders(missing)

	for _, p := range order {
		w := want[p]
		nr := r.kernelRoute(w)
		if kr, ok := have[p]; ok {
			if matches(w, kr, r.onlink) {
				res.Unchanged++
				continue
			}
			// Keep the kernel entry's key so the replace hits it instead of adding a sibling.
			nr.Priority, nr.Tos = kr.Priority, kr.Tos
			if err := r.h.RouteReplace(nr); err != nil {
				res.fail(r.log, w, "replace", explain(err))
				continue
			}
			res.Replaced++
			r.log.Debug("route replaced", "route", w, "was", fromKernel(kr))
			continue
		}
		if other := holders[p]; other != nil {
			res.fail(r.log, w, "add", conflictErr(other))
			continue
		}
		if err := r.h.RouteAdd(nr); err != nil {
			if errors.Is(err, unix.EEXIST) {
				err = fmt.Errorf("%w: a route with the same table, prefix and metric exists: %v", ErrConflict, err)
			}
			res.fail(r.log, w, "add", explain(err))
			continue
		}
		res.Added++
		r.log.Debug("route added", "route", w)
	}

	for p, kr := range have {
		if !keep[p] {
			stale = append(stale, kr)
		}
	}
	for _, kr := range stale {
		if err := r.h.RouteDel(DeleteKey(kr)); err != nil && !errors.Is(err, unix.ESRCH) {
			res.fail(r.log, fromKernel(kr), "delete", err)
			continue
		}
		res.Removed++
		r.log.Debug("route removed", "route", fromKernel(kr))
	}

	level := slog.LevelDebug
	if res.Changed() > 0 || len(res.Errors) > 0 {
		level = slog.LevelInfo
	}
	r.log.Log(context.Background(), level, "routes reconciled",
		"desired", len(desired), "added", res.Added, "replaced", res.Replaced,
		"removed", res.Removed, "unchanged", res.Unchanged, "errors", len(res.Errors),
		"took", time.Since(start))
	return res, nil
}

// maxLoggedErrors bounds per-route warnings per run: a downed uplink can fail thousands of
// routes at once, and the summary line carries the total.
const maxLoggedErrors = 10

func (res *Result) fail(log *slog.Logger, rt Route, op string, err error) {
	e := &RouteError{Route: rt, Op: op, Err: err}
	res.Errors = append(res.Errors, e)
	if len(res.Errors) <= maxLoggedErrors {
		log.Warn("route not reconciled", "op", op, "route", rt, "err", err)
	}
}

func sameRoute(a, b Route) bool {
	return a.Prefix == b.Prefix && a.Blackhole == b.Blackhole && slices.Equal(a.NextHops, b.NextHops)
}

// explain adds the likely cause to kernel errors that are otherwise cryptic.
func explain(err error) error {
	switch {
	case errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EHOSTUNREACH):
		return fmt.Errorf("gateway is not directly reachable (no connected route to it on an up link): %w", err)
	case errors.Is(err, unix.ENETDOWN):
		return fmt.Errorf("next-hop link is down: %w", err)
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("next-hop link does not exist: %w", err)
	}
	return err
}

func conflictErr(kr *netlink.Route) error {
	return fmt.Errorf("%w: %s route proto %s metric %d in table %d", ErrConflict,
		kernelPrefix(kr), kr.Protocol, kr.Priority, kr.Table)
}

// holders finds, for prefixes about to be added, routes of other owners holding them. Route
// lookups do not take the RTNL lock, so when the reconciler owns its sockets a large first
// reconcile spreads them over a few extra sockets in parallel.
func (r *Reconciler) holders(ps []netip.Prefix) map[netip.Prefix]*netlink.Route {
	found := make([]*netlink.Route, len(ps))
	workers := min(1+len(ps)/512, runtime.GOMAXPROCS(0), 1+maxLookupSockets)
	if r.ownHandle {
		for len(r.lh) < workers-1 {
			h, err := r.newHandle()
			if err != nil {
				r.log.Debug("extra lookup socket", "err", err)
				break
			}
			r.lh = append(r.lh, h)
		}
	}
	hs := append([]*netlink.Handle{r.h}, r.lh...)
	workers = min(workers, len(hs))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(ps); i += workers {
				found[i] = r.holder(hs[w], ps[i])
			}
		})
	}
	wg.Wait()
	out := make(map[netip.Prefix]*netlink.Route)
	for i, kr := range found {
		if kr != nil {
			out[ps[i]] = kr
		}
	}
	return out
}

// maxLookupSockets bounds the extra sockets kept for parallel conflict lookups.
const maxLookupSockets = 3

// holder returns the route in the table holding exactly prefix p if it is not an agent route.
// A FIB-match lookup answers with the entry the kernel would use, which is a fraction of the
// cost of dumping the table; errors (no route, or a reject route answering) mean "unknown",
// and the exclusive add that follows still refuses to share a same-metric slot.
func (r *Reconciler) holder(h *netlink.Handle, p netip.Prefix) *netlink.Route {
	krs, err := h.RouteGetWithOptions(net.IP(p.Addr().AsSlice()), &netlink.RouteGetOptions{FIBMatch: true})
	if err != nil {
		return nil
	}
	for i := range krs {
		kr := &krs[i]
		if kr.Table == r.table && kernelPrefix(kr) == p && !isAgentRoute(kr) {
			return kr
		}
	}
	return nil
}

// kernelRoute builds the netlink route for a canonical desired route. A single next hop is
// sent as a plain route, because that is how the kernel reports it back.
func (r *Reconciler) kernelRoute(w Route) *netlink.Route {
	kr := &netlink.Route{
		Dst:      toIPNet(w.Prefix),
		Table:    r.table,
		Protocol: Protocol,
		Scope:    netlink.SCOPE_UNIVERSE,
		Type:     unix.RTN_UNICAST,
	}
	if w.Blackhole {
		kr.Type = unix.RTN_BLACKHOLE
		return kr
	}
	flags := 0
	if r.onlink {
		flags = unix.RTNH_F_ONLINK
	}
	if len(w.NextHops) == 1 {
		kr.Gw = w.NextHops[0].Gateway.AsSlice()
		kr.LinkIndex = w.NextHops[0].LinkIndex
		kr.Flags = flags
		return kr
	}
	for _, h := range w.NextHops {
		kr.MultiPath = append(kr.MultiPath, &netlink.NexthopInfo{
			LinkIndex: h.LinkIndex, Gw: h.Gateway.AsSlice(), Flags: flags})
	}
	return kr
}
