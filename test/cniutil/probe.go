package cniutil

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Ping checks that dst answers ICMP (or ICMPv6) echo from inside netns, like `ping -c 3 -w`:
// it sends an echo request every 500ms until a matching reply comes back, failing after
// timeout. It uses a raw socket opened inside netns, so it needs no ping binary.
func Ping(netns ns.NetNS, dst net.IP, timeout time.Duration) error {
	v4 := dst.To4() != nil
	network, unspec := "ip6:ipv6-icmp", "::"
	if v4 {
		network, unspec = "ip4:icmp", "0.0.0.0"
	}
	var conn net.PacketConn
	err := netns.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.ListenPacket(network, unspec)
		return err
	})
	if err != nil {
		return fmt.Errorf("ping %s: open socket in %s: %w", dst, netns.Path(), err)
	}
	defer conn.Close()

	var idb [2]byte
	token := make([]byte, 16)
	_, _ = rand.Read(idb[:])
	_, _ = rand.Read(token)
	id := binary.BigEndian.Uint16(idb[:])

	reqType, replyType := byte(128), byte(129) // ICMPv6 echo request / reply
	if v4 {
		reqType, replyType = 8, 0
	}
	echo := func(seq uint16) []byte {
		msg := make([]byte, 8+len(token))
		msg[0] = reqType
		binary.BigEndian.PutUint16(msg[4:], id)
		binary.BigEndian.PutUint16(msg[6:], seq)
		copy(msg[8:], token)
		if v4 {
			binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
		} // the kernel fills in ICMPv6 checksums on raw sockets
		return msg
	}

	deadline := time.Now().Add(timeout)
	buf := make([]byte, 1500)
	for seq := uint16(1); ; seq++ {
		if _, err := conn.WriteTo(echo(seq), &net.IPAddr{IP: dst}); err != nil {
			return fmt.Errorf("ping %s from %s: send: %w", dst, netns.Path(), err)
		}
		next := time.Now().Add(500 * time.Millisecond)
		if next.After(deadline) {
			next = deadline
		}
		_ = conn.SetReadDeadline(next)
		for {
			n, from, err := conn.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return fmt.Errorf("ping %s from %s: %w", dst, netns.Path(), err)
			}
			if n < 8+len(token) || buf[0] != replyType {
				continue
			}
			if binary.BigEndian.Uint16(buf[4:]) != id || !bytes.Equal(buf[8:8+len(token)], token) {
				continue
			}
			if ipa, ok := from.(*net.IPAddr); ok && !ipa.IP.Equal(dst) {
				return fmt.Errorf("ping %s from %s: reply came from %s", dst, netns.Path(), ipa.IP)
			}
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("ping %s from %s: no reply to %d echo requests within %v", dst, netns.Path(), seq, timeout)
		}
	}
}

func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// TCPExchange listens on dst:0 inside server, connects to it from inside client, sends a
// payload and reads it back echoed; it fails unless the round trip completes within timeout.
func TCPExchange(client, server ns.NetNS, dst net.IP, timeout time.Duration) error {
	var ln net.Listener
	err := server.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(dst.String(), "0"))
		return err
	})
	if err != nil {
		return fmt.Errorf("tcp: listen on %s in %s: %w", dst, server.Path(), err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		_, err = io.Copy(c, io.LimitReader(c, 16))
		served <- err
	}()

	var conn net.Conn
	err = client.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout("tcp", ln.Addr().String(), timeout)
		return err
	})
	if err != nil {
		return fmt.Errorf("tcp: connect to %s from %s: %w", ln.Addr(), client.Path(), err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	payload := []byte("podroute-tcp-ok!")
	if _, err := conn.Write(payload); err != nil {
		return fmt.Errorf("tcp: write to %s: %w", ln.Addr(), err)
	}
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(conn, got); err != nil {
		return fmt.Errorf("tcp: read echo from %s: %w", ln.Addr(), err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("tcp: echo from %s was %q", ln.Addr(), got)
	}
	if err := <-served; err != nil {
		return fmt.Errorf("tcp: server side: %w", err)
	}
	return nil
}

// Links lists the links of netns.
func Links(netns ns.NetNS) ([]netlink.Link, error) {
	var links []netlink.Link
	err := netns.Do(func(ns.NetNS) error {
		var err error
		links, err = retryDump(func() ([]netlink.Link, error) { return netlink.LinkList() })
		return err
	})
	return links, err
}

// LinkNames lists the names of the links of netns that start with prefix.
func LinkNames(netns ns.NetNS, prefix string) ([]string, error) {
	links, err := Links(netns)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			names = append(names, l.Attrs().Name)
		}
	}
	return names, nil
}

