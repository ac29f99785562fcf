package bfd

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"k8s.io/apimachinery/pkg/util/wait"
)

// The sessions run over the loopback interface between 127.0.0.1 and 127.0.0.2 (both are
// on lo), each end with a Server listening on its own address, on a random high port.

var (
	addrA = netip.MustParseAddr("127.0.0.1")
	addrB = netip.MustParseAddr("127.0.0.2")
	fast  = Timers{MinTx: 50 * time.Millisecond, MinRx: 50 * time.Millisecond, Multiplier: 3}
)

type end struct {
	srv    *Server
	events chan Event
}

func newEnd(t *testing.T, port int, self netip.Addr) *end {
	t.Helper()
	e := &end{events: make(chan Event, 64)}
	e.srv = New(Config{
		Port: port, Listen: []netip.Addr{self},
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		OnChange: func(ev Event) { e.events <- ev },
	})
	t.Cleanup(func() { e.srv.Close(false) })
	return e
}

// wantEvent waits for the next event reaching state and returns it with the time it took.
func (e *end) wantEvent(t *testing.T, state State, within time.Duration) (Event, time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := time.After(within)
	for {
		select {
		case ev := <-e.events:
			if ev.State == state {
				return ev, time.Since(start)
			}
		case <-deadline:
			t.Fatalf("no change to %s within %s", state, within)
		}
	}
}

func testPort() int { return 20000 + rand.IntN(20000) }

// pair brings a session up between A and B.
func pair(t *testing.T, tm Timers) (a, b *end, port int) {
	t.Helper()
	port = testPort()
	a, b = newEnd(t, port, addrA), newEnd(t, port, addrB)
	if err := a.srv.Set(addrB, addrA, tm); err != nil {
		t.Fatal(err)
	}
	if err := b.srv.Set(addrA, addrB, tm); err != nil {
		t.Fatal(err)
	}
	a.wantEvent(t, StateUp, 3*time.Second)
	b.wantEvent(t, StateUp, 3*time.Second)
	return a, b, port
}

// settled waits for the Poll sequence after Up: both ends agree on the fast detection time.
func settled(t *testing.T, e *end, peer netip.Addr, detect time.Duration) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 3*time.Second, true, func(context.Context) (bool, error) {
		st, ok := e.srv.Status(peer)
		return ok && st.State == StateUp && st.DetectTime == detect, nil
	})
	if err != nil {
		st, _ := e.srv.Status(peer)
		t.Fatalf("session with %s: detection time %s, want %s (%+v)", peer, st.DetectTime, detect, st)
	}
}

func TestUpAtConfiguredRate(t *testing.T) {
	a, _, _ := pair(t, fast)
	settled(t, a, addrB, 150*time.Millisecond)
	before, _ := a.srv.Status(addrB)
	time.Sleep(time.Second)
	after, _ := a.srv.Status(addrB)
	// 50 ms less 0 to 25 % of jitter: 20 to 27 packets a second each way.
	if sent, got := after.Sent-before.Sent, after.Received-before.Received; sent < 18 || sent > 30 || got < 18 || got > 30 {
		t.Errorf("in 1 s: sent %d, received %d packets; want about 23 each at 50 ms", sent, got)
	}
	if after.Flaps != 0 {
		t.Errorf("flaps: %d", after.Flaps)
	}
}

// crashedPeer brings a session up, then closes B's server without AdminDown (as a crash)
// and waits for A's session to go down: the event and how long after the crash.
func crashedPeer(t *testing.T) (a *end, port int, ev Event, took time.Duration) {
	t.Helper()
	a, b, port := pair(t, fast)
	settled(t, a, addrB, 150*time.Millisecond)
	b.srv.Close(false)
	ev, took = a.wantEvent(t, StateDown, 2*time.Second)
	return a, port, ev, took
}

func TestSilentPeerIsDown(t *testing.T) {
	a, _, ev, took := crashedPeer(t)
	if ev.Diag != DiagDetectionExpired || ev.Previous != StateUp || ev.RemoteState != StateUp {
		t.Errorf("event %+v, want Up -> Down for detection time expired, the peer last saying Up", ev)
	}
	if took < 100*time.Millisecond || took > 400*time.Millisecond {
		t.Errorf("down after %s, want about the 150 ms detection time", took)
	}
	if st, _ := a.srv.Status(addrB); st.Flaps != 1 {
		t.Errorf("flaps %d, want 1", st.Flaps)
	}
	t.Logf("silent peer declared down after %s", took)
}

func TestAdminDownIsNotAFailure(t *testing.T) {
	a, b, _ := pair(t, fast)
	settled(t, a, addrB, 150*time.Millisecond)
	b.srv.Close(true)
	ev, took := a.wantEvent(t, StateDown, time.Second)
	if ev.RemoteState != StateAdminDown || ev.Diag != DiagNeighborDown || ev.RemoteDiag != DiagAdminDown {
		t.Errorf("event %+v, want the peer's AdminDown (diag administratively down)", ev)
	}
	if took > 50*time.Millisecond {
		t.Errorf("AdminDown seen after %s, want at once", took)
	}
}

