package agentbench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/config/oc"
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
	// Neighbors, when set, replaces Peer: every speaker peers with each of them (emulated
	// nodes, route-reflector clients of the reflectors), IPv4 unicast only, keeps nothing
	// it learns (the routes are the real agents' business, and 1,000 speakers holding
	// every route would be most of the machine's work), and logs its sessions' state
	// changes with farmRRStateTag, naming itself and the neighbor.
	Neighbors []string
	// Control, when set, is a unix socket on which the farm takes one command per
	// connection: "add ADDRESS PREFIX" starts a speaker, "del ADDRESS" stops one; it
	// answers "ok" or the error.
	Control string
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
	servers := map[string]*server.BgpServer{}
	for _, sp := range cfg.Speakers {
		s, err := startSpeaker(ctx, &cfg, sp)
		if err != nil {
			return err
		}
		servers[sp.Address] = s
	}
	if cfg.Control != "" {
		ln, err := net.Listen("unix", cfg.Control)
		if err != nil {
			return fmt.Errorf("control socket: %w", err)
		}
		defer ln.Close()
		go serveFarmControl(ctx, ln, &cfg, servers)
	}
	neighbors := cfg.Peer
	if len(cfg.Neighbors) > 0 {
		neighbors = strings.Join(cfg.Neighbors, ",")
	}
	fmt.Fprintf(os.Stderr, "%s: %d speakers, AS %d, neighbor %s (AS %d), at %s\n", farmReadyTag, len(cfg.Speakers), cfg.ASN, neighbors, cfg.PeerASN, time.Now().Format(time.RFC3339Nano))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}

// startSpeaker starts one speaker of the farm: its own GoBGP server, passive towards its
// neighbor(s), announcing its prefix with itself as the next hop.
func startSpeaker(ctx context.Context, cfg *farmConfig, sp farmSpeaker) (*server.BgpServer, error) {
	s := server.NewBgpServer(server.LoggerOption(quietLogger, nil))
	go s.Serve()
	global := &api.Global{Asn: cfg.ASN, RouterId: sp.Address, ListenPort: 179, ListenAddresses: []string{sp.Address}}
	if len(cfg.Neighbors) > 0 {
		// IPv4 unicast alone: GoBGP otherwise makes a table of 2,048 shards for each of the
		// families it knows, about 10 MiB a server, 10 GiB for a farm of 1,000.
		global.Families = []uint32{uint32(oc.AfiSafiTypeToIntMap[oc.AFI_SAFI_TYPE_IPV4_UNICAST])}
	}
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: global}); err != nil {
		return nil, fmt.Errorf("start speaker %s: %w", sp.Address, err)
	}
	neighbors := []string{cfg.Peer}
	if len(cfg.Neighbors) > 0 {
		neighbors = cfg.Neighbors
		// Keep nothing learned (no best-path work for routes nobody here uses), but the
		// speaker's own path, which passes the global import policy too.
		own := &api.Policy{Name: "own-only", Statements: []*api.Statement{{
			Name:       "local",
			Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
			Actions:    &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
		}}}
		if err := s.AddPolicy(ctx, &api.AddPolicyRequest{Policy: own}); err != nil {
			return nil, fmt.Errorf("speaker %s: import policy: %w", sp.Address, err)
		}
		if err := s.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
			Name: "global", Direction: api.PolicyDirection_POLICY_DIRECTION_IMPORT,
			Policies: []*api.Policy{{Name: own.Name}}, DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT,
		}}); err != nil {
			return nil, fmt.Errorf("speaker %s: import policy: %w", sp.Address, err)
		}
		if err := logSpeakerStates(ctx, s, sp.Address); err != nil {
			return nil, fmt.Errorf("speaker %s: watch peer events: %w", sp.Address, err)
		}
	} else if err := lab.LogPeerStates(ctx, s, os.Stderr, farmStateTag, sp.Address); err != nil {
		return nil, fmt.Errorf("speaker %s: watch peer events: %w", sp.Address, err)
	}
	p, err := netip.ParsePrefix(sp.Prefix)
	if err != nil {
		return nil, err
	}
	if err := lab.Announce(ctx, s, p, sp.Address, ""); err != nil {
		return nil, fmt.Errorf("speaker %s: %w", sp.Address, err)
	}
	for _, nb := range neighbors {
		peer := &api.Peer{
			Conf:      &api.PeerConf{NeighborAddress: nb, PeerAsn: cfg.PeerASN},
			Timers:    &api.Timers{Config: &api.TimersConfig{HoldTime: cfg.HoldTime, KeepaliveInterval: cfg.Keepalive, ConnectRetry: 5}},
			Transport: &api.Transport{LocalAddress: sp.Address, PassiveMode: true},
			AfiSafis: []*api.AfiSafi{{Config: &api.AfiSafiConfig{
				Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, Enabled: true,
			}}},
		}
		if err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: peer}); err != nil {
			return nil, fmt.Errorf("speaker %s: add peer %s: %w", sp.Address, nb, err)
		}
	}
	return s, nil
}

