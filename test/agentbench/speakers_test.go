package agentbench

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/server"

	"github.com/podroute/podroute/test/lab"
)

// The speaker farm: many eBGP speakers (top-of-rack routers, as far as the agent can tell)
// emulated by one process, this test executable started again in a namespace of its own on
// the fabric, with speakersEnv naming its configuration: one GoBGP server per address, each
// with its own router ID, listening on its own address, passive, with the one node as its
// only neighbor and one prefix of its own to announce. One server per address because a
// GoBGP server tells its neighbors apart by their address, and here every session has the
// same remote end: the node.
const speakersEnv = "PODROUTE_AGENTBENCH_SPEAKERS_CONFIG"

// Addressing of the farm: its namespace holds farmFabricAddr on the fabric's segment and the
// speakers' addresses 198.51.100.1, .2, ... (a documentation range, on the same link). The
// node reaches them through an on-link route (198.51.100.0/24 dev uplink), so every session
// is between directly connected addresses, as with routers on the rack's segment.
var (
	farmFabricAddr = netip.MustParseAddr("192.0.2.9")
	farmPrefix     = netip.MustParsePrefix("198.51.100.0/24")
)

// speakerAddr is the address of speaker i (1-based).
func speakerAddr(i int) netip.Addr {
	b := farmPrefix.Addr().As4()
	b[3] = byte(i)
	return netip.AddrFrom4(b)
}

// speakerPrefix is the prefix speaker i announces: 10.1.i.0/24.
func speakerPrefix(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i), 0}), 24)
}

type farmConfig struct {
	ASN       uint32
	Peer      string // the node's address
	PeerASN   uint32
	HoldTime  uint64
	Keepalive uint64
	Speakers  []farmSpeaker
}

type farmSpeaker struct {
	Address string
	Prefix  string
}

// farm is a running speaker farm.
type farm struct {
	ns *lab.NetNS
	*lab.Helper
}

// startFarm creates the farm's namespace on the fabric with count speaker addresses, the
// node's on-link route to them, and starts the speakers, all passive, waiting for the node
// to dial. Everything goes away in t.Cleanup.
func startFarm(t testing.TB, l *lab.Lab, n *lab.Node, count int, asn, nodeASN uint32, hold, keepalive time.Duration) *farm {
	t.Helper()
	if count < 1 || count > 250 {
		t.Fatalf("speaker farm: %d speakers, want 1..250", count)
	}
	ns, err := lab.CreateNetNS(l.Name + "-farm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Delete() })
	if err := l.Fabric.IP(
		[]string{"link", "add", "farm", "type", "veth", "peer", "name", "uplink", "netns", ns.Name},
		[]string{"link", "set", "farm", "master", l.DefaultSegment().Bridge, "up"},
	); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	batch := fmt.Sprintf("addr add %s/%d dev uplink\n", farmFabricAddr, lab.FabricPrefixV4.Bits())
	cfg := farmConfig{ASN: asn, Peer: n.IPv4.String(), PeerASN: nodeASN, HoldTime: uint64(hold.Seconds()), Keepalive: uint64(keepalive.Seconds())}
	for i := 1; i <= count; i++ {
		batch += fmt.Sprintf("addr add %s/%d dev uplink\n", speakerAddr(i), farmPrefix.Bits())
		cfg.Speakers = append(cfg.Speakers, farmSpeaker{Address: speakerAddr(i).String(), Prefix: speakerPrefix(i).String()})
	}
	batch += "link set uplink up\n"
	batchPath := filepath.Join(dir, "farm.ip")
	if err := os.WriteFile(batchPath, []byte(batch), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "-n", ns.Name, "-batch", batchPath).CombinedOutput(); err != nil {
		t.Fatalf("speaker farm addresses: %v: %s", err, out)
	}
	if err := n.IP([]string{"route", "add", farmPrefix.String(), "dev", lab.UplinkName}); err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "farm.json")
	if err := os.WriteFile(cfgPath, js, 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := lab.StartHelper(ns.Name, speakersEnv, cfgPath, filepath.Join(dir, "farm.log"))
	if err != nil {
		t.Fatalf("speaker farm: %v", err)
	}
	f := &farm{ns: ns, Helper: h}
	t.Cleanup(f.Stop)
	lab.Eventually(t, converge, "speaker farm up", func() error {
		if !strings.Contains(f.Log(), farmReadyTag) {
			select {
			case <-f.Exited():
				return fmt.Errorf("speaker farm exited:\n%s", tail(f.Log(), 20))
			default:
			}
			return fmt.Errorf("speaker farm not up yet")
		}
		return nil
	})
	return f
}

const (
	farmStateTag = "farm-state:"
	farmReadyTag = "farm: up"
)

// established returns, for every speaker address that logged a session reaching
// Established at or after t, the first such time.
func (f *farm) established(after time.Time) map[netip.Addr]time.Time {
	out := map[netip.Addr]time.Time{}
	for _, c := range lab.ParseStateChanges(f.Log(), farmStateTag) {
		if c.State != "established" || c.Time.Before(after) {
			continue
		}
		if _, seen := out[c.Peer]; !seen {
			out[c.Peer] = c.Time
		}
	}
	return out
}

func init() { lab.RunHelper(speakersEnv, "farm", runFarm) }

// runFarm runs the speakers until SIGTERM or SIGKILL.
func runFarm(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg farmConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return err
	}
	ctx := context.Background()
	for _, sp := range cfg.Speakers {
		s := server.NewBgpServer(server.LoggerOption(quietLogger, nil))
		go s.Serve()
		if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
			Asn: cfg.ASN, RouterId: sp.Address, ListenPort: 179, ListenAddresses: []string{sp.Address},
		}}); err != nil {
			return fmt.Errorf("start speaker %s: %w", sp.Address, err)
		}
		if err := lab.LogPeerStates(ctx, s, os.Stderr, farmStateTag, sp.Address); err != nil {
			return fmt.Errorf("speaker %s: watch peer events: %w", sp.Address, err)
		}
		p, err := netip.ParsePrefix(sp.Prefix)
		if err != nil {
			return err
		}
		if err := lab.Announce(ctx, s, p, sp.Address, ""); err != nil {
			return fmt.Errorf("speaker %s: %w", sp.Address, err)
		}
		peer := &api.Peer{
			Conf:      &api.PeerConf{NeighborAddress: cfg.Peer, PeerAsn: cfg.PeerASN},
			Timers:    &api.Timers{Config: &api.TimersConfig{HoldTime: cfg.HoldTime, KeepaliveInterval: cfg.Keepalive, ConnectRetry: 5}},
			Transport: &api.Transport{LocalAddress: sp.Address, PassiveMode: true},
			AfiSafis: []*api.AfiSafi{{Config: &api.AfiSafiConfig{
				Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, Enabled: true,
			}}},
		}
		if err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: peer}); err != nil {
			return fmt.Errorf("speaker %s: add peer %s: %w", sp.Address, cfg.Peer, err)
		}
	}
	fmt.Fprintf(os.Stderr, "%s: %d speakers, AS %d, neighbor %s (AS %d), at %s\n", farmReadyTag, len(cfg.Speakers), cfg.ASN, cfg.Peer, cfg.PeerASN, time.Now().Format(time.RFC3339Nano))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}

// quietLogger prints GoBGP's warnings and errors only: 200 servers' session chatter would
// be most of the farm's work otherwise.
var quietLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("farm", "gobgp")