// A peer that comes back (a restarted agent: a new discriminator) is taken on by its
// address and the session comes up again.
func TestRestartedPeer(t *testing.T) {
	a, port, _, _ := crashedPeer(t)
	b2 := newEnd(t, port, addrB)
	if err := b2.srv.Set(addrA, addrB, fast); err != nil {
		t.Fatal(err)
	}
	a.wantEvent(t, StateUp, 3*time.Second)
	b2.wantEvent(t, StateUp, time.Second)
	settled(t, a, addrB, 150*time.Millisecond)
}

// New timers on a running session reach the peer by a Poll sequence, without a flap.
func TestTimersChangeWhileUp(t *testing.T) {
	a, b, _ := pair(t, fast)
	settled(t, b, addrA, 150*time.Millisecond)
	slow := Timers{MinTx: 200 * time.Millisecond, MinRx: 200 * time.Millisecond, Multiplier: 4}
	if err := a.srv.Set(addrB, addrA, slow); err != nil {
		t.Fatal(err)
	}
	// B now hears from A every 200 ms, with A's multiplier 4.
	settled(t, b, addrA, 800*time.Millisecond)
	// A detects with its own MinRx 200 ms times B's multiplier 3.
	settled(t, a, addrB, 600*time.Millisecond)
	for _, e := range []*end{a, b} {
		select {
		case ev := <-e.events:
			t.Errorf("state changed: %+v", ev)
		default:
		}
	}
}

// Packets that must not count: from a router away (TTL below 255), with authentication,
// for an unknown discriminator, from an unknown address, malformed. None of them moves the
// session, and each is dropped.
func TestHostilePackets(t *testing.T) {
	a, _, port := pair(t, fast)
	settled(t, a, addrB, 150*time.Millisecond)
	before, _ := a.srv.Status(addrB)
	droppedBefore := a.srv.Dropped()
	down := packet{state: StateDown, diag: DiagNeighborDown, mult: 3, myDisc: 77, desiredMinTx: 1e6, requiredMinRx: 1e6}
	authed := down
	authed.auth = true
	unknown := down
	unknown.yourDisc = 12345
	adminDown := down
	adminDown.state = StateAdminDown
	cases := []struct {
		name string
		from netip.Addr
		ttl  int
		b    []byte
	}{
		{"TTL 254 (crossed a router)", addrB, 254, down.marshal()},
		{"authentication bit", addrB, 255, authed.marshal()},
		{"unknown discriminator", addrB, 255, unknown.marshal()},
		{"AdminDown from another address", netip.MustParseAddr("127.0.0.3"), 255, adminDown.marshal()},
		{"truncated", addrB, 255, down.marshal()[:20]},
		{"version 0", addrB, 255, append([]byte{0}, down.marshal()[1:]...)},
	}
	for _, c := range cases {
		conn, err := net.DialUDP("udp4", &net.UDPAddr{IP: c.from.AsSlice()}, &net.UDPAddr{IP: addrA.AsSlice(), Port: port})
		if err != nil {
			t.Fatal(err)
		}
		if err := ipv4.NewConn(conn).SetTTL(c.ttl); err != nil {
			t.Fatal(err)
		}
		for range 5 {
			if _, err := conn.Write(c.b); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
		}
		conn.Close()
	}
	time.Sleep(300 * time.Millisecond)
	after, _ := a.srv.Status(addrB)
	if after.State != StateUp || after.Flaps != before.Flaps {
		t.Errorf("session moved: %+v", after)
	}
	if d := a.srv.Dropped() - droppedBefore; d < uint64(5*len(cases)) {
		t.Errorf("dropped %d packets, want at least %d", d, 5*len(cases))
	}
	select {
	case ev := <-a.events:
		t.Errorf("state changed: %+v", ev)
	default:
	}
}

func TestSetRefusesBadTimers(t *testing.T) {
	s := New(Config{Port: testPort()})
	defer s.Close(false)
	for _, tm := range []Timers{
		{MinTx: 0, MinRx: time.Second, Multiplier: 3},
		{MinTx: time.Second, MinRx: 1500 * time.Nanosecond, Multiplier: 3},
		{MinTx: time.Second, MinRx: time.Second, Multiplier: 0},
		{MinTx: 2 * MaxInterval, MinRx: time.Second, Multiplier: 3},
	} {
		if err := s.Set(addrB, addrA, tm); err == nil {
			t.Errorf("%+v accepted", tm)
		}
	}
	if _, ok := s.Status(addrB); ok {
		t.Error("a session exists after refused timers")
	}
}

func TestPacketRoundTrip(t *testing.T) {
	p := packet{diag: DiagAdminDown, state: StateInit, poll: true, cpi: true, mult: 5, myDisc: 1, yourDisc: 2,
		desiredMinTx: 3, requiredMinRx: 4, requiredEcho: 5}
	got, err := parse(p.marshal())
	if err != nil || got != p {
		t.Fatalf("parse(marshal(%+v)) = %+v, %v", p, got, err)
	}
}

