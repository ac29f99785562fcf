package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// The rogue speaker is this very executable started again inside the rogue's namespace, with
// rogueEnv naming its configuration file: init below then runs the speaker instead of the
// program (the tests). It is a plain GoBGP server: no podroute code on that side.
const rogueEnv = "PODROUTE_LAB_ROGUE_CONFIG"

// RogueOptions configures StartRogue.
type RogueOptions struct {
	// Name of the Node object and namespace (default "rogue").
	Name string
	// Index gives the rogue 192.0.2.Index and 2001:db8::Index (hex digits as written), and
	// pod CIDRs 10.244.Index.0/24 and fd00:10:244:Index::/64 on its Node object, so every
	// agent's mesh peers with it. Default 99.
	Index int
	// ASN of the rogue (default 64512, the cluster's: iBGP like a node).
	ASN uint32
	// Peers are the nodes the rogue accepts sessions from (default: every node of the lab,
	// unless PeerAddresses is set).
	Peers []*Node
	// ExtraPeers are further peers (routers, say) the rogue accepts sessions from.
	ExtraPeers []RoguePeer
	// Announce are the prefixes the rogue originates, next hop its own address.
	Announce []netip.Prefix
	// Generate, when Count > 0, makes the rogue also originate Count consecutive prefixes
	// of First's length starting at First (10.0.0.0/24, 10.0.1.0/24, ...), for scale
	// tests. They are put in the speaker's table before any peer is configured, so each
	// session's initial UPDATEs carry them all.
	Generate PrefixRange
	// LogPeerEvents makes the rogue log every session state change with its time (see
	// Rogue.StateChanges).
	LogPeerEvents bool
}

// RoguePeer is a peer of the rogue speaker other than a lab node.
type RoguePeer struct {
	Address netip.Addr
	// ASN of the peer (default: the rogue's own, iBGP).
	ASN uint32
}

// PrefixRange is Count consecutive prefixes of First's length starting at First.
type PrefixRange struct {
	First netip.Prefix
	Count int
}

// Prefixes lists the range. It stops early at the end of the address space.
func (r PrefixRange) Prefixes() []netip.Prefix {
	if r.Count <= 0 || !r.First.IsValid() {
		return nil
	}
	out := make([]netip.Prefix, 0, r.Count)
	p := r.First.Masked()
	for range r.Count {
		out = append(out, p)
		next, ok := nextPrefix(p)
		if !ok {
			break
		}
		p = next
	}
	return out
}

// nextPrefix is the prefix of the same length right after p.
func nextPrefix(p netip.Prefix) (netip.Prefix, bool) {
	b := p.Addr().AsSlice()
	bits := p.Bits()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	// Add 1 at bit position bits-1 (counted from the most significant bit).
	i, inc := (bits-1)/8, byte(1)<<(7-uint((bits-1)%8))
	for ; i >= 0; i-- {
		sum := uint16(b[i]) + uint16(inc)
		b[i] = byte(sum)
		if sum < 0x100 {
			break
		}
		inc = 1
	}
	if i < 0 {
		return netip.Prefix{}, false
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, bits), true
}

// Rogue is a running hostile BGP speaker.
type Rogue struct {
	*Node
	Announce []netip.Prefix
	*Helper
}

type rogueConfig struct {
	ASN      uint32
	RouterID string
	Listen   []string
	NextHop4 string
	NextHop6 string
	Peers    []string
	// PeerASNs are the peers' ASes where not ASN (iBGP).
	PeerASNs map[string]uint32 `json:",omitempty"`
	Announce []string
	// GenerateFirst/GenerateCount: see RogueOptions.Generate.
	GenerateFirst string `json:",omitempty"`
	GenerateCount int    `json:",omitempty"`
	LogEvents     bool   `json:",omitempty"`
}

