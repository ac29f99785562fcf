// Command podroute-agent is podroute's node agent: it watches the cluster's Nodes, runs the
// node's BGP speaker, installs learned routes in the kernel and writes the node's CNI config.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podroute/podroute/agent"
	"github.com/podroute/podroute/agentapi"
	"github.com/podroute/podroute/cniconf"
	"github.com/podroute/podroute/uninstall"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "podroute-agent: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	host, _ := os.Hostname()
	exe, _ := os.Executable()
	fs := flag.NewFlagSet("podroute-agent", flag.ContinueOnError)
	var (
		kubeconfig   = fs.String("kubeconfig", "", "kubeconfig file (default: in-cluster config)")
		nodeName     = fs.String("node-name", envOr("NODE_NAME", host), "this node's Node name (env NODE_NAME)")
		nodeIPs      = fs.String("node-ip", "", "this node's addresses, one per family, comma-separated (default: the Node's InternalIPs)")
		routerID     = fs.String("router-id", "", "BGP identifier (default: the node's IPv4 address)")
		asn          = fs.Uint("asn", agent.DefaultASN, "the cluster's AS number when no BGPConfiguration sets it (a node's podroute.io/asn annotation overrides both)")
		clusterCIDRs = fs.String("cluster-cidrs", "", "the cluster's pod CIDRs, comma-separated (required; BGPConfiguration spec.clusterCIDRs overrides)")
		serviceCIDRs = fs.String("service-cidrs", "", "the cluster's service CIDRs, never accepted from BGP (BGPConfiguration spec.serviceCIDRs overrides)")
		bgpPort      = fs.Int("bgp-port", 179, "BGP port to listen on and to reach peers at")
		bgpListen    = fs.String("bgp-listen-address", "", "addresses the BGP speaker listens on, comma-separated (default: the node's addresses)")
		holdTime     = fs.Duration("hold-time", 9*time.Second, "BGP hold time proposed to peers (failure detection)")
		keepalive    = fs.Duration("keepalive", 3*time.Second, "BGP keepalive interval")
		gr           = fs.Bool("graceful-restart", true, "negotiate graceful restart so agent restarts keep traffic flowing")
		restartTime  = fs.Duration("restart-time", 120*time.Second, "how long peers keep our routes while we restart")
		masq         = fs.Bool("masquerade", true, "masquerade pod traffic leaving the cluster's pod CIDRs to the node address")
		mtu          = fs.Int("mtu", 0, "pod interface MTU (default: the MTU of the node address's interface)")
		installCNI   = fs.Bool("install-cni", true, "write the CNI config and install the plugin")
		cniConfDir   = fs.String("cni-conf-dir", cniconf.DefaultConfDir, "CNI config directory")
		cniBinDir    = fs.String("cni-bin-dir", cniconf.DefaultBinDir, "CNI plugin directory")
		cniSource    = fs.String("cni-plugin", filepath.Join(filepath.Dir(exe), "podroute"), "the podroute plugin binary to install into --cni-bin-dir (empty: do not install)")
		cniPortmap   = fs.Bool("cni-portmap", true, "chain the reference portmap plugin after podroute in the CNI config, so pods' hostPorts work (false: podroute alone)")
		portmapSrc   = fs.String("cni-portmap-plugin", filepath.Join(filepath.Dir(exe), "portmap"), "the portmap plugin binary to install into --cni-bin-dir with the podroute plugin (empty: do not install, the node's own portmap is used)")
		kubeProxy    = fs.String("kube-proxy-metrics-address", agent.DefaultKubeProxyMetricsAddress, "where kube-proxy serves its metrics and /proxyMode: the agent reports in podroutectl status and its log a kube-proxy that is missing or in a mode other than iptables or nftables (empty: no check)")
		dataDir      = fs.String("data-dir", cniconf.DefaultDataDir, "IPAM data directory written into the CNI config")
		socket       = fs.String("socket", agentapi.DefaultSocket, "unix socket of the local API (podroutectl)")
		healthAddr   = fs.String("health-address", "", "also serve /healthz, /readyz and /metrics on this TCP address, e.g. 127.0.0.1:9649 (default: off)")
		resync       = fs.Duration("resync-interval", 30*time.Second, "period of the safety-net reconcile")
		staleTimeout = fs.Duration("stale-timeout", 0, "after a restart, keep the previous run's routes at most this long while BGP resynchronises (default: --restart-time)")
		logLevel     = fs.String("log-level", "info", "debug, info, warn or error")
		uninst       = fs.Bool("uninstall", false, "remove everything podroute put on this node (CNI config and plugin, portmap when identical to --cni-portmap-plugin, pod veths, protocol 201 routes, nftables table inet podroute, IPAM data, socket) and exit; for a drained node or a cluster leaving podroute")
		dryRun       = fs.Bool("dry-run", false, "with --uninstall: list what would be removed, change nothing")
		force        = fs.Bool("force", false, "with --uninstall: run even though an agent answers on --socket")
		wait         = fs.Bool("wait", false, "with --uninstall: after success, block until SIGTERM (for a clean-up DaemonSet)")
	)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	if *uninst {
		return runUninstall(uninstall.Options{
			CNI:    cniconf.Options{ConfDir: *cniConfDir, BinDir: *cniBinDir, DataDir: *dataDir, PortmapSource: *portmapSrc},
			Socket: *socket, DryRun: *dryRun, Force: *force, Logger: log,
		}, *wait)
	}

	cfg := agent.Config{
		NodeName:        *nodeName,
		ASN:             uint32(*asn),
		BGPPort:         int32(*bgpPort),
		HoldTime:        *holdTime,
		KeepaliveTime:   *keepalive,
		GracefulRestart: *gr,
		RestartTime:     *restartTime,
		Masquerade:      *masq,
		MTU:             *mtu,
		InstallCNI:      *installCNI,
		ResyncInterval:  *resync,
		StaleTimeout:    *staleTimeout,
		CNI: cniconf.Options{
			ConfDir: *cniConfDir, BinDir: *cniBinDir, PluginSource: *cniSource, DataDir: *dataDir,
			PortmapSource: *portmapSrc, NoPortmap: !*cniPortmap,
		},
		KubeProxyMetricsAddress: *kubeProxy,
	}
	if cfg.StaleTimeout == 0 {
		cfg.StaleTimeout = cfg.RestartTime
	}
	var err error
	if *asn > 1<<32-1 {
		return fmt.Errorf("--asn: %d does not fit in 32 bits", *asn)
	}
	if cfg.NodeIPs, err = parseAddrs(*nodeIPs); err != nil {
		return fmt.Errorf("--node-ip: %w", err)
	}
	if *routerID != "" {
		if cfg.RouterID, err = netip.ParseAddr(*routerID); err != nil {
			return fmt.Errorf("--router-id: %w", err)
		}
	}
	if cfg.ListenAddresses, err = parseAddrs(*bgpListen); err != nil {
		return fmt.Errorf("--bgp-listen-address: %w", err)
	}
	if cfg.ClusterCIDRs, err = parsePrefixes(*clusterCIDRs); err != nil {
		return fmt.Errorf("--cluster-cidrs: %w", err)
	}
	if cfg.ServiceCIDRs, err = parsePrefixes(*serviceCIDRs); err != nil {
		return fmt.Errorf("--service-cidrs: %w", err)
	}
	if *bgpPort < 1 || *bgpPort > 65535 {
		return fmt.Errorf("--bgp-port: %d is not a TCP port", *bgpPort)
	}

	rc, err := restConfig(*kubeconfig)
	if err != nil {
		return err
	}
	rc.UserAgent = "podroute-agent/" + agent.Version
	// client-go's default (5 QPS, burst 10) throttled the first status writes and events for
	// seconds at start; the agent's steady state is a few watches and rare writes.
	rc.QPS, rc.Burst = 20, 40
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	a, err := agent.New(cfg, client, dyn, log)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	srv := agentapi.NewServer(a, log.With("component", "api"))
	a.Mount(srv.Handle)
	apiErr := make(chan error, 1)
	go func() { apiErr <- srv.Serve(ctx, *socket) }()
	if *healthAddr != "" {
		go serveHealth(ctx, *healthAddr, a, log)
	}
	log.Info("podroute-agent starting", "version", agent.Version, "node", cfg.NodeName, "socket", *socket)
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	select {
	case err := <-apiErr:
		if err != nil {
			stop()
			<-runErr
			return fmt.Errorf("local API: %w", err)
		}
		return <-runErr
	case err := <-runErr:
		return err
	}
}

