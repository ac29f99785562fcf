// Package bfd runs podroute's BFD sessions: RFC 5880 asynchronous mode over single-hop
// UDP (RFC 5881), without echo, demand mode or authentication.
//
// A session only reports its changes (Config.OnChange); what a change means for the BGP
// session is the caller's decision. That is why podroute does not use GoBGP's BFD, which
// resets the BGP session on every BFD down: on a peer's AdminDown (a deliberate stop, not
// a failure: RFC 5880 section 6.8.6, RFC 5882 section 3.2) and on a failure while the BGP
// session is already in graceful restart, where its CEASE stays queued and closes the next
// session as soon as it is established. An agent restart then looks like a dead node.
//
// Sessions run in the agent's process, so they fail when the agent does: the packets
// leave the control-plane-independent (C) bit clear, which tells a peer such as FRR (with
// "bfd check-control-plane-failure") that a BFD failure during a BGP graceful restart is
// the restart, not the path.
package bfd

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Port is the single-hop BFD control port (RFC 5881 section 4).
const Port = 3784

// MaxInterval is the longest interval a packet can carry: 32 bits of microseconds.
const MaxInterval = time.Duration(1<<32-1) * time.Microsecond

// Timers are a session's parameters (RFC 5880 section 6.8.1).
type Timers struct {
	// MinTx is the interval at which we want to send once the session is up.
	MinTx time.Duration
	// MinRx is the shortest interval between received packets we can take.
	MinRx time.Duration
	// Multiplier: the peer declares us down after this many of its receive intervals
	// without a packet from us.
	Multiplier uint8
}

// Validate checks the timers are what a packet can carry.
func (t Timers) Validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"MinTx", t.MinTx}, {"MinRx", t.MinRx}} {
		if f.d < time.Microsecond || f.d > MaxInterval || f.d%time.Microsecond != 0 {
			errs = append(errs, fmt.Errorf("%s: %s is not a whole number of microseconds in 1µs..%s", f.name, f.d, MaxInterval))
		}
	}
	if t.Multiplier == 0 {
		errs = append(errs, errors.New("Multiplier: must be at least 1"))
	}
	return errors.Join(errs...)
}

// Event is a change of a session's state.
type Event struct {
	Peer     netip.Addr
	Previous State
	State    State
	// Diag is our reason for the change: DiagDetectionExpired (the peer went silent) or
	// DiagNeighborDown (the peer said its session is down) when leaving Init or Up.
	Diag Diag
	// RemoteState and RemoteDiag are what the peer's last packet said. RemoteState is
	// StateAdminDown when the peer took the session down on purpose.
	RemoteState State
	RemoteDiag  Diag
}

// Status is a session's state for display and metrics.
type Status struct {
	State       State
	LocalDiag   Diag
	RemoteState State
	RemoteDiag  Diag
	Timers      Timers
	// DetectTime is the time the session may go without a packet before it is down, as
	// agreed with the peer; 0 when the session is neither Init nor Up.
	DetectTime time.Duration
	UpSince    time.Time
	// LastHeard is the last sign that the peer's host is alive: a packet from it, or its
	// kernel refusing one of ours (ICMP port unreachable: nothing listens for BFD there,
	// as while its agent restarts). Zero until then.
	LastHeard time.Time
	// Flaps counts the times the session went from Up to Down.
	Flaps          uint64
	Sent, Received uint64
}

// Config is a Server's configuration.
type Config struct {
	// Port is the UDP port to listen on and to send to; 0 means Port (3784).
	Port int
	// Listen are the addresses to receive on. A family with sessions and no address
	// here is received on its unspecified address.
	Listen []netip.Addr
	Logger *slog.Logger
	// OnChange is called on each change of a session's state, from that session's
	// goroutine: it must not block.
	OnChange func(Event)
}

// Server holds the BFD sessions of one speaker, keyed by peer address.
type Server struct {
	cfg  Config
	port int
	log  *slog.Logger

	mu        sync.Mutex
	sessions  map[netip.Addr]*session
	byDisc    map[uint32]*session
	listening map[bool][]*listener // by "is IPv6"
	closed    bool
	wg        sync.WaitGroup

	dropped atomic.Uint64
}

// New returns a Server with no sessions. It listens only once a session of a family is
// set.
func New(cfg Config) *Server {
	s := &Server{
		cfg: cfg, port: cfg.Port, log: cfg.Logger,
		sessions: map[netip.Addr]*session{}, byDisc: map[uint32]*session{},
		listening: map[bool][]*listener{},
	}
	if s.port == 0 {
		s.port = Port
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s
}

var errClosed = errors.New("bfd: server closed")

// Set runs a session with peer from local (the invalid Addr lets the kernel choose), or
// gives a running one new timers, announced to the peer by a Poll sequence. A new local
// address restarts the session.
func (s *Server) Set(peer, local netip.Addr, t Timers) error {
	if !peer.IsValid() {
		return errors.New("bfd: no peer address")
	}
	if err := t.Validate(); err != nil {
		return fmt.Errorf("bfd: session with %s: %w", peer, err)
	}
	peer = peer.Unmap()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errClosed
	}
	if old := s.sessions[peer]; old != nil {
		if old.local == local {
			s.mu.Unlock()
			// update holds one value: replace a pending one so the last Set wins. A
			// session removed meanwhile takes no more.
			select {
			case <-old.update:
			default:
			}
			select {
			case old.update <- t:
			case <-old.done:
			}
			return nil
		}
		s.removeLocked(peer, true)
	}
	if err := s.listenLocked(peer.Is6()); err != nil {
		s.mu.Unlock()
		return err
	}
	disc := rand.Uint32()
	for disc == 0 || s.byDisc[disc] != nil {
		disc = rand.Uint32()
	}
	ss := newSession(s, peer, local, t, disc)
	s.sessions[peer], s.byDisc[disc] = ss, ss
	s.mu.Unlock()
	return nil
}

