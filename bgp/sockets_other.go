//go:build !linux

package bgp

import (
	"errors"
	"net/netip"
)

type sessionKey struct {
	remote     netip.Addr
	remotePort uint16
	local      netip.Addr
	listenPort uint16
}

func abortSessions([]sessionKey) (int, error) {
	return 0, errors.New("aborting sessions silently is only supported on Linux")
}

func md5Supported() error { return nil }
