package ipam

import "net/netip"

// lastAddr is the highest address in p (the IPv4 broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	b := a.AsSlice()
	for i := range b {
		hostBits := a.BitLen() - p.Bits() - 8*(len(b)-1-i)
		switch {
		case hostBits >= 8:
			b[i] = 0xff
		case hostBits > 0:
			b[i] |= byte(1)<<hostBits - 1
		}
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}

// hasSpecialEnds reports whether the subnet's first address (IPv4 network,
// IPv6 subnet-router anycast) and, for IPv4, its last (broadcast) are off
// limits. Point-to-point sized subnets use every address: RFC 3021 for IPv4
// /31 and /32, RFC 6164 for IPv6 /127 and /128.
func hasSpecialEnds(p netip.Prefix) bool { return p.Bits() < p.Addr().BitLen()-1 }

// firstUsable and lastUsable are the default rangeStart and rangeEnd.
func firstUsable(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	if hasSpecialEnds(p) {
		return a.Next()
	}
	return a
}

func lastUsable(p netip.Prefix) netip.Addr {
	a := lastAddr(p)
	if hasSpecialEnds(p) && p.Addr().Is4() {
		return a.Prev()
	}
	return a
}

// offLimits reports whether a may never be handed out from r regardless of
// exclusions: network, broadcast, subnet-router anycast, gateway.
func (r *Range) offLimits(a netip.Addr) bool {
	if a == r.Gateway {
		return true
	}
	if !hasSpecialEnds(r.Subnet) {
		return false
	}
	if a == r.Subnet.Addr() {
		return true
	}
	return r.Subnet.Addr().Is4() && a == lastAddr(r.Subnet)
}

// inPool reports whether a lies within [Start, End].
func (r *Range) inPool(a netip.Addr) bool {
	return a.BitLen() == r.Start.BitLen() && r.Start.Compare(a) <= 0 && a.Compare(r.End) <= 0
}

// firstFree returns the lowest address in [from, to] of r that is neither off
// limits, excluded nor taken. It steps over whole excluded prefixes, so its
// cost is bounded by the number of taken addresses and exclusions, not by the
// size of the range (an IPv6 /64 is as cheap as an IPv4 /24).
func (r *Range) firstFree(from, to netip.Addr, excl []netip.Prefix, taken func(netip.Addr) bool) (netip.Addr, bool) {
	a := from
	for a.IsValid() && a.Compare(to) <= 0 {
		if p, ok := excludedBy(a, excl); ok {
			a = lastAddr(p).Next() // invalid past the end of the address space
			continue
		}
		if r.offLimits(a) || (taken != nil && taken(a)) {
			a = a.Next()
			continue
		}
		return a, true
	}
	return netip.Addr{}, false
}

func excludedBy(a netip.Addr, excl []netip.Prefix) (netip.Prefix, bool) {
	for _, p := range excl {
		if p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}