// StartRogue creates the rogue's namespace on the fabric and its Node object, and starts the
// speaker. Everything goes away in t.Cleanup.
func (l *Lab) StartRogue(t testing.TB, opts RogueOptions) *Rogue {
	t.Helper()
	if opts.Name == "" {
		opts.Name = "rogue"
	}
	if opts.Index == 0 {
		opts.Index = 99
	}
	if opts.ASN == 0 {
		opts.ASN = 64512
	}
	if opts.Peers == nil && opts.ExtraPeers == nil {
		opts.Peers = l.Nodes()
	}
	n, err := l.addNode(t, opts.Name, opts.Index, true)
	if err != nil {
		t.Fatalf("lab: rogue: %v", err)
	}
	cfg := rogueConfig{
		ASN: opts.ASN, RouterID: n.IPv4.String(),
		Listen:   []string{n.IPv4.String(), n.IPv6.String()},
		NextHop4: n.IPv4.String(), NextHop6: n.IPv6.String(),
	}
	for _, p := range opts.Peers {
		cfg.Peers = append(cfg.Peers, p.IPv4.String())
	}
	for _, p := range opts.ExtraPeers {
		cfg.Peers = append(cfg.Peers, p.Address.String())
		if p.ASN != 0 {
			if cfg.PeerASNs == nil {
				cfg.PeerASNs = map[string]uint32{}
			}
			cfg.PeerASNs[p.Address.String()] = p.ASN
		}
	}
	for _, p := range opts.Announce {
		cfg.Announce = append(cfg.Announce, p.String())
	}
	if opts.Generate.Count > 0 {
		cfg.GenerateFirst, cfg.GenerateCount = opts.Generate.First.String(), opts.Generate.Count
	}
	cfg.LogEvents = opts.LogPeerEvents
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(n.Dir, "rogue.json")
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := StartHelper(n.NetNS.Name, rogueEnv, cfgPath, n.AgentLog)
	if err != nil {
		t.Fatalf("lab: rogue speaker: %v", err)
	}
	r := &Rogue{Node: n, Announce: opts.Announce, Helper: h}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("lab: rogue speaker log:\n%s", Tail(r.Log(), 40))
		}
		r.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = l.Kube.DeleteNode(ctx, n.Name)
	})
	if err := l.createNodeObject(n, n.PodCIDRs); err != nil {
		t.Fatalf("lab: rogue: %v", err)
	}
	return r
}

func init() { RunHelper(rogueEnv, "rogue", runRogue) }

// runRogue runs the hostile speaker until SIGTERM/SIGKILL.
func runRogue(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg rogueConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return err
	}
	ctx := context.Background()
	s := server.NewBgpServer()
	go s.Serve()
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: cfg.ASN, RouterId: cfg.RouterID, ListenPort: 179, ListenAddresses: cfg.Listen,
	}}); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	if cfg.LogEvents {
		if err := LogPeerStates(ctx, s, os.Stderr, rogueStateTag, ""); err != nil {
			return fmt.Errorf("watch peer events: %w", err)
		}
	}
	if cfg.GenerateCount > 0 {
		first, err := netip.ParsePrefix(cfg.GenerateFirst)
		if err != nil {
			return err
		}
		gen := PrefixRange{First: first, Count: cfg.GenerateCount}.Prefixes()
		for _, p := range gen {
			if err := Announce(ctx, s, p, cfg.NextHop4, cfg.NextHop6); err != nil {
				return err
			}
		}
		fmt.Fprintf(os.Stderr, "rogue: %d prefixes from %s in the table at %s\n", len(gen), first, time.Now().Format(time.RFC3339Nano))
	}
	for _, p := range cfg.Peers {
		peerASN := cfg.ASN
		if a, ok := cfg.PeerASNs[p]; ok {
			peerASN = a
		}
		peer := &api.Peer{
			Conf:      &api.PeerConf{NeighborAddress: p, PeerAsn: peerASN},
			Timers:    &api.Timers{Config: &api.TimersConfig{HoldTime: 3, KeepaliveInterval: 1, ConnectRetry: 1}},
			Transport: &api.Transport{LocalAddress: cfg.NextHop4, PassiveMode: true},
		}
		for _, f := range []*api.Family{
			{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST},
			{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST},
		} {
			peer.AfiSafis = append(peer.AfiSafis, &api.AfiSafi{Config: &api.AfiSafiConfig{Family: f, Enabled: true}})
		}
		if err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: peer}); err != nil {
			return fmt.Errorf("add peer %s: %w", p, err)
		}
	}
	for _, a := range cfg.Announce {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return err
		}
		if err := Announce(ctx, s, p, cfg.NextHop4, cfg.NextHop6); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "rogue: AS %d, router ID %s, peers %s, announcing %s\n", cfg.ASN, cfg.RouterID,
		strings.Join(cfg.Peers, " "), strings.Join(cfg.Announce, " "))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}

// rogueStateTag starts the log lines of RogueOptions.LogPeerEvents.
const rogueStateTag = "rogue-peer-state:"

// StateChanges lists the session state changes the rogue logged so far (only with
// RogueOptions.LogPeerEvents).
func (r *Rogue) StateChanges() []StateChange {
	return ParseStateChanges(r.Log(), rogueStateTag)
}
