package ipam

import (
	"fmt"
)

// Release frees every address att holds. An unknown attachment is success.
func (a *Allocator) Release(att Attachment) error {
	err := a.withStore(func(d *storeDir) error {
		crashHook("release:locked")
		res, err := d.load()
		if err != nil {
			return err
		}
		var kept []reservation
		removed := 0
		for _, r := range res {
			if r.owner != att {
				kept = append(kept, r)
				continue
			}
			if err := d.remove(r.name); err != nil {
				return err
			}
			crashHook(fmt.Sprintf("release:removed:%d", removed))
			removed++
		}
		if removed > 0 {
			d.refreshIndex(kept)
			crashHook("release:indexed")
		}
		crashHook("release:done")
		return nil
	})
	if err != nil {
		return fmt.Errorf("release %s/%s: %w", att.ContainerID, att.IfName, err)
	}
	return nil
}

// GC releases every allocation not in valid and returns what it released.
func (a *Allocator) GC(valid []Attachment) ([]Allocation, error) {
	keep := make(map[Attachment]bool, len(valid))
	for _, att := range valid {
		keep[att] = true
	}
	var released []reservation
	err := a.withStore(func(d *storeDir) error {
		res, err := d.load()
		if err != nil {
			return err
		}
		var kept []reservation
		for _, r := range res {
			if keep[r.owner] {
				kept = append(kept, r)
				continue
			}
			if err := d.remove(r.name); err != nil {
				return err
			}
			released = append(released, r)
			crashHook(fmt.Sprintf("gc:removed:%d", len(released)-1))
		}
		if len(released) > 0 {
			d.refreshIndex(kept)
			crashHook("gc:indexed")
		}
		return nil
	})
	out := a.group(released) // report what went even if a later removal failed
	if err != nil {
		return out, fmt.Errorf("gc: %w", err)
	}
	return out, nil
}