// Remove ends the session with peer, sending AdminDown first so the peer does not take
// it for a failure. Removing a peer without a session does nothing.
func (s *Server) Remove(peer netip.Addr) {
	s.mu.Lock()
	ss := s.removeLocked(peer.Unmap(), true)
	s.mu.Unlock()
	if ss != nil {
		<-ss.done
	}
}

func (s *Server) removeLocked(peer netip.Addr, adminDown bool) *session {
	ss := s.sessions[peer]
	if ss == nil {
		return nil
	}
	delete(s.sessions, peer)
	delete(s.byDisc, ss.localDisc)
	ss.stop <- adminDown
	return ss
}

// Status reports the session with peer.
func (s *Server) Status(peer netip.Addr) (Status, bool) {
	s.mu.Lock()
	ss := s.sessions[peer.Unmap()]
	s.mu.Unlock()
	if ss == nil {
		return Status{}, false
	}
	return ss.status(), true
}

// Dropped counts the packets received that matched no session or were malformed.
func (s *Server) Dropped() uint64 { return s.dropped.Load() }

// Close ends every session, with AdminDown first when adminDown, and stops listening.
// It is idempotent.
func (s *Server) Close(adminDown bool) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	var stopped []*session
	for peer := range s.sessions {
		stopped = append(stopped, s.removeLocked(peer, adminDown))
	}
	for _, ls := range s.listening {
		for _, l := range ls {
			l.conn.Close()
		}
	}
	s.mu.Unlock()
	for _, ss := range stopped {
		<-ss.done
	}
	s.wg.Wait()
}

// listenLocked opens the receiving sockets of a family unless they are open.
func (s *Server) listenLocked(v6 bool) error {
	if len(s.listening[v6]) > 0 {
		return nil
	}
	var addrs []netip.Addr
	for _, a := range s.cfg.Listen {
		if a = a.Unmap(); a.Is6() == v6 {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		if v6 {
			addrs = []netip.Addr{netip.IPv6Unspecified()}
		} else {
			addrs = []netip.Addr{netip.IPv4Unspecified()}
		}
	}
	var ls []*listener
	for _, a := range addrs {
		l, err := s.listen(a)
		if err != nil {
			for _, l := range ls {
				l.conn.Close()
			}
			return err
		}
		ls = append(ls, l)
	}
	for _, l := range ls {
		s.wg.Add(1)
		go s.receive(l)
	}
	s.listening[v6] = ls
	s.log.Info("bfd: listening", "addresses", fmt.Sprint(addrs), "port", s.port)
	return nil
}

// listener is a receiving socket, wrapped to read each packet's TTL (hop limit): 255
// means it never crossed a router (RFC 5881 section 5). The wrapper that asked for the
// TTLs must be the one that reads them.
type listener struct {
	conn *net.UDPConn
	p4   *ipv4.PacketConn
	p6   *ipv6.PacketConn
}

func (s *Server) listen(a netip.Addr) (*listener, error) {
	network := "udp4"
	if a.Is6() {
		network = "udp6"
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, uint16(s.port))))
	if err != nil {
		return nil, fmt.Errorf("bfd: listen: %w", err)
	}
	l := &listener{conn: c}
	if a.Is6() {
		l.p6 = ipv6.NewPacketConn(c)
		err = l.p6.SetControlMessage(ipv6.FlagHopLimit, true)
	} else {
		l.p4 = ipv4.NewPacketConn(c)
		err = l.p4.SetControlMessage(ipv4.FlagTTL, true)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("bfd: listen on %s: receive TTLs: %w", a, err)
	}
	return l, nil
}

// read returns the next packet's length, sender and TTL.
func (l *listener) read(buf []byte) (int, net.Addr, int, error) {
	if l.p6 != nil {
		n, cm, src, err := l.p6.ReadFrom(buf)
		if cm == nil {
			return n, src, 0, err
		}
		return n, src, cm.HopLimit, err
	}
	n, cm, src, err := l.p4.ReadFrom(buf)
	if cm == nil {
		return n, src, 0, err
	}
	return n, src, cm.TTL, err
}

func (s *Server) receive(l *listener) {
	defer s.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, src, ttl, err := l.read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("bfd: receive", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok || ttl != 255 {
			s.dropped.Add(1)
			continue
		}
		from, _ := netip.AddrFromSlice(ua.IP)
		p, err := parse(buf[:n])
		if err != nil {
			s.dropped.Add(1)
			continue
		}
		s.deliver(from.Unmap(), p)
	}
}

// deliver finds a packet's session (RFC 5880 section 6.8.6): by our discriminator when the
// peer knows it, else by the peer's address, which a packet may only use while it says
// Down or AdminDown. Either way the source address must be the session's peer.
func (s *Server) deliver(from netip.Addr, p packet) {
	s.mu.Lock()
	var ss *session
	switch {
	case p.yourDisc != 0:
		ss = s.byDisc[p.yourDisc]
	case p.state == StateDown || p.state == StateAdminDown:
		ss = s.sessions[from]
	}
	s.mu.Unlock()
	if ss == nil || ss.peer != from || p.auth {
		s.dropped.Add(1)
		return
	}
	select {
	case ss.rx <- p:
	default:
		s.dropped.Add(1)
	}
}