// runUninstall removes podroute from this node and prints one line per item on stdout.
func runUninstall(opts uninstall.Options, wait bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := uninstall.Run(ctx, opts)
	verb := "removed"
	if rep.DryRun {
		verb = "would remove"
	}
	for _, it := range rep.Items {
		if it.Err != nil {
			fmt.Printf("failed\t%s\t%s\t%v\n", it.Kind, it.Name, it.Err)
		} else {
			fmt.Printf("%s\t%s\t%s\n", verb, it.Kind, it.Name)
		}
	}
	if len(rep.Items) == 0 && err == nil {
		fmt.Println("nothing of podroute's on this node")
	}
	if err == nil && wait {
		<-ctx.Done()
	}
	return err
}

// serveHealth serves the probes and metrics on TCP for kubelet and Prometheus, only when asked.
func serveHealth(ctx context.Context, addr string, a *agent.Agent, log *slog.Logger) {
	mux := http.NewServeMux()
	a.Mount(func(p string, h http.Handler) { mux.Handle(p, h) })
	s := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = s.Close()
	}()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Error("health listener", "addr", addr, "err", err)
		return
	}
	if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("health listener", "addr", addr, "err", err)
	}
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("no --kubeconfig and not running in a cluster: %w", err)
	}
	return c, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func parseAddrs(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, f := range splitList(s) {
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, err
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range splitList(s) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, err
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("%s has host bits set (did you mean %s?)", p, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
