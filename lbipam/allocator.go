package lbipam

import (
	"cmp"
	"fmt"
	"math"
	"math/big"
	"net/netip"
	"slices"
	"strings"
)

// Reasons an allocation failed, used as the Service condition's reason and the Event's.
const (
	ReasonAllocated      = "IPAllocated"
	ReasonPoolExhausted  = "PoolExhausted"
	ReasonNoMatchingPool = "NoMatchingPool"
	ReasonOutsidePools   = "RequestedIPOutsidePools"
	ReasonAlreadyInUse   = "IPAlreadyInUse"
	ReasonInvalidRequest = "InvalidRequest"
)

// Error says why a Service got no address; Reason is one of the Reason constants.
type Error struct {
	Reason, Message string
}

func (e *Error) Error() string { return e.Message }

func errorf(reason, format string, args ...any) *Error {
	return &Error{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// DualStack is a Service's spec.ipFamilyPolicy.
type DualStack int

const (
	SingleStack DualStack = iota
	PreferDualStack
	RequireDualStack
)

// Port is one port of a Service; two Services sharing an address must not both use one.
type Port struct {
	Protocol string
	Port     int32
}

// Request is what a Service of type LoadBalancer asks for.
type Request struct {
	// Key is namespace/name.
	Key    string
	Labels map[string]string
	// Class is spec.loadBalancerClass ("" when unset).
	Class string
	// IPv6 lists spec.ipFamilies in order: false IPv4, true IPv6.
	Families []bool
	Policy   DualStack
	// Requested are the addresses asked for (spec.loadBalancerIP or the annotation), at most
	// one per family; empty means any.
	Requested []netip.Addr
	// SharingKey, when set, lets Services with the same key share an address.
	SharingKey string
	Ports      []Port
	// Local is externalTrafficPolicy Local; Selector the Service's pod selector, rendered.
	// Local Services share only with Local Services of the same selector: their address is
	// advertised from the nodes of their endpoints, which must then be the same.
	Local    bool
	Selector string
}

// Allocator hands out pool addresses to Services. It is not safe for concurrent use: the
// controller calls it from one goroutine.
type Allocator struct {
	pools []Pool // sorted by name
	// holders of each allocated address, and each Service's addresses.
	byIP  map[netip.Addr]map[string]Request
	byKey map[string][]netip.Addr
	// low is, per range, an address below which every address is in use: the search for
	// a free one starts there instead of at the range's first address, which keeps handing
	// out n addresses linear instead of quadratic.
	low map[Range]netip.Addr
}

// free forgets ip, which no Service holds any more.
func (a *Allocator) free(ip netip.Addr) {
	delete(a.byIP, ip)
	for r, l := range a.low {
		// l is invalid past the family's last address (255.255.255.255, ffff:...:ffff).
		if r.Contains(ip) && (!l.IsValid() || ip.Less(l)) {
			a.low[r] = ip
		}
	}
}

// NewAllocator returns an allocator without pools or allocations.
func NewAllocator() *Allocator {
	return &Allocator{byIP: map[netip.Addr]map[string]Request{}, byKey: map[string][]netip.Addr{}, low: map[Range]netip.Addr{}}
}

// SetPools replaces the pools. Addresses already handed out stay until the next Assign of
// their Service, which moves the Service off a pool that no longer serves it.
func (a *Allocator) SetPools(pools []Pool) {
	a.pools = slices.Clone(pools)
	slices.SortFunc(a.pools, func(x, y Pool) int { return cmp.Compare(x.Name, y.Name) })
}

// Keys returns every Service holding addresses, sorted.
func (a *Allocator) Keys() []string {
	out := make([]string, 0, len(a.byKey))
	for k := range a.byKey {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Assigned returns the addresses held by key.
func (a *Allocator) Assigned(key string) []netip.Addr { return slices.Clone(a.byKey[key]) }

// Holders returns the Services holding ip, sorted.
func (a *Allocator) Holders(ip netip.Addr) []string {
	var out []string
	for k := range a.byIP[ip] {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Release frees key's addresses (an address shared with others stays theirs).
func (a *Allocator) Release(key string) {
	for _, ip := range a.byKey[key] {
		delete(a.byIP[ip], key)
		if len(a.byIP[ip]) == 0 {
			a.free(ip)
		}
	}
	delete(a.byKey, key)
}

// Restore claims ips for r, as read from the Service's status after a restart, and
// returns the addresses it could not claim with the reason of the first: an address in no
// pool serving r, or held by a Service r may not share with. The controller restores the
// oldest Services first, so the younger of two claimants loses and its next Assign gives
// it another address.
func (a *Allocator) Restore(r Request, ips []netip.Addr) error {
	a.Release(r.Key)
	var keep []netip.Addr
	var first error
	for _, ip := range ips {
		if err := a.valid(r, append(slices.Clone(keep), ip)); err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		keep = append(keep, ip)
	}
	if len(keep) > 0 {
		a.claim(r, keep)
	}
	return first
}

// Assign returns r's addresses: the ones it holds while they still fit the request and
// the pools (plus an address of a family it lacks and may now get), else new ones. When
// no new ones can be had, r keeps the addresses it held if they are still valid (a changed
// request that cannot be met loses nothing) and the error says why; a Service that held
// none, or none valid, holds none.
func (a *Allocator) Assign(r Request) ([]netip.Addr, error) {
	cur := slices.Clone(a.byKey[r.Key])
	curValid := len(cur) > 0 && a.valid(r, cur) == nil
	if curValid {
		if len(r.Requested) > 0 {
			if sameSet(cur, r.Requested) {
				a.claim(r, cur) // refresh r's ports, labels and sharing key in the holders
				return cur, nil
			}
		} else if ips, ok := a.complete(r, cur); ok {
			a.claim(r, ips)
			return slices.Clone(ips), nil
		}
	}
	a.Release(r.Key)
	ips, err := a.pick(r)
	if err != nil {
		if curValid {
			a.claim(r, cur)
			return cur, err
		}
		return nil, err
	}
	a.claim(r, ips)
	return slices.Clone(ips), nil
}

// complete returns cur plus an address of each family the policy wants and cur lacks; ok
// is false when a family r requires cannot be added (r must then start over).
func (a *Allocator) complete(r Request, cur []netip.Addr) ([]netip.Addr, bool) {
	out := slices.Clone(cur)
	for _, v6 := range a.families(r) {
		if slices.ContainsFunc(cur, func(ip netip.Addr) bool { return ip.Is6() == v6 }) {
			continue
		}
		ip, err := a.pickFamily(r, v6)
		if err != nil {
			if r.Policy == PreferDualStack {
				continue
			}
			return nil, false
		}
		out = append(out, ip)
	}
	// Keep spec.ipFamilies' order.
	if len(r.Families) > 0 {
		slices.SortStableFunc(out, func(x, y netip.Addr) int {
			return cmp.Compare(slices.Index(r.Families, x.Is6()), slices.Index(r.Families, y.Is6()))
		})
	}
	return out, true
}

// families is which families r wants an address of.
func (a *Allocator) families(r Request) []bool {
	fams := r.Families
	if len(fams) == 0 {
		fams = []bool{false}
	}
	if r.Policy == SingleStack {
		return fams[:1]
	}
	return fams
}

// valid checks that every address in ips is one r may hold now.
func (a *Allocator) valid(r Request, ips []netip.Addr) error {
	seen := map[bool]bool{}
	for _, ip := range ips {
		if seen[ip.Is6()] {
			return errorf(ReasonInvalidRequest, "more than one %s address", family(ip.Is6()))
		}
		seen[ip.Is6()] = true
		if len(r.Families) > 0 && !slices.Contains(r.Families, ip.Is6()) {
			return errorf(ReasonInvalidRequest, "%s is %s, not a family of spec.ipFamilies", ip, family(ip.Is6()))
		}
		if !slices.ContainsFunc(a.pools, func(p Pool) bool { return p.Serves(r) && p.Contains(ip) }) {
			return errorf(ReasonOutsidePools, "%s is in no LoadBalancerIPPool that serves this Service", ip)
		}
		if other := a.conflict(r, ip); other != "" {
			return errorf(ReasonAlreadyInUse, "%s is already used by Service %s%s", ip, other, a.whyNotShared(r, ip))
		}
	}
	return nil
}

// conflict names a holder of ip that r may not share it with, or "".
func (a *Allocator) conflict(r Request, ip netip.Addr) string {
	var names []string
	for k, h := range a.byIP[ip] {
		if k != r.Key && !shareable(r, h) {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	if len(names) == 0 {
		return ""
	}
	return names[0]
}

func (a *Allocator) whyNotShared(r Request, ip netip.Addr) string {
	for k, h := range a.byIP[ip] {
		if k == r.Key {
			continue
		}
		switch {
		case r.SharingKey == "" || h.SharingKey == "":
			return " (sharing needs the annotation " + AnnotationSharingKey + " on both)"
		case r.SharingKey != h.SharingKey:
			return " (another sharing key)"
		case r.Local != h.Local || r.Local && r.Selector != h.Selector:
			return " (sharing Services must both use externalTrafficPolicy Cluster, or Local with the same selector)"
		default:
			return " (a port clashes)"
		}
	}
	return ""
}

// shareable reports whether two Services may use one address.
func shareable(x, y Request) bool {
	if x.SharingKey == "" || x.SharingKey != y.SharingKey {
		return false
	}
	if x.Local != y.Local || x.Local && x.Selector != y.Selector {
		return false
	}
	for _, p := range x.Ports {
		if slices.Contains(y.Ports, p) {
			return false
		}
	}
	return true
}

func (a *Allocator) claim(r Request, ips []netip.Addr) {
	for _, ip := range a.byKey[r.Key] {
		if !slices.Contains(ips, ip) {
			delete(a.byIP[ip], r.Key)
			if len(a.byIP[ip]) == 0 {
				a.free(ip)
			}
		}
	}
	for _, ip := range ips {
		if a.byIP[ip] == nil {
			a.byIP[ip] = map[string]Request{}
		}
		a.byIP[ip][r.Key] = r
	}
	a.byKey[r.Key] = slices.Clone(ips)
}

func (a *Allocator) pick(r Request) ([]netip.Addr, error) {
	if len(r.Requested) > 0 {
		if err := a.valid(r, r.Requested); err != nil {
			return nil, err
		}
		return slices.Clone(r.Requested), nil
	}
	var ips []netip.Addr
	var firstErr error
	for _, v6 := range a.families(r) {
		ip, err := a.pickFamily(r, v6)
		if err != nil {
			if r.Policy != PreferDualStack {
				return nil, err
			}
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		ips = append(ips, ip)
	}
	if len(ips) == 0 {
		return nil, firstErr
	}
	return ips, nil
}

// pickFamily returns an address of one family for r: first one already shared under r's
// sharing key (so sharing Services converge on one address), else the lowest free one of
// the first pool, by name, that has one.
func (a *Allocator) pickFamily(r Request, v6 bool) (netip.Addr, error) {
	var pools []Pool
	for _, p := range a.pools {
		if p.Serves(r) && slices.ContainsFunc(p.Ranges, func(rg Range) bool { return rg.First.Is6() == v6 }) {
			pools = append(pools, p)
		}
	}
	if len(pools) == 0 {
		return netip.Addr{}, errorf(ReasonNoMatchingPool, "no LoadBalancerIPPool with %s addresses serves this Service", family(v6))
	}
	if r.SharingKey != "" {
		var shared []netip.Addr
		for ip, hs := range a.byIP {
			if ip.Is6() != v6 || len(hs) == 0 || a.conflict(r, ip) != "" {
				continue
			}
			if slices.ContainsFunc(pools, func(p Pool) bool { return p.Contains(ip) }) {
				shared = append(shared, ip)
			}
		}
		if len(shared) > 0 {
			slices.SortFunc(shared, netip.Addr.Compare)
			return shared[0], nil
		}
	}
	for _, p := range pools {
		for _, rg := range p.Ranges {
			if rg.First.Is6() != v6 {
				continue
			}
			start := rg.First
			if l, ok := a.low[rg]; ok {
				start = l
			}
			for ip := start; ip.IsValid() && ip.Compare(rg.Last) <= 0; ip = ip.Next() {
				if len(a.byIP[ip]) == 0 {
					a.low[rg] = ip
					return ip, nil
				}
			}
			a.low[rg] = rg.Last.Next() // full; a release lowers it again
		}
	}
	names := make([]string, len(pools))
	for i, p := range pools {
		names[i] = p.Name
	}
	return netip.Addr{}, errorf(ReasonPoolExhausted, "every %s address of LoadBalancerIPPool %s is in use", family(v6), strings.Join(names, ", "))
}

// Usage is one family's allocated and total addresses of a pool.
func (a *Allocator) Usage(p Pool, v6 bool) FamilyUsage {
	total := new(big.Int)
	for _, rg := range p.Ranges {
		if rg.First.Is6() == v6 {
			total.Add(total, rg.Size())
		}
	}
	var u FamilyUsage
	if total.IsInt64() {
		u.Total = total.Int64()
	} else {
		u.Total = math.MaxInt64
	}
	for ip := range a.byIP {
		if ip.Is6() == v6 && p.Contains(ip) {
			u.Allocated++
		}
	}
	return u
}

func family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

func sameSet(x, y []netip.Addr) bool {
	if len(x) != len(y) {
		return false
	}
	for _, a := range x {
		if !slices.Contains(y, a) {
			return false
		}
	}
	return true
}