// farmRRStateTag starts the state-change lines of a farm with several neighbors:
// "tag time speaker neighbor state".
const farmRRStateTag = "farm-rr-state:"

func logSpeakerStates(ctx context.Context, s *server.BgpServer, local string) error {
	return s.WatchEvent(ctx, server.WatchEventMessageCallbacks{
		OnPeerUpdate: func(pe *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
			if pe == nil || pe.Type != apiutil.PEER_EVENT_STATE {
				return
			}
			fmt.Fprintf(os.Stderr, "%s %s %s %s %s\n", farmRRStateTag, time.Now().Format(time.RFC3339Nano), local,
				pe.Peer.State.NeighborAddress, strings.ToLower(strings.TrimPrefix(pe.Peer.State.SessionState.String(), "BGP_FSM_")))
		},
	}, server.WatchPeer())
}

// serveFarmControl runs the control socket's commands (farmConfig.Control), one per
// connection, until ln is closed.
func serveFarmControl(ctx context.Context, ln net.Listener, cfg *farmConfig, servers map[string]*server.BgpServer) {
	var mu sync.Mutex
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				fmt.Fprintf(c, "read: %v\n", err)
				return
			}
			f := strings.Fields(line)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case len(f) == 3 && f[0] == "add":
				if _, dup := servers[f[1]]; dup {
					fmt.Fprintf(c, "speaker %s runs already\n", f[1])
					return
				}
				s, err := startSpeaker(ctx, cfg, farmSpeaker{Address: f[1], Prefix: f[2]})
				if err != nil {
					fmt.Fprintf(c, "%v\n", err)
					return
				}
				servers[f[1]] = s
			case len(f) == 2 && f[0] == "del":
				s, ok := servers[f[1]]
				if !ok {
					fmt.Fprintf(c, "no speaker %s\n", f[1])
					return
				}
				s.Stop()
				delete(servers, f[1])
			default:
				fmt.Fprintf(c, "bad command %q\n", line)
				return
			}
			fmt.Fprintln(c, "ok")
		}()
	}
}

// farmCommand sends one command to a farm's control socket and waits for its answer.
func farmCommand(socket, cmd string) error {
	c, err := net.DialTimeout("unix", socket, 10*time.Second)
	if err != nil {
		return fmt.Errorf("farm control: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := fmt.Fprintln(c, cmd); err != nil {
		return fmt.Errorf("farm control %q: %w", cmd, err)
	}
	answer, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("farm control %q: %w", cmd, err)
	}
	if a := strings.TrimSpace(answer); a != "ok" {
		return fmt.Errorf("farm control %q: %s", cmd, a)
	}
	return nil
}

// quietLogger prints GoBGP's warnings and errors only: 200 servers' session chatter would
// be most of the farm's work otherwise.
var quietLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("farm", "gobgp")

// The reflectors' farm (BenchmarkReflectorScale): emulated nodes, each a speaker of the same
// AS as the cluster with both route reflectors as its neighbors, announcing its Node's pod
// CIDR with itself as the next hop. Its namespace holds rrFarmFabricAddr on the fabric's
// segment and every address of rrFarmPrefix (198.18.0.0/15 is the benchmarking range) from
// the start; speakers come and go through the control socket. The real nodes reach the
// speakers through an on-link route, as nodes on the rack's segment.
var (
	rrFarmFabricAddr = netip.MustParseAddr("192.0.2.8")
	rrFarmPrefix     = netip.MustParsePrefix("198.18.0.0/21")
)

// rrFarmSize is how many speaker addresses rrFarmPrefix holds (network and broadcast out).
func rrFarmSize() int { return 1<<(32-rrFarmPrefix.Bits()) - 2 }

// emuAddr is the address of emulated node k (1..rrFarmSize()).
func emuAddr(k int) netip.Addr {
	b := rrFarmPrefix.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(k)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// emuPrefix is the pod CIDR of emulated node k: 10.(100+k/256).(k%256).0/24, inside
// scaleClusterV4 and clear of the lab nodes' 10.244.0.0/16.
func emuPrefix(k int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + k/256), byte(k % 256), 0}), 24)
}

