package lab

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/osrg/gobgp/v4/pkg/apiutil"
	bgppkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// What the lab's plain GoBGP speakers (the rogue speaker, the benchmarks' speaker farm) share:
// announcing a prefix, and logging their sessions' state changes in lines a test reads back.

// StateChange is one session state change a speaker logged.
type StateChange struct {
	Time time.Time
	// Peer is the address the line names: the neighbor's, or the speaker's own where every
	// speaker has the same neighbor.
	Peer  netip.Addr
	State string // idle, connect, active, opensent, openconfirm, established
}

// LogPeerStates writes a line "tag time address state" to w for every session state change
// of s; address is the neighbor's, or local where local is set.
func LogPeerStates(ctx context.Context, s *server.BgpServer, w io.Writer, tag, local string) error {
	return s.WatchEvent(ctx, server.WatchEventMessageCallbacks{
		OnPeerUpdate: func(pe *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
			if pe == nil || pe.Type != apiutil.PEER_EVENT_STATE {
				return
			}
			addr := local
			if addr == "" {
				addr = pe.Peer.State.NeighborAddress.String()
			}
			fmt.Fprintf(w, "%s %s %s %s\n", tag, time.Now().Format(time.RFC3339Nano), addr,
				strings.ToLower(strings.TrimPrefix(pe.Peer.State.SessionState.String(), "BGP_FSM_")))
		},
	}, server.WatchPeer())
}

// ParseStateChanges reads back, in order, the lines LogPeerStates wrote with tag into log.
func ParseStateChanges(log, tag string) []StateChange {
	var out []StateChange
	for _, line := range strings.Split(log, "\n") {
		rest, ok := strings.CutPrefix(line, tag+" ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 3 {
			continue
		}
		t, err1 := time.Parse(time.RFC3339Nano, f[0])
		a, err2 := netip.ParseAddr(f[1])
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, StateChange{Time: t, Peer: a, State: f[2]})
	}
	return out
}

// Announce originates p from s with origin IGP and the next hop of p's family (nextHop6 may
// be empty for a speaker that announces IPv4 only).
func Announce(ctx context.Context, s *server.BgpServer, p netip.Prefix, nextHop4, nextHop6 string) error {
	nlri, err := bgppkt.NewIPAddrPrefix(p)
	if err != nil {
		return fmt.Errorf("announce %s: %w", p, err)
	}
	family, nh := bgppkt.RF_IPv4_UC, nextHop4
	if p.Addr().Is6() {
		family, nh = bgppkt.RF_IPv6_UC, nextHop6
	}
	nhAddr, err := netip.ParseAddr(nh)
	if err != nil {
		return fmt.Errorf("announce %s: next hop: %w", p, err)
	}
	attrs := []bgppkt.PathAttributeInterface{bgppkt.NewPathAttributeOrigin(bgppkt.BGP_ORIGIN_ATTR_TYPE_IGP)}
	if family == bgppkt.RF_IPv4_UC {
		a, err := bgppkt.NewPathAttributeNextHop(nhAddr)
		if err != nil {
			return fmt.Errorf("announce %s: %w", p, err)
		}
		attrs = append(attrs, a)
	} else {
		a, err := bgppkt.NewPathAttributeMpReachNLRI(family, []bgppkt.PathNLRI{{NLRI: nlri}}, nhAddr)
		if err != nil {
			return fmt.Errorf("announce %s: %w", p, err)
		}
		attrs = append(attrs, a)
	}
	path := &apiutil.Path{Family: family, Nlri: nlri, Attrs: attrs, Age: time.Now().Unix()}
	if _, err := s.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{path}}); err != nil {
		return fmt.Errorf("announce %s: %w", p, err)
	}
	return nil
}
