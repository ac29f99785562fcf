package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Allocate reserves one address from each range set for att. It is idempotent:
// an attachment that already holds addresses gets the same ones back. If any
// range set cannot be served, nothing reserved by this call is kept.
func (a *Allocator) Allocate(att Attachment) (Allocation, error) {
	if err := att.validate(); err != nil {
		return Allocation{}, err
	}
	var out Allocation
	err := a.withStore(func(d *storeDir) error {
		crashHook("allocate:locked")
		res, err := d.load()
		if err != nil {
			return err
		}
		taken := make(map[netip.Addr]struct{}, len(res))
		var mine []netip.Addr
		for _, r := range res {
			taken[r.addr] = struct{}{}
			if r.owner == att {
				mine = append(mine, r.addr)
			}
		}

		type reserved struct {
			set  int
			addr netip.Addr
		}
		var fresh []reserved
		rollback := func(cause error) error {
			crashHook("allocate:rollback")
			for k := len(fresh) - 1; k >= 0; k-- {
				if err := d.remove(fresh[k].addr.String()); err != nil {
					// The leftover belongs to att, so its Release or a GC reclaims it.
					return fmt.Errorf("%w (and rolling back: %v)", cause, err)
				}
				crashHook(fmt.Sprintf("allocate:rolled-back:%d", k))
			}
			return cause
		}

		ips := make([]netip.Prefix, len(a.cfg.Ranges))
		for i := range a.cfg.Ranges {
			// Reuse what att holds, which also completes an allocation
			// interrupted by a crash.
			if addr, r, ok := a.usableOwned(i, mine); ok {
				ips[i] = netip.PrefixFrom(addr, r.Subnet.Bits())
				continue
			}
			for {
				addr, r, err := a.pick(d, i, taken)
				if err != nil {
					return rollback(err)
				}
				err = d.reserve(addr, att)
				if errors.Is(err, errTaken) {
					// An entry load could not parse as ours; never share it.
					taken[addr] = struct{}{}
					continue
				}
				if err != nil {
					return rollback(err)
				}
				taken[addr] = struct{}{}
				fresh = append(fresh, reserved{i, addr})
				ips[i] = netip.PrefixFrom(addr, r.Subnet.Bits())
				crashHook(fmt.Sprintf("allocate:reserved:%d", i))
				break
			}
		}
		for _, f := range fresh {
			if err := d.writeCursor(f.set, f.addr); err != nil {
				return rollback(err)
			}
			crashHook(fmt.Sprintf("allocate:cursor:%d", f.set))
		}
		if len(fresh) > 0 {
			for _, f := range fresh {
				res = append(res, newReservation(f.addr.String(), f.addr, encodeOwner(att)))
			}
			d.refreshIndex(res)
			crashHook("allocate:indexed")
		}
		crashHook("allocate:done")
		out = Allocation{Attachment: att, IPs: ips}
		return nil
	})
	if err != nil {
		return Allocation{}, fmt.Errorf("allocate for %s/%s: %w", att.ContainerID, att.IfName, err)
	}
	return out, nil
}

// usableOwned returns an address among owned that range set i could still
// hand out under the current configuration.
func (a *Allocator) usableOwned(i int, owned []netip.Addr) (netip.Addr, *Range, bool) {
	set := a.cfg.Ranges[i]
	for _, addr := range owned {
		for k := range set {
			r := &set[k]
			if r.inPool(addr) && !r.offLimits(addr) {
				if _, excl := excludedBy(addr, a.cfg.Exclude); !excl {
					return addr, r, true
				}
			}
		}
	}
	return netip.Addr{}, nil, false
}

// pick finds the next free address of range set i, continuing after the last
// one handed out and wrapping around, so a just-freed address is reused last:
// immediate reuse races with stale neighbour entries and routes elsewhere.
func (a *Allocator) pick(d *storeDir, i int, taken map[netip.Addr]struct{}) (netip.Addr, *Range, error) {
	set := a.cfg.Ranges[i]
	isTaken := func(x netip.Addr) bool { _, ok := taken[x]; return ok }
	free := func(k int, from, to netip.Addr) (netip.Addr, *Range, bool) {
		r := &set[k]
		x, ok := r.firstFree(from, to, a.cfg.Exclude, isTaken)
		return x, r, ok
	}

	cur, hasCur := d.readCursor(i)
	at := -1
	if hasCur {
		for k := range set {
			if set[k].inPool(cur) {
				at = k
				break
			}
		}
	}
	if at < 0 { // no cursor yet, or the configuration moved away from it
		for k := range set {
			if x, r, ok := free(k, set[k].Start, set[k].End); ok {
				return x, r, nil
			}
		}
		return netip.Addr{}, nil, a.exhausted(i)
	}
	if next := cur.Next(); next.IsValid() && next.Compare(set[at].End) <= 0 {
		if x, r, ok := free(at, next, set[at].End); ok {
			return x, r, nil
		}
	}
	for step := 1; step < len(set); step++ {
		k := (at + step) % len(set)
		if x, r, ok := free(k, set[k].Start, set[k].End); ok {
			return x, r, nil
		}
	}
	if x, r, ok := free(at, set[at].Start, cur); ok {
		return x, r, nil
	}
	return netip.Addr{}, nil, a.exhausted(i)
}

func (a *Allocator) exhausted(i int) error {
	var subnets []string
	for _, r := range a.cfg.Ranges[i] {
		subnets = append(subnets, r.Subnet.String())
	}
	return fmt.Errorf("%w in %s (%s)", ErrExhausted, a.cfg.setPath(i), strings.Join(subnets, ", "))
}
