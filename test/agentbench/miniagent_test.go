package agentbench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/routes"
	"github.com/podroute/podroute/test/lab"
)

// The route engine is this test binary started again inside a node's namespace with
// engineEnv naming its configuration: the agent's two building blocks, podroute's BGP
// speaker (bgp.New) and kernel route reconciler (routes.NewReconciler), wired the way
// podroute-agent wires them (learned best paths -> kernel routes plus a blackhole per own pod
// CIDR, a full Reconcile on every BGP or kernel change signal), with one external peer. It
// stands in for the agent where the agent has no way to configure a non-mesh peer.
const engineEnv = "PODROUTE_AGENTBENCH_ENGINE"

type engineConfig struct {
	ASN          uint32
	Self         netip.Addr
	PodCIDRs     []netip.Prefix
	ClusterCIDRs []netip.Prefix
	Deny         []netip.Prefix
	Peer         netip.Addr
	PeerASN      uint32
}

func init() {
	path := os.Getenv(engineEnv)
	if path == "" {
		return
	}
	if err := runEngine(path); err != nil {
		fmt.Fprintf(os.Stderr, "engine: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runEngine(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg engineConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	quiet := slog.New(slog.NewJSONHandler(io.Discard, nil))
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()

	f := bgp.ImportFilter{ClusterCIDRs: cfg.ClusterCIDRs, Deny: append(slices.Clone(cfg.Deny), cfg.PodCIDRs...)}
	for _, p := range cfg.PodCIDRs {
		if p.Addr().Is4() {
			f.MaxLenIPv4 = p.Bits()
		} else {
			f.MaxLenIPv6 = p.Bits()
		}
	}
	r, err := bgp.New(bgp.Config{
		ASN: cfg.ASN, RouterID: cfg.Self, ListenAddresses: []netip.Addr{cfg.Self},
		NextHopIPv4: cfg.Self, ImportFilter: f, Logger: quiet,
	})
	if err != nil {
		return err
	}
	if err := r.Start(ctx); err != nil {
		return err
	}
	defer r.Stop(false)
	if err := r.AddNeighbor(ctx, bgp.Neighbor{
		Address: cfg.Peer, ASN: cfg.PeerASN, LocalAddress: cfg.Self,
		HoldTime: 3 * time.Second, KeepaliveTime: time.Second, Kind: bgp.KindExternal,
	}); err != nil {
		return err
	}
	for _, p := range cfg.PodCIDRs {
		if err := r.Advertise(ctx, p); err != nil {
			return err
		}
	}
	kernel, err := routes.NewReconciler(routes.Options{Logger: quiet})
	if err != nil {
		return err
	}
	defer kernel.Close()
	bgpEvents := r.Subscribe(ctx)
	kernelEvents, _ := kernel.Watch(ctx)
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	log.Info("engine started", "peer", cfg.Peer)
	for {
		t0 := time.Now()
		learned, err := r.Routes(ctx)
		tRoutes := time.Since(t0)
		if err == nil {
			desired := engineKernelRoutes(cfg, learned)
			t1 := time.Now()
			res, err := kernel.Reconcile(desired)
			tKernel := time.Since(t1)
			if err != nil {
				log.Warn("reconcile", "err", err)
			} else if res.Changed() > 0 || len(res.Errors) > 0 {
				log.Info("kernel routes reconciled", "added", res.Added, "replaced", res.Replaced, "removed", res.Removed,
					"failed", len(res.Errors), "learned", len(learned), "routesMs", float64(tRoutes)/1e6, "reconcileMs", float64(tKernel)/1e6)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-bgpEvents:
			if !ok {
				return nil
			}
		case _, ok := <-kernelEvents:
			if !ok {
				kernelEvents, _ = kernel.Watch(ctx)
			}
		case <-tick.C:
		}
	}
}

// engineKernelRoutes is podroute-agent's translation of learned best paths into kernel
// routes: a blackhole per own pod CIDR, every learned prefix via its next hops of the same
// family.
func engineKernelRoutes(cfg engineConfig, learned []bgp.Route) []routes.Route {
	out := make([]routes.Route, 0, len(learned)+len(cfg.PodCIDRs))
	for _, p := range cfg.PodCIDRs {
		out = append(out, routes.Route{Prefix: p, Blackhole: true})
	}
	for _, r := range learned {
		if slices.Contains(cfg.PodCIDRs, r.Prefix) {
			continue
		}
		var hops []routes.NextHop
		for _, nh := range r.NextHops {
			if !nh.IsValid() || nh == cfg.Self || nh.Is4() != r.Prefix.Addr().Is4() {
				continue
			}
			hops = append(hops, routes.NextHop{Gateway: nh})
		}
		if len(hops) > 0 {
			out = append(out, routes.Route{Prefix: r.Prefix, NextHops: hops})
		}
	}
	return out
}

// engine is a running route engine process.
type engine struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// startEngine runs the route engine inside node n's namespace, peering with peer (AS
// peerASN) as an external neighbor.
func startEngine(b *testing.B, n *lab.Node, peer netip.Addr, peerASN uint32, cluster []netip.Prefix) *engine {
	b.Helper()
	dir := b.TempDir()
	cfg := engineConfig{
		ASN: 64512, Self: n.IPv4, PodCIDRs: n.PodCIDRs, ClusterCIDRs: cluster, Peer: peer, PeerASN: peerASN,
		Deny: []netip.Prefix{netip.PrefixFrom(n.IPv4, 32), netip.PrefixFrom(n.IPv6, 128), netip.PrefixFrom(peer, peer.BitLen())},
	}
	raw, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "engine.json")
	if err := os.WriteFile(cfgPath, raw, 0o644); err != nil {
		b.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	e := &engine{log: filepath.Join(dir, "engine.log"), done: make(chan struct{})}
	logf, err := os.Create(e.log)
	if err != nil {
		b.Fatal(err)
	}
	e.cmd = exec.Command("ip", "netns", "exec", n.NetNS.Name, exe, "-test.run=^$", "-test.bench=^$")
	e.cmd.Env = append(os.Environ(), engineEnv+"="+cfgPath)
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the parent-death signal follows the forking thread
		defer runtime.UnlockOSThread()
		if err := e.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = e.cmd.Wait()
		logf.Close()
		close(e.done)
	}()
	if err := <-started; err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.done:
		case <-time.After(10 * time.Second):
			_ = e.cmd.Process.Kill()
			<-e.done
		}
	})
	lab.Eventually(b, converge, "route engine started", func() error {
		if s, _ := os.ReadFile(e.log); !strings.Contains(string(s), "engine started") {
			select {
			case <-e.done:
				b.Fatalf("route engine exited: %s", s)
			default:
			}
			return fmt.Errorf("engine log: %s", s)
		}
		return nil
	})
	return e
}

func (e *engine) Log() string {
	s, _ := os.ReadFile(e.log)
	return string(s)
}
