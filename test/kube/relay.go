package kube

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Relay forwards every TCP connection accepted on a listener to a target reached through a
// dial function. The listener and the dial may be in different network namespaces: a
// socket stays in the namespace it was created in, whichever thread uses it later.
type Relay struct {
	ln   net.Listener
	dial func(context.Context) (net.Conn, error)

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

// StartRelay serves ln until Close.
func StartRelay(ln net.Listener, dial func(context.Context) (net.Conn, error)) *Relay {
	r := &Relay{ln: ln, dial: dial, conns: map[net.Conn]bool{}}
	r.wg.Add(1)
	go r.serve()
	return r
}

// Addr is the listener's address.
func (r *Relay) Addr() net.Addr { return r.ln.Addr() }

func (r *Relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go r.pipe(c)
	}
}

func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns[c] = true
	return true
}

func (r *Relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	c.Close()
}

func (r *Relay) pipe(in net.Conn) {
	defer r.wg.Done()
	if !r.track(in) {
		in.Close()
		return
	}
	defer r.untrack(in)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	out, err := r.dial(ctx)
	cancel()
	if err != nil {
		return
	}
	if !r.track(out) {
		out.Close()
		return
	}
	defer r.untrack(out)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(out, in)
	go cp(in, out)
	<-done
	<-done
}

// Close stops accepting, cuts every relayed connection and waits for the relay's goroutines.
func (r *Relay) Close() {
	r.ln.Close()
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// DialerIn returns a dial function for an http.Transport or a Relay whose sockets are
// created inside the network namespace at nsPath (the process's own when empty).
func DialerIn(nsPath string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if nsPath == "" {
		return d.DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
			var err error
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("dial %s in %s: %w", addr, nsPath, err)
		}
		return conn, nil
	}
}
