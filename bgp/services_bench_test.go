package bgp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
)

// BenchmarkServiceAdvertisement measures what 1,000 LoadBalancer Service addresses cost on
// the wire: one podroute speaker advertises 1,000 /32s with ExternalOnly and a community
// (what the agent does for Services), an external eBGP neighbour must hold all of them and
// a mesh neighbour none; then they are withdrawn. The baseline, in the same run, is the
// same 1,000 prefixes advertised plain (no ExternalOnly, no community) and withdrawn.
// Last, one Service's change: one more address advertised, then withdrawn.
//
// Times run from the first Advertise (Withdraw) call until the external neighbour counts
// all (none) of the prefixes as received. Messages and bytes are those the speaker sent
// the external neighbour, read off the TCP stream by a relay between the two (BGP
// framing: every UPDATE, End-of-RIB and keepalives apart), and cross-checked against
// GoBGP's own UPDATE counter.
func BenchmarkServiceAdvertisement(b *testing.B) {
	const n = 1000
	ctx := context.Background()
	port := benchFreePort(b)
	a := benchSpeaker(b, "127.0.40.1", port, testASN, clusterFilter)
	mesh := benchSpeaker(b, "127.0.40.2", port, testASN, serviceFilter)
	ext := benchSpeaker(b, "127.0.40.3", port, 65001, serviceFilter)

	// The external session goes through a relay on 127.0.40.4 that counts a's messages;
	// it dials ext from a's own address, so ext sees a.
	rl := startBGPRelay(b, "127.0.40.4", netip.AddrPortFrom(addr("127.0.40.3"), port), addr("127.0.40.1"))
	relayAddr := addr("127.0.40.4")
	timers := func(nb Neighbor) Neighbor {
		nb.HoldTime, nb.KeepaliveTime, nb.ConnectRetry = 9*time.Second, 3*time.Second, time.Second
		return nb
	}
	must := func(err error) {
		b.Helper()
		if err != nil {
			b.Fatal(err)
		}
	}
	must(a.AddNeighbor(ctx, timers(Neighbor{Address: addr("127.0.40.2"), ASN: testASN, LocalAddress: addr("127.0.40.1"), Port: port, Kind: KindMesh})))
	must(mesh.AddNeighbor(ctx, timers(Neighbor{Address: addr("127.0.40.1"), ASN: testASN, LocalAddress: addr("127.0.40.2"), Port: port, Kind: KindMesh})))
	must(a.AddNeighbor(ctx, timers(Neighbor{Address: relayAddr, ASN: 65001, LocalAddress: addr("127.0.40.1"), Port: rl.port, Kind: KindExternal})))
	must(ext.AddNeighbor(ctx, timers(Neighbor{Address: addr("127.0.40.1"), ASN: testASN, Passive: true, Kind: KindExternal})))
	benchWait(b, 30*time.Second, func() string {
		for _, p := range []netip.Addr{addr("127.0.40.2"), relayAddr} {
			if msg := benchEstablished(a, p); msg != "" {
				return msg
			}
		}
		return ""
	})

	prefixes := make([]netip.Prefix, n)
	for i := range prefixes {
		prefixes[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(i / 256), byte(i % 256)}), 32)
	}
	service := Attributes{Communities: []Community{NewCommunity(64512, 100)}, ExternalOnly: true}

	// received is how many prefixes ext (or mesh) has received from a.
	received := func(s Router, from netip.Addr) uint64 {
		ps, err := s.Neighbors(ctx, false)
		if err != nil {
			b.Fatal(err)
		}
		for _, p := range ps {
			if p.Address == from {
				return p.Received
			}
		}
		return 0
	}
	type phase struct {
		calls, total       time.Duration
		updates, bytes     uint64
		gobgpUpdates, mesh uint64
	}
	// run applies op to every prefix and waits for ext to hold want of them.
	run := func(op func(netip.Prefix) error, ps []netip.Prefix, want uint64) phase {
		b.Helper()
		// Let what is in flight (keepalives, an earlier phase's tail) pass first.
		time.Sleep(200 * time.Millisecond)
		u0, by0 := rl.updates.Load(), rl.updateBytes.Load()
		g0, m0 := sentUpdates(b, a, relayAddr), sentUpdates(b, a, addr("127.0.40.2"))
		start := time.Now()
		for _, p := range ps {
			must(op(p))
		}
		calls := time.Since(start)
		benchWait(b, 60*time.Second, func() string {
			if got := received(ext, addr("127.0.40.1")); got != want {
				return fmt.Sprintf("external neighbour holds %d prefixes, want %d", got, want)
			}
			return ""
		})
		total := time.Since(start)
		// A last UPDATE could only follow the count's change; give it a moment to show.
		time.Sleep(200 * time.Millisecond)
		return phase{calls: calls, total: total,
			updates: rl.updates.Load() - u0, bytes: rl.updateBytes.Load() - by0,
			gobgpUpdates: sentUpdates(b, a, relayAddr) - g0, mesh: sentUpdates(b, a, addr("127.0.40.2")) - m0}
	}
	advertise := func(attrs Attributes) func(netip.Prefix) error {
		return func(p netip.Prefix) error { return a.Advertise(ctx, p, attrs) }
	}
	withdraw := func(p netip.Prefix) error { return a.Withdraw(ctx, p) }

	var svcAdd, svcDel, plainAdd, plainDel, oneAdd, oneDel phase
	for b.Loop() {
		svcAdd = run(advertise(service), prefixes, n)
		if got := received(mesh, addr("127.0.40.1")); got != 0 {
			b.Fatalf("the mesh neighbour received %d external-only prefixes", got)
		}
		rs, err := ext.Routes(ctx)
		must(err)
		if len(rs) != n {
			b.Fatalf("external neighbour has %d routes, want %d", len(rs), n)
		}
		for _, r := range rs {
			if c := r.Paths[0].Communities; len(c) != 1 || c[0] != service.Communities[0] {
				b.Fatalf("%s arrived with communities %v", r.Prefix, c)
			}
		}
		svcDel = run(withdraw, prefixes, 0)
		if got := received(mesh, addr("127.0.40.1")); got != 0 {
			b.Fatalf("the mesh neighbour holds %d prefixes after the withdrawal", got)
		}

		plainAdd = run(advertise(Attributes{}), prefixes, n)
		benchWait(b, 30*time.Second, func() string {
			if got := received(mesh, addr("127.0.40.1")); got != n {
				return fmt.Sprintf("the mesh neighbour holds %d plain prefixes, want %d", got, n)
			}
			return ""
		})
		plainDel = run(withdraw, prefixes, 0)

		// One Service's endpoints change: its address comes, then goes, with the other
		// 999 Service addresses in place.
		svcRest := prefixes[1:]
		_ = run(advertise(service), svcRest, n-1)
		oneAdd = run(advertise(service), prefixes[:1], n)
		oneDel = run(withdraw, prefixes[:1], n-1)
		_ = run(withdraw, svcRest, 0)
	}

	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	row := func(name string, p phase) {
		b.Logf("| %s | %.1f | %.1f | %d | %d | %d | %d |", name, ms(p.calls), ms(p.total), p.updates, p.bytes, p.gobgpUpdates, p.mesh)
	}
	b.Logf("1,000 /32s, milliseconds; UPDATE messages and bytes a sent the external neighbour (relay; GoBGP's counter beside), UPDATEs to the mesh neighbour")
	b.Logf("| phase | calls returned | external holds all | UPDATEs | UPDATE bytes | GoBGP UPDATEs | mesh UPDATEs |")
	b.Logf("|---|---:|---:|---:|---:|---:|---:|")
	row("advertise, ExternalOnly + community", svcAdd)
	row("withdraw, ExternalOnly + community", svcDel)
	row("advertise, plain (baseline)", plainAdd)
	row("withdraw, plain (baseline)", plainDel)
	row("one Service advertised (999 in place)", oneAdd)
	row("one Service withdrawn (999 in place)", oneDel)
	b.Logf("ratio service/plain: advertise time %.2f, messages %.2f, bytes %.2f; withdraw time %.2f, messages %.2f, bytes %.2f",
		ratio(ms(svcAdd.total), ms(plainAdd.total)), ratio(float64(svcAdd.updates), float64(plainAdd.updates)), ratio(float64(svcAdd.bytes), float64(plainAdd.bytes)),
		ratio(ms(svcDel.total), ms(plainDel.total)), ratio(float64(svcDel.updates), float64(plainDel.updates)), ratio(float64(svcDel.bytes), float64(plainDel.bytes)))

	// Withdrawals do reach the mesh neighbour: GoBGP applies no export policy to a
	// withdrawal and sends it to every neighbour, whether it got the route or not.
	if svcAdd.mesh != 0 || oneAdd.mesh != 0 {
		b.Errorf("external-only prefixes sent the mesh neighbour UPDATEs: %d, %d", svcAdd.mesh, oneAdd.mesh)
	}
	if oneAdd.updates != 1 || oneDel.updates != 1 {
		b.Errorf("one Service's change took %d and %d UPDATEs, want 1 each", oneAdd.updates, oneDel.updates)
	}
	b.ReportMetric(ms(svcAdd.total), "svc-advertise-ms")
	b.ReportMetric(ms(svcDel.total), "svc-withdraw-ms")
	b.ReportMetric(ms(plainAdd.total), "plain-advertise-ms")
	b.ReportMetric(ms(plainDel.total), "plain-withdraw-ms")
	b.ReportMetric(float64(svcAdd.updates), "svc-advertise-updates")
	b.ReportMetric(float64(svcAdd.bytes), "svc-advertise-bytes")
	b.ReportMetric(float64(plainAdd.updates), "plain-advertise-updates")
	b.ReportMetric(float64(plainAdd.bytes), "plain-advertise-bytes")
	b.ReportMetric(float64(svcDel.updates), "svc-withdraw-updates")
	b.ReportMetric(float64(svcDel.mesh), "svc-withdraw-mesh-updates")
	b.ReportMetric(float64(plainDel.updates), "plain-withdraw-updates")
	b.ReportMetric(ratio(ms(svcAdd.total), ms(plainAdd.total)), "advertise-time/baseline")
	b.ReportMetric(float64(oneAdd.updates), "one-service-updates")
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// sentUpdates is GoBGP's count of UPDATE messages r sent peer (End-of-RIB included).
func sentUpdates(b *testing.B, r Router, peer netip.Addr) uint64 {
	b.Helper()
	var n uint64
	err := r.(*router).srv.ListPeer(context.Background(), &api.ListPeerRequest{Address: peer.String()}, func(p *api.Peer) {
		n += p.GetState().GetMessages().GetSent().GetUpdate()
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}

func benchFreePort(b *testing.B) uint16 {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// benchSpeaker starts a quiet router on ip:port.
func benchSpeaker(b *testing.B, ip string, port uint16, asn uint32, f ImportFilter) Router {
	b.Helper()
	r, err := New(Config{ASN: asn, RouterID: addr(ip), ListenAddresses: []netip.Addr{addr(ip)}, ListenPort: int32(port),
		ImportFilter: f, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = r.Stop(false) })
	return r
}

func benchEstablished(r Router, peer netip.Addr) string {
	ps, err := r.Sessions(context.Background())
	if err != nil {
		return err.Error()
	}
	for _, p := range ps {
		if p.Address == peer && p.State == StateEstablished {
			return ""
		}
	}
	return fmt.Sprintf("no session with %s", peer)
}

// benchWait polls cond every 5ms until it returns "".
func benchWait(b *testing.B, timeout time.Duration, cond func() string) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("not within %s: %s", timeout, msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// bgpRelay forwards TCP connections to a BGP speaker, counting the UPDATE messages (and
// their bytes, headers included) that flow towards it.
type bgpRelay struct {
	port                 uint16
	updates, updateBytes atomic.Uint64
}

func startBGPRelay(b *testing.B, listen string, to netip.AddrPort, from netip.Addr) *bgpRelay {
	b.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(listen, "0"))
	if err != nil {
		b.Fatal(err)
	}
	r := &bgpRelay{port: uint16(ln.Addr().(*net.TCPAddr).Port)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	b.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := d.Dial("tcp", to.String())
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				defer out.Close()
				_ = r.countUpdates(out, in)
			}()
			go func() {
				defer wg.Done()
				defer in.Close()
				_, _ = io.Copy(in, out)
			}()
		}
	}()
	return r
}

// countUpdates copies BGP messages from src to dst, counting UPDATEs (type 2).
func (r *bgpRelay) countUpdates(dst io.Writer, src io.Reader) error {
	hdr := make([]byte, 19)
	body := make([]byte, 65535)
	for {
		if _, err := io.ReadFull(src, hdr); err != nil {
			return fmt.Errorf("read header: %w", err)
		}
		size := int(binary.BigEndian.Uint16(hdr[16:18]))
		if size < 19 || size > len(body)+19 {
			return errors.New("bad BGP message length")
		}
		if _, err := io.ReadFull(src, body[:size-19]); err != nil {
			return fmt.Errorf("read body: %w", err)
		}
		if hdr[18] == 2 {
			r.updates.Add(1)
			r.updateBytes.Add(uint64(size))
		}
		if _, err := dst.Write(append(hdr[:19:19], body[:size-19]...)); err != nil {
			return fmt.Errorf("write: %w", err)
		}
	}
}
