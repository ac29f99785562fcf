package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Data-path measurements between two network namespaces (pods, nodes, or bare namespaces).
// The sockets are opened inside the namespaces (NetNS.Do) and driven by goroutines of the
// calling process, so both ends share its CPUs; compare paths measured the same way.

// TCPThroughput sends bulk data over one TCP connection from a socket opened in client to
// a listener opened on dst in server, for d, and returns the rate the receiver saw, in bits
// per second (bytes received between its first and its last read).
func TCPThroughput(client, server *NetNS, dst netip.Addr, d time.Duration) (float64, error) {
	return TCPThroughputVia(client, server, netip.AddrPortFrom(dst, 0), netip.AddrPort{}, d)
}

// TCPThroughputVia is TCPThroughput with the listener on listen (port 0: any) and the client
// connecting to via, an address that leads there (a Service's, which kube-proxy translates),
// or to the listener's own address when via is the zero value.
func TCPThroughputVia(client, server *NetNS, listen, via netip.AddrPort, d time.Duration) (float64, error) {
	ln, err := listenIn(server, listen)
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	type result struct {
		bytes       int64
		first, last time.Time
		err         error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		var res result
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				now := time.Now()
				if res.first.IsZero() {
					res.first = now
				}
				res.last = now
				res.bytes += int64(n)
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					res.err = err
				}
				done <- res
				return
			}
		}
	}()
	c, err := dialFrom(client, dialAddr(ln, via))
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 128<<10)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if _, err := c.Write(buf); err != nil {
			c.Close()
			return 0, fmt.Errorf("throughput: write: %w", err)
		}
	}
	_ = c.(*net.TCPConn).CloseWrite()
	var res result
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		c.Close()
		return 0, errors.New("throughput: receiver did not finish")
	}
	c.Close()
	if res.err != nil {
		return 0, fmt.Errorf("throughput: read: %w", res.err)
	}
	span := res.last.Sub(res.first)
	if span <= 0 {
		return 0, errors.New("throughput: nothing received")
	}
	return float64(res.bytes) * 8 / span.Seconds(), nil
}

// TCPRoundTrips makes n request/response exchanges of one byte each way over one TCP
// connection (Nagle off) from client to an echo server on dst in server, and returns the
// duration of each, in order.
func TCPRoundTrips(client, server *NetNS, dst netip.Addr, n int) ([]time.Duration, error) {
	return TCPRoundTripsVia(client, server, netip.AddrPortFrom(dst, 0), netip.AddrPort{}, n)
}

// TCPRoundTripsVia is TCPRoundTrips with the echo server on listen and the client connecting
// to via (see TCPThroughputVia).
func TCPRoundTripsVia(client, server *NetNS, listen, via netip.AddrPort, n int) ([]time.Duration, error) {
	ln, err := listenIn(server, listen)
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	// Closing the listener ends an Accept still waiting (the client's connection failed or
	// went elsewhere) before the server goroutine is waited for.
	defer func() {
		ln.Close()
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 1)
		for {
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
	c, err := dialFrom(client, dialAddr(ln, via))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Duration(n)*10*time.Millisecond + 30*time.Second))
	out := make([]time.Duration, n)
	req, resp := []byte{'x'}, make([]byte, 1)
	for i := range n {
		t0 := time.Now()
		if _, err := c.Write(req); err != nil {
			return nil, fmt.Errorf("round trip %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return nil, fmt.Errorf("round trip %d: %w", i, err)
		}
		out[i] = time.Since(t0)
	}
	return out, nil
}

func listenIn(ns *NetNS, addr netip.AddrPort) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, ns.Name, err)
	}
	return ln, nil
}

func dialAddr(ln net.Listener, via netip.AddrPort) string {
	if via.IsValid() {
		return via.String()
	}
	return ln.Addr().String()
}

func dialFrom(ns *NetNS, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("connect to %s from %s: %w", addr, ns.Name, err)
	}
	return c, nil
}

// HaveIperf3 reports whether iperf3 is installed.
func HaveIperf3() bool {
	_, err := exec.LookPath("iperf3")
	return err == nil
}

// Iperf3 runs an iperf3 server bound to dst in server (one test, then it exits) and an
// iperf3 client in client for d seconds over one TCP stream, and returns the receiver's
// rate in bits per second. The two are separate processes, like two pods' workloads.
// cpus, when given, pins the client to cpus[0] and the server to cpus[1] (iperf3 -A), so
// that runs compared with each other put the same work on the same CPUs.
func Iperf3(ctx context.Context, client, server *NetNS, dst netip.Addr, d time.Duration, port int, cpus ...int) (float64, error) {
	if port == 0 {
		port = 5201
	}
	var clientPin, serverPin []string
	if len(cpus) == 2 {
		clientPin = []string{"-A", strconv.Itoa(cpus[0])}
		serverPin = []string{"-A", strconv.Itoa(cpus[1])}
	}
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	srv := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", server.Name, "iperf3", "-s", "-1", "-B", dst.String(), "-p", strconv.Itoa(port)}, serverPin...)...)
	var srvOut strings.Builder
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return 0, fmt.Errorf("iperf3 server: %w", err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	secs := strconv.Itoa(int(d / time.Second))
	var out []byte
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		out, err = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", client.Name, "iperf3", "-c", dst.String(), "-p", strconv.Itoa(port), "-t", secs, "-J"}, clientPin...)...).Output()
		// The server may not listen yet: iperf3 reports that in its JSON, with or without
		// a failing exit status.
		if !strings.Contains(string(out), "unable to connect") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if jerr := json.Unmarshal(out, &res); jerr != nil || res.Error != "" || err != nil {
		return 0, fmt.Errorf("iperf3 client: %v %s: %s (server: %s)", err, res.Error, strings.TrimSpace(string(out)), strings.TrimSpace(srvOut.String()))
	}
	return res.End.SumReceived.BitsPerSecond, nil
}
