package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestExportRules checks who gets which routes from a route reflector R with every kind of
// neighbour: two clients (C1, C2), an internal non-client (M, another reflector), an eBGP
// peer (E) and an eBGP peer that must learn nothing (X, NoExport). Each announces a prefix
// of its own. R gives its own prefix to all but X; reflects what it learned, from clients,
// M, E or X, to its clients only; never makes itself transit towards E; and gives nothing
// learned to M. M, with no clients of its own, has an eBGP peer too (F): it passes nothing
// learned from F to R, nor from R to F.
func TestExportRules(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	r := startSpeaker(t, "127.0.7.1", port, nil)
	c1 := startSpeaker(t, "127.0.7.2", port, nil)
	c2 := startSpeaker(t, "127.0.7.3", port, nil)
	m := startSpeaker(t, "127.0.7.4", port, nil)
	e := startSpeaker(t, "127.0.7.5", port, func(c *Config) { c.ASN = 65001 })
	x := startSpeaker(t, "127.0.7.6", port, func(c *Config) { c.ASN = 65002 })
	f := startSpeaker(t, "127.0.7.7", port, func(c *Config) { c.ASN = 65003 })

	add := func(s *speaker, n Neighbor) {
		t.Helper()
		if err := s.AddNeighbor(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []*speaker{c1, c2} {
		n := r.neighborOf(c)
		n.Kind, n.RouteReflectorClient = KindReflectorClient, true
		add(r, n)
		n = c.neighborOf(r)
		n.Kind = KindReflector
		add(c, n)
	}
	nm := r.neighborOf(m)
	nm.Kind = KindReflector
	add(r, nm)
	nm = m.neighborOf(r)
	nm.Kind = KindReflector
	add(m, nm)
	for _, p := range []struct {
		s        *speaker
		asn      uint32
		noExport bool
	}{{e, 65001, false}, {x, 65002, true}} {
		n := r.neighborOf(p.s)
		n.ASN, n.Kind, n.NoExport = p.asn, KindExternal, p.noExport
		add(r, n)
		n = p.s.neighborOf(r)
		n.Kind = KindExternal
		add(p.s, n)
	}

	nf := m.neighborOf(f)
	nf.ASN, nf.Kind = 65003, KindExternal
	add(m, nf)
	nf = f.neighborOf(m)
	nf.Kind = KindExternal
	add(f, nf)

	own := map[*speaker]netip.Prefix{
		r: pfx("10.244.1.0/24"), c1: pfx("10.244.2.0/24"), c2: pfx("10.244.3.0/24"),
		m: pfx("10.244.4.0/24"), e: pfx("10.244.5.0/24"), x: pfx("10.244.6.0/24"),
		f: pfx("10.244.7.0/24"),
	}
	for s, p := range own {
		if err := s.Advertise(ctx, p, Attributes{}); err != nil {
			t.Fatal(err)
		}
	}
	// What each neighbour must hold besides its own prefix (C1, C2, E and X peer with R
	// only, F with M only).
	want := map[*speaker][]*speaker{
		c1: {r, c2, m, e, x},
		c2: {r, c1, m, e, x},
		m:  {r, f},
		e:  {r},
		x:  {},
		f:  {m},
	}
	names := map[*speaker]string{r: "R", c1: "C1", c2: "C2", m: "M", e: "E", x: "X", f: "F"}
	learned := func(s *speaker) []string {
		rs, err := s.Routes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, rt := range rs {
			for o, p := range own {
				if rt.Prefix == p {
					out = append(out, names[o])
				}
			}
		}
		slices.Sort(out)
		return out
	}
	check := func() string {
		for s, from := range want {
			var w []string
			for _, o := range from {
				w = append(w, names[o])
			}
			slices.Sort(w)
			if got := learned(s); !slices.Equal(got, w) {
				return fmt.Sprintf("%s holds the prefixes of %v, want %v", names[s], got, w)
			}
		}
		return ""
	}
	eventually(t, 20*time.Second, func() string {
		for _, s := range []*speaker{c1, c2, m, e, x} {
			if msg := s.established(t, r.ip); msg != "" {
				return msg
			}
		}
		if msg := f.established(t, m.ip); msg != "" {
			return msg
		}
		return check()
	})
	// Nothing more arrives later: what must not be sent stays unsent.
	time.Sleep(2 * time.Second)
	if msg := check(); msg != "" {
		t.Fatal(msg)
	}
	// R learned everything it was sent: the import side is not what kept routes away.
	if got, want := learned(r), []string{"C1", "C2", "E", "M", "X"}; !slices.Equal(got, want) {
		t.Fatalf("R holds the prefixes of %v, want %v", got, want)
	}
}
