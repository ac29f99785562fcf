package bfd

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

const (
	// slowTx is the least interval between packets while a session is not up (RFC 5880
	// section 6.8.3): a session coming up costs nothing, and the configured rate is agreed
	// by a Poll sequence once it is up.
	slowTx = time.Second
	// adminDownCopies is how many AdminDown packets a session sends when it stops: one
	// may be lost, and the peer then sees a failure instead.
	adminDownCopies = 3
	// RFC 5881 section 4: the source port of a single-hop session.
	srcPortMin, srcPortMax = 49152, 65535
)

// session is one BFD session. Its goroutine (run) owns the socket and the timers; mu
// guards the state that Status reads.
type session struct {
	srv       *Server
	peer      netip.Addr
	local     netip.Addr
	localDisc uint32
	log       *slog.Logger

	rx     chan packet
	update chan Timers
	stop   chan bool // true: send AdminDown first
	done   chan struct{}

	conn    *net.UDPConn
	lastErr string // last socket error logged, so a persisting one is logged once

	mu          sync.Mutex
	timers      Timers
	state       State
	diag        Diag
	remoteState State
	remoteDiag  Diag
	remoteDisc  uint32
	remoteMinRx time.Duration // the peer's Required Min RX Interval
	remoteMinTx time.Duration // the peer's Desired Min TX Interval
	remoteMult  uint8
	desiredTx   time.Duration // what we advertise now: at least slowTx unless up
	polling     bool          // a Poll sequence awaits the peer's Final
	upSince     time.Time
	lastHeard   time.Time // the last sign of the peer's host: a packet, or its kernel refusing one
	flaps       uint64
	sent        uint64
	received    uint64
}

func newSession(srv *Server, peer, local netip.Addr, t Timers, disc uint32) *session {
	s := &session{
		srv: srv, peer: peer, local: local, localDisc: disc,
		log:    srv.log.With("peer", peer.String()),
		rx:     make(chan packet, 16),
		update: make(chan Timers, 1),
		stop:   make(chan bool, 1),
		done:   make(chan struct{}),
		timers: t, state: StateDown, remoteState: StateDown,
		desiredTx: max(slowTx, t.MinTx),
	}
	go s.run()
	return s
}

func (s *session) run() {
	defer close(s.done)
	tx := time.NewTimer(0)
	var txAt time.Time // when tx fires
	schedule := func() {
		d := s.nextTx()
		tx.Reset(d)
		txAt = time.Now().Add(d)
	}
	detect := time.NewTimer(time.Hour)
	detect.Stop()
	defer tx.Stop()
	defer detect.Stop()
	for {
		var ev *Event
		select {
		case p := <-s.rx:
			var final bool
			ev, final = s.receive(p)
			if final {
				s.send(false, true)
			}
			switch {
			case ev != nil:
				// Tell the peer at once rather than at the next interval: the three-way
				// handshake then takes a round trip, not three slow intervals.
				s.send(s.isPolling(), false)
				schedule()
			case time.Until(txAt) > s.txInterval():
				// The peer takes packets faster now (FRR asks for one a second until the
				// session is up, then polls with its real interval): a packet scheduled
				// at the old rate would arrive after its new detection time.
				schedule()
			}
			if d := s.detectTime(); d > 0 {
				detect.Reset(d)
			} else {
				detect.Stop()
			}
		case <-tx.C:
			s.send(s.isPolling(), false)
			schedule()
		case <-detect.C:
			ev = s.expire()
		case t := <-s.update:
			if s.setTimers(t) {
				s.send(true, false)
				schedule()
			}
		case adminDown := <-s.stop:
			if adminDown {
				s.mu.Lock()
				prev := s.state
				s.state, s.diag, s.polling = StateAdminDown, DiagAdminDown, false
				s.mu.Unlock()
				for range adminDownCopies {
					s.send(false, false)
				}
				if prev != StateAdminDown {
					s.log.Info("bfd: session administratively down", "was", prev.String())
				}
			}
			if s.conn != nil {
				s.conn.Close()
			}
			return
		}
		if ev != nil {
			s.report(*ev)
		}
	}
}

