package ipam

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Get returns what att holds (for CHECK); ok is false if it holds nothing.
// Addresses are ordered by range set; any outside the configured ranges
// (left over from an older configuration) come last with a host-length prefix.
func (a *Allocator) Get(att Attachment) (Allocation, bool, error) {
	var addrs []netip.Addr
	err := a.withStore(func(d *storeDir) error {
		res, err := d.load()
		if err != nil {
			return err
		}
		for _, r := range res {
			if r.owner == att {
				addrs = append(addrs, r.addr)
			}
		}
		return nil
	})
	if err != nil {
		return Allocation{}, false, fmt.Errorf("get %s/%s: %w", att.ContainerID, att.IfName, err)
	}
	if len(addrs) == 0 {
		return Allocation{}, false, nil
	}
	return a.allocation(att, addrs), true, nil
}

// List returns every allocation, sorted by container ID and interface name.
func (a *Allocator) List() ([]Allocation, error) {
	var res []reservation
	err := a.withStore(func(d *storeDir) error {
		var err error
		res, err = d.load()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	return a.group(res), nil
}

// setOf returns the range set and range whose subnet contains addr.
func (a *Allocator) setOf(addr netip.Addr) (int, *Range) {
	for i, set := range a.cfg.Ranges {
		for k := range set {
			if set[k].Subnet.Contains(addr) {
				return i, &set[k]
			}
		}
	}
	return len(a.cfg.Ranges), nil
}

// allocation orders addrs by range set and gives each its subnet's length.
func (a *Allocator) allocation(att Attachment, addrs []netip.Addr) Allocation {
	type item struct {
		set int
		p   netip.Prefix
	}
	items := make([]item, 0, len(addrs))
	for _, addr := range addrs {
		i, r := a.setOf(addr)
		bits := addr.BitLen()
		if r != nil {
			bits = r.Subnet.Bits()
		}
		items = append(items, item{i, netip.PrefixFrom(addr, bits)})
	}
	slices.SortFunc(items, func(x, y item) int {
		return cmp.Or(cmp.Compare(x.set, y.set), x.p.Addr().Compare(y.p.Addr()))
	})
	out := Allocation{Attachment: att, IPs: make([]netip.Prefix, len(items))}
	for k, it := range items {
		out.IPs[k] = it.p
	}
	return out
}

func (a *Allocator) group(res []reservation) []Allocation {
	by := map[Attachment][]netip.Addr{}
	for _, r := range res {
		by[r.owner] = append(by[r.owner], r.addr)
	}
	out := make([]Allocation, 0, len(by))
	for att, addrs := range by {
		out = append(out, a.allocation(att, addrs))
	}
	slices.SortFunc(out, func(x, y Allocation) int {
		return cmp.Or(strings.Compare(x.ContainerID, y.ContainerID), strings.Compare(x.IfName, y.IfName))
	})
	return out
}
