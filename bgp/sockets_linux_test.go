package bgp

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// TestMD5Key: a listener with a key for a peer accepts a connection from it only when the
// peer signs with the same key; unsigned or wrongly signed segments are dropped, so the
// connection never comes up. Over IPv4 and IPv6, which lay the peer out differently in
// struct tcp_md5sig.
func TestMD5Key(t *testing.T) {
	for _, loopback := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
		t.Run(loopback.String(), func(t *testing.T) {
			var lc net.ListenConfig
			lc.SetMultipathTCP(false) // MPTCP sockets take no MD5 key
			ln, err := lc.Listen(context.Background(), "tcp", netip.AddrPortFrom(loopback, 0).String())
			if err != nil {
				t.Skipf("no %s loopback: %v", loopback, err)
			}
			defer ln.Close()
			if err := control(ln.(*net.TCPListener), func(fd int) error { return setMD5Key(fd, loopback, "podroute-md5") }); err != nil {
				if errors.Is(err, syscall.ENOPROTOOPT) || errors.Is(err, syscall.ENOENT) {
					t.Skipf("kernel without TCP MD5: %v", err)
				}
				t.Fatalf("set the key on the listener: %v", err)
			}
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					_, _ = c.Write([]byte("ok"))
					_ = c.Close()
				}
			}()

			dial := func(key string) error {
				d := net.Dialer{Timeout: 500 * time.Millisecond}
				d.SetMultipathTCP(false)
				if key != "" {
					d.Control = func(_, _ string, c syscall.RawConn) error {
						var serr error
						if err := c.Control(func(fd uintptr) { serr = setMD5Key(int(fd), loopback, key) }); err != nil {
							return err
						}
						return serr
					}
				}
				c, err := d.Dial("tcp", ln.Addr().String())
				if err != nil {
					return err
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Second))
				got, err := io.ReadAll(c)
				if err == nil && string(got) != "ok" {
					err = errors.New("read " + string(got))
				}
				return err
			}
			if err := dial("podroute-md5"); err != nil {
				t.Errorf("signed with the listener's key: %v", err)
			}
			if err := dial(""); err == nil {
				t.Error("unsigned connection accepted by a listener with a key for the peer")
			}
			if err := dial("not-the-key"); err == nil {
				t.Error("connection signed with another key accepted")
			}
		})
	}
}

func control(ln *net.TCPListener, f func(fd int) error) error {
	sc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := sc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}