func (s *session) isPolling() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.polling
}

// receive applies RFC 5880 section 6.8.6 to a packet already matched to this session. It
// returns the change of state, if any, and whether the packet asked for a Final.
func (s *session) receive(p packet) (*Event, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.received++
	s.lastHeard = time.Now()
	s.remoteDisc = p.myDisc
	s.remoteState, s.remoteDiag = p.state, p.diag
	s.remoteMinRx = usec(p.requiredMinRx)
	s.remoteMinTx = usec(p.desiredMinTx)
	s.remoteMult = p.mult
	if p.final {
		s.polling = false
	}
	if s.state == StateAdminDown {
		return nil, false
	}
	prev := s.state
	switch {
	case p.state == StateAdminDown:
		if s.state != StateDown {
			s.down(DiagNeighborDown)
		}
	case s.state == StateDown:
		switch p.state {
		case StateDown:
			s.state = StateInit
		case StateInit:
			s.goUp()
		}
	case s.state == StateInit:
		if p.state == StateInit || p.state == StateUp {
			s.goUp()
		}
	case s.state == StateUp:
		if p.state == StateDown {
			s.down(DiagNeighborDown)
		}
	}
	return s.eventLocked(prev), p.poll
}

// expire is the detection timer firing: no packet from the peer for the detection time.
func (s *session) expire() *Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != StateInit && s.state != StateUp {
		return nil
	}
	prev := s.state
	s.down(DiagDetectionExpired)
	// RFC 5880 section 6.8.1: the peer's discriminator is forgotten with the session, so
	// a restarted peer (a new discriminator) is taken on by its address.
	s.remoteDisc = 0
	s.remoteMult = 0
	return s.eventLocked(prev)
}

func (s *session) eventLocked(prev State) *Event {
	if s.state == prev {
		return nil
	}
	return &Event{Peer: s.peer, Previous: prev, State: s.state, Diag: s.diag, RemoteState: s.remoteState, RemoteDiag: s.remoteDiag}
}

func (s *session) goUp() {
	s.state, s.diag = StateUp, DiagNone
	s.upSince = time.Now()
	if s.desiredTx != s.timers.MinTx {
		// RFC 5880 section 6.8.3: a changed interval is announced by a Poll sequence.
		s.desiredTx, s.polling = s.timers.MinTx, true
	}
}

func (s *session) down(d Diag) {
	if s.state == StateUp {
		s.flaps++
	}
	s.state, s.diag = StateDown, d
	s.upSince = time.Time{}
	s.desiredTx, s.polling = max(slowTx, s.timers.MinTx), false
}

// setTimers takes new timers; it reports whether a Poll sequence must announce them.
func (s *session) setTimers(t Timers) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t == s.timers {
		return false
	}
	s.timers = t
	if s.state != StateUp {
		s.desiredTx = max(slowTx, t.MinTx)
		return false
	}
	s.desiredTx, s.polling = t.MinTx, true
	return true
}

// nextTx is the interval to the next periodic packet (RFC 5880 section 6.8.7): the
// greater of what we want and what the peer can take, less a random 0 to 25 % (10 to 25 %
// with a multiplier of 1) so that sessions do not fall into step.
func (s *session) nextTx() time.Duration {
	d := s.txInterval()
	s.mu.Lock()
	defer s.mu.Unlock()
	maxCut := 25
	minCut := 0
	if s.timers.Multiplier == 1 {
		minCut = 10
	}
	cut := minCut + rand.IntN(maxCut-minCut+1)
	return d * time.Duration(100-cut) / 100
}

// txInterval is the agreed interval between packets, before jitter.
func (s *session) txInterval() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := max(s.desiredTx, s.remoteMinRx)
	if s.remoteMinRx == 0 && s.remoteMult != 0 {
		// The peer wants no periodic packets: keep a slow beat so a change is seen.
		d = max(d, slowTx)
	}
	return d
}

