package ipam

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"
)

// normalize validates c in place and fills in defaults. It is idempotent, so
// Open can run it again on configs built by hand rather than by ParseConfig.
func (c *Config) normalize() error {
	c.fillPaths()
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if !filepath.IsAbs(c.DataDir) {
		return fieldErr("ipam.dataDir", fmt.Sprintf("%q must be an absolute path", c.DataDir))
	}
	c.DataDir = filepath.Clean(c.DataDir)

	if len(c.Ranges) == 0 {
		return fieldErr("ipam.ranges", "no range configured")
	}
	for k, p := range c.Exclude {
		path := fmt.Sprintf("ipam.exclude[%d]", k)
		if err := checkPrefix(p, path); err != nil {
			return err
		}
	}
	for i, set := range c.Ranges {
		if len(set) == 0 {
			return fieldErr(c.setPaths[i], "empty range set")
		}
		for j := range set {
			if err := set[j].normalize(c.paths[i][j]); err != nil {
				return err
			}
		}
		for j := range set[1:] {
			if set[j+1].Subnet.Addr().Is4() != set[0].Subnet.Addr().Is4() {
				return fieldErr(c.setPaths[i], "mixes IPv4 and IPv6")
			}
		}
	}
	if err := c.checkOverlaps(); err != nil {
		return err
	}
	// Last, so the messages above speak of what was written, not of its effect.
	for i, set := range c.Ranges {
		for j := range set {
			r := &set[j]
			if _, ok := r.firstFree(r.Start, r.End, c.Exclude, nil); !ok {
				return fieldErr(c.paths[i][j], fmt.Sprintf("no usable address in %s between %s and %s after exclusions", r.Subnet, r.Start, r.End))
			}
		}
	}
	return nil
}

// fillPaths supplies JSON paths for configs that did not come from JSON.
func (c *Config) fillPaths() {
	if len(c.paths) == len(c.Ranges) && len(c.setPaths) == len(c.Ranges) {
		ok := true
		for i := range c.Ranges {
			ok = ok && len(c.paths[i]) == len(c.Ranges[i])
		}
		if ok {
			return
		}
	}
	c.paths = make([][]string, len(c.Ranges))
	c.setPaths = make([]string, len(c.Ranges))
	for i, set := range c.Ranges {
		c.setPaths[i] = fmt.Sprintf("ipam.ranges[%d]", i)
		for j := range set {
			c.paths[i] = append(c.paths[i], fmt.Sprintf("ipam.ranges[%d][%d]", i, j))
		}
	}
}

// checkPrefix rejects what would make containment tests silently wrong.
// Non-canonical prefixes are rejected rather than masked, as host-local does:
// "10.244.1.5/24" is more likely a typo than a request for 10.244.1.0/24.
func checkPrefix(p netip.Prefix, path string) error {
	switch {
	case !p.IsValid():
		return fieldErr(path, "missing or not a valid CIDR")
	case p.Addr().Is4In6():
		return fieldErr(path, fmt.Sprintf("%s is an IPv4-mapped IPv6 prefix; write it as IPv4", p))
	case p.Masked() != p:
		return fieldErr(path, fmt.Sprintf("%s has host bits set; the network is %s", p, p.Masked()))
	}
	return nil
}

func checkAddr(a netip.Addr, subnet netip.Prefix, path string) error {
	switch {
	case a.Zone() != "":
		return fieldErr(path, fmt.Sprintf("%s must not carry a zone", a))
	case a.Is4In6():
		return fieldErr(path, fmt.Sprintf("%s is an IPv4-mapped IPv6 address; write it as IPv4", a))
	case !subnet.Contains(a):
		return fieldErr(path, fmt.Sprintf("%s is outside subnet %s", a, subnet))
	}
	return nil
}

// normalize validates one range and fills in Start and End.
func (r *Range) normalize(path string) error {
	if err := checkPrefix(r.Subnet, path+".subnet"); err != nil {
		return err
	}
	if !r.Start.IsValid() {
		r.Start = firstUsable(r.Subnet)
	} else if err := checkAddr(r.Start, r.Subnet, path+".rangeStart"); err != nil {
		return err
	}
	if !r.End.IsValid() {
		r.End = lastUsable(r.Subnet)
	} else if err := checkAddr(r.End, r.Subnet, path+".rangeEnd"); err != nil {
		return err
	}
	if r.Start.Compare(r.End) > 0 {
		return fieldErr(path+".rangeStart", fmt.Sprintf("%s is after rangeEnd %s", r.Start, r.End))
	}
	if r.Gateway.IsValid() {
		if err := checkAddr(r.Gateway, r.Subnet, path+".gateway"); err != nil {
			return err
		}
	}
	return nil
}

// checkOverlaps rejects any two subnets, in any sets, that share an address:
// an address must map to exactly one range so reservations are unambiguous.
func (c *Config) checkOverlaps() error {
	type entry struct {
		p    netip.Prefix
		path string
	}
	var all []entry
	for i, set := range c.Ranges {
		for j := range set {
			all = append(all, entry{set[j].Subnet, c.paths[i][j]})
		}
	}
	for x := range all {
		for y := x + 1; y < len(all); y++ {
			if all[x].p.Overlaps(all[y].p) {
				return fieldErr("ipam.ranges", fmt.Sprintf("subnet %s (%s) overlaps %s (%s)",
					all[x].p, shortPath(all[x].path), all[y].p, shortPath(all[y].path)))
			}
		}
	}
	return nil
}

// shortPath drops the "ipam." prefix for use inside a message about ipam.ranges.
func shortPath(p string) string {
	if p == "ipam" {
		return "subnet"
	}
	if len(p) > 5 && p[:5] == "ipam." {
		return p[5:]
	}
	return p
}

// setPath is the JSON path of range set i, for messages.
func (c *Config) setPath(i int) string {
	if i < len(c.setPaths) {
		return c.setPaths[i]
	}
	return fmt.Sprintf("ipam.ranges[%d]", i)
}

// clone deep-copies c so an Allocator is immune to later edits by its caller.
func (c *Config) clone() *Config {
	out := *c
	out.Ranges = make([]RangeSet, len(c.Ranges))
	for i, s := range c.Ranges {
		out.Ranges[i] = append(RangeSet(nil), s...)
	}
	out.Exclude = append([]netip.Prefix(nil), c.Exclude...)
	out.Routes = make([]*types.Route, len(c.Routes))
	for i, r := range c.Routes {
		out.Routes[i] = r.Copy()
	}
	out.paths = make([][]string, len(c.paths))
	for i, p := range c.paths {
		out.paths[i] = append([]string(nil), p...)
	}
	out.setPaths = append([]string(nil), c.setPaths...)
	return &out
}

// RangeOf returns the configured range whose subnet contains addr, e.g. to
// find the gateway to report with an allocated address.
func (c *Config) RangeOf(addr netip.Addr) (Range, bool) {
	for _, set := range c.Ranges {
		for _, r := range set {
			if r.Subnet.Contains(addr) {
				return r, true
			}
		}
	}
	return Range{}, false
}