func FuzzParse(f *testing.F) {
	p := packet{state: StateUp, mult: 3, myDisc: 1, yourDisc: 2, desiredMinTx: 1e5, requiredMinRx: 1e5}
	f.Add(p.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := parse(b)
		if err != nil {
			return
		}
		if q.mult == 0 || q.myDisc == 0 || q.multipoint {
			t.Fatalf("accepted %+v from %x", q, b)
		}
		if q.auth {
			return // marshal writes no authentication section
		}
		if back, err := parse(q.marshal()); err != nil || back != q {
			t.Fatalf("round trip of %+v: %+v, %v", q, back, err)
		}
	})
}

// A peer that asks for one packet a second until the session is up and then polls with
// its real interval, as FRR's bfdd does, gets packets at that interval at once: not after
// the slow interval scheduled before, which would be past its new detection time.
func TestPeerSpeedsUpAfterUp(t *testing.T) {
	port := testPort()
	a := newEnd(t, port, addrA)
	if err := a.srv.Set(addrB, addrA, fast); err != nil {
		t.Fatal(err)
	}
	// The scripted peer: receives on addrB:port, sends from addrB with TTL 255.
	in, err := net.ListenUDP("udp4", &net.UDPAddr{IP: addrB.AsSlice(), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := net.DialUDP("udp4", &net.UDPAddr{IP: addrB.AsSlice(), Port: srcPortMin + rand.IntN(1000)}, &net.UDPAddr{IP: addrA.AsSlice(), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := ipv4.NewConn(out).SetTTL(255); err != nil {
		t.Fatal(err)
	}
	type rcvd struct {
		p  packet
		at time.Time
	}
	got := make(chan rcvd, 256)
	go func() {
		buf := make([]byte, 100)
		for {
			n, err := in.Read(buf)
			if err != nil {
				return
			}
			if p, err := parse(buf[:n]); err == nil {
				got <- rcvd{p, time.Now()}
			}
		}
	}()
	slow, quick := uint32(time.Second/time.Microsecond), uint32(50*time.Millisecond/time.Microsecond)
	peer := packet{state: StateDown, mult: 3, myDisc: 99, desiredMinTx: slow, requiredMinRx: slow}
	send := func(p packet) {
		t.Helper()
		if _, err := out.Write(p.marshal()); err != nil {
			t.Fatal(err)
		}
	}
	next := func(what string, ok func(packet) bool) packet {
		t.Helper()
		deadline := time.After(3 * time.Second)
		for {
			select {
			case r := <-got:
				if ok(r.p) {
					return r.p
				}
			case <-deadline:
				t.Fatalf("no packet from A %s", what)
			}
		}
	}
	send(peer)
	init := next("in Init", func(p packet) bool { return p.state == StateInit })
	peer.state, peer.yourDisc = StateUp, init.myDisc
	send(peer)
	next("polling in Up", func(p packet) bool { return p.state == StateUp && p.poll })
	peer.final = true
	send(peer)
	// Now the peer's own Poll: it takes a packet every 50 ms from here on.
	peer.final, peer.poll, peer.desiredMinTx, peer.requiredMinRx = false, true, quick, quick
	send(peer)
	next("with Final", func(p packet) bool { return p.final })
	peer.poll = false
	stop := make(chan struct{})
	defer close(stop)
	go func() { // keep A's session up
		for {
			select {
			case <-stop:
				return
			case <-time.After(40 * time.Millisecond):
				_, _ = out.Write(peer.marshal())
			}
		}
	}()
	last := time.Now()
	var worst time.Duration
	for end := time.Now().Add(600 * time.Millisecond); time.Now().Before(end); {
		r := <-got
		if gap := r.at.Sub(last); gap > worst {
			worst = gap
		}
		last = r.at
	}
	if worst > 100*time.Millisecond {
		t.Errorf("after the peer's Poll for 50 ms, A left a gap of %s between packets (the peer's detection time is 150 ms)", worst)
	}
	if st, _ := a.srv.Status(addrB); st.State != StateUp || st.Flaps != 0 {
		t.Errorf("A's session: %+v", st)
	}
}

// After the peer's BFD is gone but its host is alive (its kernel refuses our packets), the
// session keeps hearing from the host: LastHeard moves on while the session is down.
func TestRefusedPacketsAreSignsOfLife(t *testing.T) {
	a, _, _, _ := crashedPeer(t)
	down, _ := a.srv.Status(addrB)
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		st, _ := a.srv.Status(addrB)
		return st.LastHeard.After(down.LastHeard.Add(500 * time.Millisecond)), nil
	})
	if err != nil {
		st, _ := a.srv.Status(addrB)
		t.Fatalf("LastHeard stayed at %s (down at %s) while the peer's kernel refused our packets", st.LastHeard, down.LastHeard)
	}
}
