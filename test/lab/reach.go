package lab

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// EchoPort is the port ServeEcho listens on, TCP and UDP.
const EchoPort = 7070

// ServeEcho runs a TCP and a UDP echo server on EchoPort inside ns, on the wildcard address
// of both families, so it answers on whatever address the namespace has or gets later: a
// probe can aim at a pod's address before CNI ADD gave it. It stops in t.Cleanup.
func ServeEcho(t testing.TB, ns *NetNS) error {
	var ln net.Listener
	var pc net.PacketConn
	err := ns.Do(func() error {
		var err error
		if ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", EchoPort)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", fmt.Sprintf("[::]:%d", EchoPort))
		return err
	})
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return fmt.Errorf("echo server in %s: %w", ns.Name, err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		pc.Close()
		wg.Wait()
	})
	return nil
}

// UDP probes take their source ports in turn from this range rather than from the kernel:
// conntrack keeps a UDP "connection" for 30 to 120 s after its last datagram, and a datagram
// whose addresses and ports match one that was allowed is a reply to the kernel, allowed
// whatever the policy now says. An ephemeral port the kernel picked again would make such a
// datagram; a port taken in turn is not used again for over 40000 probes.
const udpPortFirst, udpPortLast = 20000, 60999

var udpPort atomic.Int32

func nextUDPPort() int {
	n := int(udpPort.Add(1))
	return udpPortFirst + n%(udpPortLast-udpPortFirst+1)
}

// udpResend is how long Reach waits for a UDP echo before sending the datagram again.
const udpResend = 200 * time.Millisecond

// Reach opens a new connection (TCP) or a new socket on a port not used lately (UDP), so a
// new conntrack entry either way, from
// inside from to the echo server at dst:EchoPort, sends a token and waits for it to come
// back (UDP: resent every udpResend until then). nil means the exchange completed within
// timeout: packets crossed in each direction as a new connection. Any error means it did not.
func Reach(from *NetNS, proto string, dst netip.Addr, timeout time.Duration) error {
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	addr := netip.AddrPortFrom(dst, EchoPort).String()
	deadline := time.Now().Add(timeout)
	var c net.Conn
	err := from.Do(func() error {
		var err error
		d := net.Dialer{Deadline: deadline}
		if proto != "udp" {
			c, err = d.Dial(proto, addr)
			return err
		}
		for range 10 {
			d.LocalAddr = &net.UDPAddr{Port: nextUDPPort()}
			if c, err = d.Dial(proto, addr); !errors.Is(err, syscall.EADDRINUSE) {
				break
			}
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("%s %s from %s: %w", proto, addr, from.Name, err)
	}
	defer c.Close()
	got := make([]byte, len(token))
	if proto == "tcp" {
		_ = c.SetDeadline(deadline)
		if _, err := c.Write(token); err != nil {
			return fmt.Errorf("%s %s from %s: send: %w", proto, addr, from.Name, err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("%s %s from %s: no echo: %w", proto, addr, from.Name, err)
		}
	} else {
		// A datagram has no retransmission of its own, as a SYN has: resend until the echo
		// comes, so one datagram lost on the way is not taken for a closed path.
		for {
			if _, err := c.Write(token); err != nil {
				return fmt.Errorf("%s %s from %s: send: %w", proto, addr, from.Name, err)
			}
			wait := time.Now().Add(udpResend)
			if wait.After(deadline) {
				wait = deadline
			}
			_ = c.SetReadDeadline(wait)
			_, err := io.ReadFull(c, got)
			if err == nil {
				break
			}
			if !time.Now().Before(deadline) {
				return fmt.Errorf("%s %s from %s: no echo: %w", proto, addr, from.Name, err)
			}
		}
	}
	if !bytes.Equal(got, token) {
		return fmt.Errorf("%s %s from %s: echo %x, sent %x", proto, addr, from.Name, got, token)
	}
	return nil
}

// Attempt is one probe of a Prober.
type Attempt struct {
	Start, End time.Time
	Err        error // nil: reached
}

// OK reports whether the attempt reached the server.
func (a Attempt) OK() bool { return a.Err == nil }

// Prober starts a Reach from one namespace to one address every interval, each on its own
// connection, and records every attempt: continuous probing of whether new connections pass.
// Attempts overlap when timeout exceeds interval, so a dropped one does not slow the rate.
type Prober struct {
	From  *NetNS
	Proto string
	Dst   netip.Addr

	timeout time.Duration
	stop    chan struct{}
	wg      sync.WaitGroup

	mu       sync.Mutex
	attempts []Attempt
}

// StartProber starts probing; Stop ends it.
func StartProber(from *NetNS, proto string, dst netip.Addr, interval, timeout time.Duration) *Prober {
	p := &Prober{From: from, Proto: proto, Dst: dst, timeout: timeout, stop: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				start := time.Now()
				err := Reach(from, proto, dst, timeout)
				p.mu.Lock()
				p.attempts = append(p.attempts, Attempt{Start: start, End: time.Now(), Err: err})
				p.mu.Unlock()
			}()
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return p
}

func (p *Prober) String() string {
	return fmt.Sprintf("%s %s → %s", p.Proto, p.From.Name, p.Dst)
}

// Attempts returns the attempts completed so far, in the order they completed.
func (p *Prober) Attempts() []Attempt {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Attempt(nil), p.attempts...)
}

// Stop stops starting attempts, waits for those in flight and returns them all.
func (p *Prober) Stop() []Attempt {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.wg.Wait()
	return p.Attempts()
}

// Tally counts attempts: how many reached and how many did not.
type Tally struct {
	Reached, Blocked int
	// FirstReached and LastReached are the completion times of the first and last attempts
	// that reached (zero if none did).
	FirstReached, LastReached time.Time
	// FirstBlockedErr is the first failure, to show what a wrongly blocked probe met.
	FirstBlockedErr error
}

// Count tallies attempts.
func Count(as []Attempt) Tally {
	var t Tally
	for _, a := range as {
		if a.OK() {
			t.Reached++
			if t.FirstReached.IsZero() || a.End.Before(t.FirstReached) {
				t.FirstReached = a.End
			}
			if a.End.After(t.LastReached) {
				t.LastReached = a.End
			}
		} else {
			t.Blocked++
			if t.FirstBlockedErr == nil {
				t.FirstBlockedErr = a.Err
			}
		}
	}
	return t
}

func (t Tally) String() string {
	return fmt.Sprintf("%d attempts: %d reached, %d blocked", t.Reached+t.Blocked, t.Reached, t.Blocked)
}
