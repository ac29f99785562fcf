package lab

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"
)

// Flow is a continuous UDP echo flow between two pods: the client sends a numbered datagram
// every interval, the server echoes it, the client records every echo. A datagram is lost
// when its echo never comes back, whichever direction dropped it, so the flow checks both
// nodes' routes at once.
type Flow struct {
	client, server *net.UDPConn
	dst            *net.UDPAddr
	interval       time.Duration
	stop           chan struct{}
	wg             sync.WaitGroup

	mu       sync.Mutex
	sent     uint64
	got      map[uint64]bool
	dups     int
	lastRecv time.Time
	maxGap   time.Duration
	start    time.Time
	sendErrs int
	lastErr  error
}

// FlowStats summarises a flow.
type FlowStats struct {
	Sent, Received, Lost uint64
	Duplicates           int
	// LostSeqs are the sequence numbers of the first lost datagrams (at most 50).
	LostSeqs []uint64
	// MaxGap is the longest time between two consecutive echoes.
	MaxGap time.Duration
	// SendErrors counts datagrams the client's kernel refused to send (no route, ...).
	SendErrors int
	LastError  error
	Duration   time.Duration
}

func (s FlowStats) String() string {
	return fmt.Sprintf("sent %d, echoed %d, lost %d (first lost %v), duplicates %d, send errors %d, longest gap %v over %v",
		s.Sent, s.Received, s.Lost, s.LostSeqs, s.Duplicates, s.SendErrors, s.MaxGap.Round(time.Millisecond), s.Duration.Round(time.Millisecond))
}

// StartFlow starts a UDP echo flow from pod `from` to pod `to`'s address of the family of v6,
// one datagram per interval. Call Stop to end it and read the counts.
func StartFlow(from, to *Pod, v6 bool, interval time.Duration) (*Flow, error) {
	return StartFlowFrom(from.NetNS, from.Addr(v6), to, interval)
}

func (f *Flow) echo() {
	defer f.wg.Done()
	buf := make([]byte, 64)
	for {
		n, from, err := f.server.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		_, _ = f.server.WriteToUDPAddrPort(buf[:n], from)
	}
}

func (f *Flow) receive() {
	defer f.wg.Done()
	buf := make([]byte, 64)
	for {
		n, _, err := f.client.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if n < 8 {
			continue
		}
		seq := binary.BigEndian.Uint64(buf)
		now := time.Now()
		f.mu.Lock()
		if f.got[seq] {
			f.dups++
		} else {
			f.got[seq] = true
		}
		if !f.lastRecv.IsZero() && now.Sub(f.lastRecv) > f.maxGap {
			f.maxGap = now.Sub(f.lastRecv)
		}
		f.lastRecv = now
		f.mu.Unlock()
	}
}

func (f *Flow) send() {
	defer f.wg.Done()
	tick := time.NewTicker(f.interval)
	defer tick.Stop()
	buf := make([]byte, 32)
	for seq := uint64(0); ; seq++ {
		binary.BigEndian.PutUint64(buf, seq)
		_, err := f.client.WriteToUDP(buf, f.dst)
		f.mu.Lock()
		f.sent++
		if err != nil {
			f.sendErrs++
			f.lastErr = err
		}
		f.mu.Unlock()
		select {
		case <-f.stop:
			return
		case <-tick.C:
		}
	}
}

// Stats returns the counts so far (datagrams in flight count as lost).
func (f *Flow) Stats() FlowStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := FlowStats{Sent: f.sent, Received: uint64(len(f.got)), Duplicates: f.dups, MaxGap: f.maxGap,
		SendErrors: f.sendErrs, LastError: f.lastErr, Duration: time.Since(f.start)}
	for seq := uint64(0); seq < f.sent; seq++ {
		if !f.got[seq] {
			s.Lost++
			if len(s.LostSeqs) < 50 {
				s.LostSeqs = append(s.LostSeqs, seq)
			}
		}
	}
	return s
}

// Stop stops sending, waits up to a second for the last echoes, closes the sockets and
// returns the counts.
func (f *Flow) Stop() FlowStats {
	close(f.stop)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		done := uint64(len(f.got)) >= f.sent
		f.mu.Unlock()
		if done {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.client.Close()
	f.server.Close()
	f.wg.Wait()
	s := f.Stats()
	return s
}