func emuSpeaker(k int) farmSpeaker {
	return farmSpeaker{Address: emuAddr(k).String(), Prefix: emuPrefix(k).String()}
}

// rrFarm is a running reflectors' farm.
type rrFarm struct {
	*farm
	control string
}

// startReflectorFarm creates the farm's namespace with every address of rrFarmPrefix, adds
// the on-link route to them in each of nodes, and starts the initial speakers, all passive
// (the reflectors, at lower addresses, dial). Everything goes away in t.Cleanup.
func startReflectorFarm(t testing.TB, l *lab.Lab, reflectors []netip.Addr, nodes []*lab.Node, asn uint32, hold, keepalive time.Duration, initial []farmSpeaker) *rrFarm {
	t.Helper()
	ns, err := lab.CreateNetNS(l.Name + "-rrfarm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Delete() })
	if err := l.Fabric.IP(
		[]string{"link", "add", "rrfarm", "type", "veth", "peer", "name", "uplink", "netns", ns.Name},
		[]string{"link", "set", "rrfarm", "master", l.DefaultSegment().Bridge, "up"},
	); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var batch strings.Builder
	fmt.Fprintf(&batch, "addr add %s/%d dev uplink\n", rrFarmFabricAddr, lab.FabricPrefixV4.Bits())
	for k := 1; k <= rrFarmSize(); k++ {
		fmt.Fprintf(&batch, "addr add %s/%d dev uplink\n", emuAddr(k), rrFarmPrefix.Bits())
	}
	batch.WriteString("link set uplink up\n")
	batchPath := filepath.Join(dir, "rrfarm.ip")
	if err := os.WriteFile(batchPath, []byte(batch.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "-n", ns.Name, "-batch", batchPath).CombinedOutput(); err != nil {
		t.Fatalf("reflectors' farm addresses: %v: %s", err, out)
	}
	for _, n := range nodes {
		if err := n.IP([]string{"route", "add", rrFarmPrefix.String(), "dev", lab.UplinkName}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := farmConfig{ASN: asn, PeerASN: asn, HoldTime: uint64(hold.Seconds()), Keepalive: uint64(keepalive.Seconds()),
		Speakers: initial, Control: filepath.Join(dir, "control.sock")}
	for _, r := range reflectors {
		cfg.Neighbors = append(cfg.Neighbors, r.String())
	}
	js, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "rrfarm.json")
	if err := os.WriteFile(cfgPath, js, 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := lab.StartHelper(ns.Name, speakersEnv, cfgPath, filepath.Join(dir, "rrfarm.log"))
	if err != nil {
		t.Fatalf("reflectors' farm: %v", err)
	}
	f := &rrFarm{farm: &farm{ns: ns, Helper: h}, control: cfg.Control}
	t.Cleanup(f.Stop)
	lab.Eventually(t, 5*converge, "reflectors' farm up", func() error {
		if !strings.Contains(f.Log(), farmReadyTag) {
			select {
			case <-f.Exited():
				return fmt.Errorf("reflectors' farm exited:\n%s", tail(f.Log(), 20))
			default:
			}
			return fmt.Errorf("reflectors' farm not up yet")
		}
		return nil
	})
	return f
}

func (f *rrFarm) add(k int) error {
	sp := emuSpeaker(k)
	return farmCommand(f.control, "add "+sp.Address+" "+sp.Prefix)
}

func (f *rrFarm) del(k int) error { return farmCommand(f.control, "del "+emuAddr(k).String()) }

// rrStateChange is one state change of a session between a speaker and a reflector.
type rrStateChange struct {
	at                time.Time
	speaker, neighbor netip.Addr
	state             string
}

// states reads back the farm's session state changes, in order.
func (f *rrFarm) states() []rrStateChange {
	var out []rrStateChange
	for _, line := range strings.Split(f.Log(), "\n") {
		rest, ok := strings.CutPrefix(line, farmRRStateTag+" ")
		if !ok {
			continue
		}
		fl := strings.Fields(rest)
		if len(fl) != 4 {
			continue
		}
		at, err1 := time.Parse(time.RFC3339Nano, fl[0])
		sp, err2 := netip.ParseAddr(fl[1])
		nb, err3 := netip.ParseAddr(fl[2])
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		out = append(out, rrStateChange{at: at, speaker: sp, neighbor: nb, state: fl[3]})
	}
	return out
}