// detectTime is how long the session may go without a packet before it is down (RFC
// 5880 section 6.8.4); 0 while the session is neither Init nor Up.
func (s *session) detectTime() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.detectTimeLocked()
}

func (s *session) detectTimeLocked() time.Duration {
	if (s.state != StateInit && s.state != StateUp) || s.remoteMult == 0 {
		return 0
	}
	return time.Duration(s.remoteMult) * max(s.timers.MinRx, s.remoteMinTx)
}

func (s *session) send(poll, final bool) {
	s.mu.Lock()
	p := packet{
		state: s.state, diag: s.diag, poll: poll, final: final,
		mult: s.timers.Multiplier, myDisc: s.localDisc, yourDisc: s.remoteDisc,
		desiredMinTx: uint32(s.desiredTx / time.Microsecond), requiredMinRx: uint32(s.timers.MinRx / time.Microsecond),
	}
	s.mu.Unlock()
	if err := s.write(p.marshal()); err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			// The peer's kernel refused an earlier packet (ICMP port unreachable): its
			// host is alive with no BFD listening, as while its agent restarts. A sign
			// of life, not a problem to log.
			s.mu.Lock()
			s.lastHeard = time.Now()
			s.mu.Unlock()
			return
		}
		if msg := err.Error(); msg != s.lastErr {
			s.lastErr = msg
			s.log.Warn("bfd: cannot send", "err", err)
		}
		return
	}
	s.lastErr = ""
	s.mu.Lock()
	s.sent++
	s.mu.Unlock()
}

func (s *session) write(b []byte) error {
	if s.conn == nil {
		c, err := s.dial()
		if err != nil {
			return err
		}
		s.conn = c
	}
	_, err := s.conn.Write(b)
	if err != nil && errors.Is(err, net.ErrClosed) {
		s.conn = nil
	}
	return err
}

// dial opens the session's socket: from a source port of the single-hop range, to the
// peer's BFD port, with a TTL (hop limit) of 255 so the peer can tell the packet never
// crossed a router (RFC 5881 section 5).
func (s *session) dial() (*net.UDPConn, error) {
	network := "udp4"
	if s.peer.Is6() {
		network = "udp6"
	}
	raddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.peer, uint16(s.srv.port)))
	var lastErr error
	for range 8 {
		port := srcPortMin + rand.IntN(srcPortMax-srcPortMin+1)
		laddr := &net.UDPAddr{Port: port}
		if s.local.IsValid() {
			laddr.IP = s.local.AsSlice()
		}
		c, err := net.DialUDP(network, laddr, raddr)
		if err != nil {
			lastErr = err
			continue
		}
		if s.peer.Is6() {
			err = ipv6.NewConn(c).SetHopLimit(255)
		} else {
			err = ipv4.NewConn(c).SetTTL(255)
		}
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("bfd: set TTL 255 towards %s: %w", s.peer, err)
		}
		return c, nil
	}
	return nil, fmt.Errorf("bfd: open a socket towards %s: %w", net.JoinHostPort(s.peer.String(), strconv.Itoa(s.srv.port)), lastErr)
}

func (s *session) report(ev Event) {
	attrs := []any{"from", ev.Previous.String(), "to", ev.State.String(), "diag", ev.Diag.String(), "remoteState", ev.RemoteState.String()}
	if ev.State == StateDown && ev.Previous == StateUp {
		s.log.Warn("bfd: session down", attrs...)
	} else {
		s.log.Info("bfd: session state", attrs...)
	}
	if f := s.srv.cfg.OnChange; f != nil {
		f(ev)
	}
}

func (s *session) status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{
		State: s.state, LocalDiag: s.diag, RemoteState: s.remoteState, RemoteDiag: s.remoteDiag,
		UpSince: s.upSince, LastHeard: s.lastHeard, Flaps: s.flaps, Sent: s.sent, Received: s.received, Timers: s.timers,
		DetectTime: s.detectTimeLocked(),
	}
	return st
}

func usec(v uint32) time.Duration { return time.Duration(v) * time.Microsecond }
