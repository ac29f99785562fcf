package bgp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// sessionKey identifies the TCP connections of one BGP session: the peer's address and
// port, and our local address (zero: any) and listening port (0: none).
type sessionKey struct {
	remote     netip.Addr
	remotePort uint16
	local      netip.Addr
	listenPort uint16
}

// abortSessions shuts down (FIN, no BGP NOTIFICATION) every TCP connection of this
// process that belongs to one of the given sessions, and returns how many it cut.
//
// GoBGP has no API to drop one session silently (ResetPeer and DeletePeer send a CEASE)
// and its graceful StopBgp withdraws routes through the sessions still open while it
// deconfigures the others (see Stop). Shutting the sockets down under it makes both ends
// read EOF, which RFC 4724 speakers, GoBGP included, treat as a restart; a NOTIFICATION
// GoBGP still writes fails on the dead socket. The connections are found through
// /proc/self/fd and matched on both endpoints, so other TCP connections of the process
// are left alone.
func abortSessions(keys []sessionKey) (int, error) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		link, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil || !strings.HasPrefix(link, "socket:") {
			continue
		}
		if typ, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE); err != nil || typ != syscall.SOCK_STREAM {
			continue
		}
		if proto, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_PROTOCOL); err != nil || proto != syscall.IPPROTO_TCP {
			continue
		}
		peerSA, err := syscall.Getpeername(fd)
		if err != nil {
			continue // listener or not connected
		}
		localSA, err := syscall.Getsockname(fd)
		if err != nil {
			continue
		}
		remote, rport := sockaddrAddrPort(peerSA)
		local, lport := sockaddrAddrPort(localSA)
		if !remote.IsValid() {
			continue
		}
		for _, k := range keys {
			if remote != k.remote || (k.local.IsValid() && local != k.local) {
				continue
			}
			if rport != k.remotePort && (k.listenPort == 0 || lport != k.listenPort) {
				continue
			}
			if syscall.Shutdown(fd, syscall.SHUT_RDWR) == nil {
				n++
			}
			break
		}
	}
	return n, nil
}

func sockaddrAddrPort(sa syscall.Sockaddr) (netip.Addr, uint16) {
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrFrom4(sa.Addr), uint16(sa.Port)
	case *syscall.SockaddrInet6:
		return netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)
	}
	return netip.Addr{}, 0
}

var (
	md5Once sync.Once
	md5Err  error
)

// md5Supported probes once whether TCP_MD5SIG can be set on a listener made the way
// GoBGP makes it. Without it GoBGP only warns on the listener and then fails every
// outgoing connection, so a password would silently keep the session down. Go 1.24+
// listeners use MPTCP by default, which does not support MD5: binaries needing
// passwords must run with GODEBUG multipathtcp=0 (e.g. //go:debug in package main).
func md5Supported() error {
	md5Once.Do(func() {
		var lc net.ListenConfig
		l, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
		if err != nil {
			md5Err = fmt.Errorf("probe TCP MD5 support: %w", err)
			return
		}
		defer l.Close()
		sc, err := l.(*net.TCPListener).SyscallConn()
		if err != nil {
			md5Err = fmt.Errorf("probe TCP MD5 support: %w", err)
			return
		}
		var serr error
		if err := sc.Control(func(fd uintptr) {
			serr = setMD5Key(int(fd), netip.MustParseAddr("127.0.0.2"), "x")
		}); err != nil {
			serr = err
		}
		if serr != nil {
			md5Err = fmt.Errorf("TCP MD5 signatures unavailable on listening sockets (MPTCP listener? set GODEBUG multipathtcp=0): %w", serr)
		}
	})
	return md5Err
}

// setMD5Key sets the TCP MD5 signature key (RFC 2385) for segments to and from peer on the
// socket fd: on a listener, for the connections it accepts from peer; on a socket before
// connect, for its connection to peer. An empty key removes it.
func setMD5Key(fd int, peer netip.Addr, key string) error {
	if len(key) > unix.TCP_MD5SIG_MAXKEYLEN {
		return fmt.Errorf("TCP MD5 key longer than %d bytes", unix.TCP_MD5SIG_MAXKEYLEN)
	}
	sig := unix.TCPMD5Sig{Keylen: uint16(len(key))}
	copy(sig.Key[:], key)
	// Addr is a struct sockaddr_storage holding a sockaddr_in or sockaddr_in6 (port 0).
	if peer = peer.Unmap(); peer.Is4() {
		sig.Addr.Family = unix.AF_INET
		a := peer.As4()
		copy(sig.Addr.Data[2:], a[:]) // after sin_port
	} else {
		sig.Addr.Family = unix.AF_INET6
		a := peer.As16()
		copy(sig.Addr.Data[6:], a[:]) // after sin6_port and sin6_flowinfo
	}
	return os.NewSyscallError("setsockopt TCP_MD5SIG", unix.SetsockoptTCPMD5Sig(fd, unix.IPPROTO_TCP, unix.TCP_MD5SIG, &sig))
}