// Link is one link of netns by name (nil, nil if there is none).
func Link(netns ns.NetNS, name string) (netlink.Link, error) {
	var link netlink.Link
	err := netns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return nil
			}
			return err
		}
		link = l
		return nil
	})
	return link, err
}

// Addrs lists the addresses of the link named name in netns (family netlink.FAMILY_ALL, _V4 or
// _V6).
func Addrs(netns ns.NetNS, name string, family int) ([]netlink.Addr, error) {
	var addrs []netlink.Addr
	err := netns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		addrs, err = retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, family) })
		return err
	})
	return addrs, err
}

// Routes lists the main-table routes of netns of the given family, keeping those with the
// given protocol when proto is not 0.
func Routes(netns ns.NetNS, family int, proto netlink.RouteProtocol) ([]netlink.Route, error) {
	var routes []netlink.Route
	err := netns.Do(func(ns.NetNS) error {
		var err error
		routes, err = retryDump(func() ([]netlink.Route, error) {
			if proto == 0 {
				return netlink.RouteList(nil, family)
			}
			return netlink.RouteListFiltered(family, &netlink.Route{Protocol: proto}, netlink.RT_FILTER_PROTOCOL)
		})
		return err
	})
	return routes, err
}

// RouteTo returns the route in netns whose destination is exactly dst (a /32 or /128 for a
// plain address), or nil.
func RouteTo(netns ns.NetNS, dst *net.IPNet) (*netlink.Route, error) {
	family := netlink.FAMILY_V6
	if dst.IP.To4() != nil {
		family = netlink.FAMILY_V4
	}
	routes, err := Routes(netns, family, 0)
	if err != nil {
		return nil, err
	}
	for i := range routes {
		r := &routes[i]
		if r.Dst != nil && r.Dst.IP.Equal(dst.IP) && r.Dst.Mask.String() == dst.Mask.String() {
			return r, nil
		}
	}
	return nil, nil
}

// DefaultRoute returns the default route of the given family in netns, or nil.
func DefaultRoute(netns ns.NetNS, family int) (*netlink.Route, error) {
	routes, err := Routes(netns, family, 0)
	if err != nil {
		return nil, err
	}
	for i := range routes {
		r := &routes[i]
		if r.Dst == nil || (r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) {
			return r, nil
		}
	}
	return nil, nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

// ReadSysctl reads a sysctl (dotted or slashed name) as seen from inside netns.
func ReadSysctl(netns ns.NetNS, name string) (string, error) {
	var val string
	err := netns.Do(func(ns.NetNS) error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/")))
		val = strings.TrimSpace(string(b))
		return err
	})
	return val, err
}

// Reservations lists the addresses reserved in an IPAM data directory laid out like
// host-local's and podroute-ipam's: one file per reserved address, named after the address,
// under dir (usually <dataDir>/<network name>). A missing directory holds no reservation.
func Reservations(dir string) ([]net.IP, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ips []net.IP
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		if ip := net.ParseIP(e.Name()); ip != nil {
			ips = append(ips, ip)
		}
	}
	return ips, nil
}

// retryDump retries a netlink dump the kernel interrupted because the table changed under it.
func retryDump[T any](f func() ([]T, error)) ([]T, error) {
	var (
		v   []T
		err error
	)
	for range 10 {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// HasLocalRoute tells whether netns's local routing table has the local route for ip, which
// the kernel adds once ip is usable as an address of that namespace (for IPv6, after the
// address has left duplicate address detection, which happens asynchronously even for
// addresses added without it).
func HasLocalRoute(netns ns.NetNS, ip net.IP) (bool, error) {
	family, bits := netlink.FAMILY_V6, 128
	if ip.To4() != nil {
		family, bits = netlink.FAMILY_V4, 32
	}
	var found bool
	err := netns.Do(func(ns.NetNS) error {
		rs, err := retryDump(func() ([]netlink.Route, error) {
			return netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
		})
		for _, r := range rs {
			if r.Type == unix.RTN_LOCAL && r.Dst != nil && r.Dst.IP.Equal(ip) {
				if ones, _ := r.Dst.Mask.Size(); ones == bits {
					found = true
				}
			}
		}
		return err
	})
	return found, err
}
