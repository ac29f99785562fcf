// Command pause is the tiny static binary behind the offline container images of podroute's
// kubelet tests: the pod sandbox ("pause") image and the test pods' netcheck image.
//
// With no arguments it does what a pod's pause container does: it sleeps until SIGTERM or
// SIGINT, reaping any child re-parented to it (it is PID 1 of the pod's PID namespace when
// the runtime shares one). The netcheck image runs the same binary with a subcommand:
//
//	sleep                    like no arguments
//	serve-tcp PORT           echo every TCP connection on [::]:PORT (both families) back
//	connect HOST:PORT [N]    dial HOST:PORT, send a line and expect it echoed; retry for up
//	                         to N seconds (default 30); exit 0 on success, 1 on failure
//	addrs                    print the addresses of the pod's interfaces, then sleep
//
// Everything is logged to standard output, which the kubelet keeps as the container's log.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		pause()
		return
	}
	switch args[0] {
	case "sleep":
		pause()
	case "serve-tcp":
		if len(args) != 2 {
			usage()
		}
		serveTCP(args[1])
	case "connect":
		if len(args) < 2 || len(args) > 3 {
			usage()
		}
		timeout := 30 * time.Second
		if len(args) == 3 {
			s, err := strconv.Atoi(args[2])
			if err != nil || s <= 0 {
				usage()
			}
			timeout = time.Duration(s) * time.Second
		}
		os.Exit(connect(args[1], timeout))
	case "addrs":
		printAddrs()
		pause()
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: pause [sleep | serve-tcp PORT | connect HOST:PORT [SECONDS] | addrs]")
	os.Exit(2)
}

// pause waits for SIGTERM or SIGINT and reaps children meanwhile.
func pause() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s == syscall.SIGCHLD {
			reap()
			continue
		}
		os.Exit(0)
	}
}

func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

func serveTCP(port string) {
	ln, err := net.Listen("tcp", net.JoinHostPort("::", port))
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	fmt.Println("serving TCP echo on", ln.Addr())
	go func() {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		<-sigs
		os.Exit(0)
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Println("accept:", err)
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			fmt.Println("connection from", c.RemoteAddr())
			_, _ = io.Copy(c, c)
		}()
	}
}

// connect exchanges one line with the echo server at addr, retrying until timeout.
func connect(addr string, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for attempt := 1; ; attempt++ {
		err := exchange(addr)
		if err == nil {
			fmt.Printf("connect %s: ok (attempt %d)\n", addr, attempt)
			return 0
		}
		fmt.Printf("connect %s: attempt %d: %v\n", addr, attempt, err)
		if time.Now().After(deadline) {
			return 1
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func exchange(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	msg := fmt.Sprintf("podroute netcheck %d\n", time.Now().UnixNano())
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	fmt.Printf("connected %s -> %s\n", c.LocalAddr(), c.RemoteAddr())
	return nil
}

func printAddrs() {
	ifs, err := net.Interfaces()
	if err != nil {
		fmt.Println("interfaces:", err)
		return
	}
	for _, i := range ifs {
		addrs, _ := i.Addrs()
		fmt.Println(i.Name, addrs)
	}
}
