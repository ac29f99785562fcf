package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/podroute/podroute/agent"
	"github.com/podroute/podroute/agentapi"
	"github.com/podroute/podroute/cmd/internal/cmdflags"
	"github.com/podroute/podroute/cniconf"
)

// options is the agent's command line.
type options struct {
	kubeconfig string
	cfg        agent.Config
	socket     string
	healthAddr string
	profiling  bool
	logLevel   slog.Level

	cniPortmap                     bool
	uninstall, dryRun, force, wait bool

	// deprecated lists the flags given the Go way, with one dash (-node-name), which still
	// work.
	deprecated []string
}

// environment is what the defaults of the flags come from.
type environment struct {
	hostname  string
	nodeName  string // $NODE_NAME
	namespace string // $POD_NAMESPACE: the agent's own namespace, in a cluster
	exeDir    string // the directory of the agent's executable
}

const usageHead = `podroute-agent is podroute's node agent: it watches the cluster's Nodes, runs the node's
BGP speaker, installs learned routes in the kernel and writes the node's CNI config.

Usage:
  podroute-agent --cluster-cidrs CIDRS [flags]
  podroute-agent --uninstall [--dry-run] [--force] [--wait] [flags]

Flags:
`

// newFlagSet defines the agent's flags on o, with their defaults from env. Flags are given
// as --name value or --name=value, the Kubernetes components' way.
func newFlagSet(o *options, env environment) *pflag.FlagSet {
	fs := pflag.NewFlagSet("podroute-agent", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard) // errors are returned, and help printed, by the caller
	fs.Usage = func() {}
	c := &o.cfg
	nodeName := env.nodeName
	if nodeName == "" {
		nodeName = env.hostname
	}
	o.logLevel = slog.LevelInfo

	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config)")
	fs.StringVar(&c.NodeName, "node-name", nodeName, "this node's Node name (env NODE_NAME)")
	fs.Var(addrList{&c.NodeIPs}, "node-ip", "this node's addresses, one per family, comma-separated (default: the Node's InternalIPs)")
	fs.Var(addrValue{&c.RouterID}, "router-id", "BGP identifier (default: the node's IPv4 address)")
	fs.Var(asnValue{&c.ASN}, "asn", "the cluster's AS number when no BGPConfiguration sets it (a node's podroute.io/asn annotation overrides both)")
	c.ASN = agent.DefaultASN
	fs.Lookup("asn").DefValue = fmt.Sprint(agent.DefaultASN)
	fs.Var(prefixList{&c.ClusterCIDRs}, "cluster-cidrs", "the cluster's pod CIDRs, comma-separated (required; BGPConfiguration spec.clusterCIDRs overrides)")
	fs.Var(prefixList{&c.ServiceCIDRs}, "service-cidrs", "the cluster's service CIDRs, never accepted from BGP (BGPConfiguration spec.serviceCIDRs overrides)")
	c.BGPPort = 179
	fs.Var(portValue{&c.BGPPort}, "bgp-port", "BGP port to listen on and to reach peers at")
	fs.Lookup("bgp-port").DefValue = "179"
	fs.Var(addrList{&c.ListenAddresses}, "bgp-listen-address", "addresses the BGP speaker listens on, comma-separated (default: the node's addresses)")
	fs.DurationVar(&c.HoldTime, "hold-time", 9*time.Second, "BGP hold time proposed to peers (failure detection)")
	fs.DurationVar(&c.KeepaliveTime, "keepalive", 3*time.Second, "BGP keepalive interval")
	fs.BoolVar(&c.GracefulRestart, "graceful-restart", true, "negotiate graceful restart so agent restarts keep traffic flowing")
	fs.DurationVar(&c.RestartTime, "restart-time", 120*time.Second, "how long peers keep our routes while we restart")
	fs.BoolVar(&c.Masquerade, "masquerade", true, "masquerade pod traffic leaving the cluster's pod CIDRs to the node address")
	fs.IntVar(&c.MTU, "mtu", 0, "pod interface MTU (default: the MTU of the node address's interface)")
	fs.BoolVar(&c.InstallCNI, "install-cni", true, "write the CNI config and install the plugin")
	fs.StringVar(&c.CNI.ConfDir, "cni-conf-dir", cniconf.DefaultConfDir, "CNI config directory")
	fs.StringVar(&c.CNI.BinDir, "cni-bin-dir", cniconf.DefaultBinDir, "CNI plugin directory")
	fs.StringVar(&c.CNI.PluginSource, "cni-plugin", filepath.Join(env.exeDir, "podroute"), "the podroute plugin binary to install into --cni-bin-dir (empty: do not install)")
	fs.BoolVar(&o.cniPortmap, "cni-portmap", true, "chain the reference portmap plugin after podroute in the CNI config, so pods' hostPorts work (false: podroute alone)")
	fs.StringVar(&c.CNI.PortmapSource, "cni-portmap-plugin", filepath.Join(env.exeDir, "portmap"), "the portmap plugin binary to install into --cni-bin-dir with the podroute plugin (empty: do not install, the node's own portmap is used)")
	fs.StringVar(&c.KubeProxyMetricsAddress, "kube-proxy-metrics-address", agent.DefaultKubeProxyMetricsAddress, "where kube-proxy serves its metrics and /proxyMode: the agent reports in podroutectl status and its log a kube-proxy that is missing or in a mode other than iptables or nftables (empty: no check)")
	fs.StringVar(&c.CNI.DataDir, "data-dir", cniconf.DefaultDataDir, "IPAM data directory written into the CNI config")
	fs.StringVar(&o.socket, "socket", agentapi.DefaultSocket, "unix socket of the local API (podroutectl)")
	fs.StringVar(&o.healthAddr, "health-address", "", "also serve /healthz, /readyz and /metrics on this TCP address, e.g. 127.0.0.1:9649 (default: off)")
	fs.BoolVar(&o.profiling, "profiling", false, "serve Go's profiles (net/http/pprof) under /debug/pprof/ on --socket, the root-only local API; never on the health address")
	fs.BoolVar(&c.NetworkPolicy, "network-policy", true, "enforce NetworkPolicy for this node's pods (nftables table inet podroute-policy)")
	fs.BoolVar(&c.ServiceAdvertisement, "service-advertisement", true, "advertise the Service addresses the BGPConfiguration allows (serviceClusterIPs, serviceExternalIPs, serviceLoadBalancerIPs) to external BGP peers, from this node while it can serve them (watches every Service and EndpointSlice)")
	fs.BoolVar(&c.PolicyLogDrops, "policy-log-drops", false, "log what NetworkPolicy drops to the kernel log (prefix \"podroute-policy drop\"), at most 10 packets a second per chain; the drops are counted in metrics either way")
	fs.StringVar(&c.LeaseNamespace, "lease-namespace", env.namespace, "namespace of the Lease (podroute-agent) electing the one agent that writes the status of BGPPeers and the BGPConfiguration (env POD_NAMESPACE; empty: every agent writes)")
	fs.DurationVar(&c.ResyncInterval, "resync-interval", 30*time.Second, "period of the safety-net reconcile")
	fs.DurationVar(&c.StaleTimeout, "stale-timeout", 0, "after a restart, keep the previous run's routes at most this long while BGP resynchronises (default: --restart-time)")
	fs.Var(cmdflags.Level{P: &o.logLevel}, "log-level", "debug, info, warn or error")
	fs.Lookup("log-level").DefValue = "info"
	fs.BoolVar(&o.uninstall, "uninstall", false, "remove everything podroute put on this node (CNI config and plugin, portmap when identical to --cni-portmap-plugin, pod veths, protocol 201 routes, nftables tables inet podroute and inet podroute-policy, IPAM data, socket) and exit; for a drained node or a cluster leaving podroute")
	fs.BoolVar(&o.dryRun, "dry-run", false, "with --uninstall: list what would be removed, change nothing")
	fs.BoolVar(&o.force, "force", false, "with --uninstall: run even though an agent answers on --socket")
	fs.BoolVar(&o.wait, "wait", false, "with --uninstall: after success, block until SIGTERM (for a clean-up DaemonSet)")
	fs.BoolP("help", "h", false, "show this help and exit")
	return fs
}

// parseFlags reads the command line (without the program name). It returns pflag.ErrHelp
// for --help; every other error names the flag.
func parseFlags(args []string, env environment) (*options, error) {
	o := &options{}
	fs := newFlagSet(o, env)
	args, o.deprecated = longDashes(fs, args)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if help, _ := fs.GetBool("help"); help {
		return nil, pflag.ErrHelp
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: podroute-agent takes flags only (a boolean flag takes its value after =, as in --masquerade=false)", fs.Arg(0))
	}
	o.cfg.CNI.NoPortmap = !o.cniPortmap
	if o.cfg.StaleTimeout == 0 {
		o.cfg.StaleTimeout = o.cfg.RestartTime
	}
	if o.uninstall {
		return o, nil
	}
	if err := o.cfg.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}

// usage is the help text.
func usage(env environment) string {
	fs := newFlagSet(&options{}, env)
	return usageHead + fs.FlagUsagesWrapped(100)
}

// longDashes turns -name into --name for the agent's long flags: the agent read its flags
// with Go's flag package before, which takes either. It returns the flags it rewrote.
func longDashes(fs *pflag.FlagSet, args []string) ([]string, []string) {
	out := slices.Clone(args)
	var fixed []string
	for i := 0; i < len(out); i++ {
		a := out[i]
		if a == "--" || !strings.HasPrefix(a, "-") || a == "-" {
			if a == "--" {
				break
			}
			continue
		}
		name, hasValue := strings.TrimLeft(a, "-"), false
		if j := strings.IndexByte(name, '='); j >= 0 {
			name, hasValue = name[:j], true
		}
		f := fs.Lookup(name)
		if f == nil || len(name) < 2 {
			continue
		}
		if !strings.HasPrefix(a, "--") {
			out[i] = "-" + a
			fixed = append(fixed, name)
		}
		if !hasValue && f.NoOptDefVal == "" {
			i++ // the next argument is the value, whatever it looks like
		}
	}
	return out, fixed
}

// Flag values. Each parses when the flag is read, so a bad value is an error that names the
// flag ("invalid argument ... for "--node-ip" flag: ...").

type addrValue struct{ p *netip.Addr }

func (v addrValue) String() string {
	if v.p == nil || !v.p.IsValid() {
		return ""
	}
	return v.p.String()
}

func (v addrValue) Set(s string) error {
	if s = strings.TrimSpace(s); s == "" {
		*v.p = netip.Addr{}
		return nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("%q is not an IP address", s)
	}
	*v.p = a.Unmap()
	return nil
}

func (addrValue) Type() string { return "address" }

type addrList struct{ p *[]netip.Addr }

func (v addrList) String() string {
	if v.p == nil {
		return ""
	}
	return joinStrings(*v.p)
}

func (v addrList) Set(s string) error {
	var out []netip.Addr
	for _, f := range splitList(s) {
		a, err := netip.ParseAddr(f)
		if err != nil {
			return fmt.Errorf("%q is not an IP address", f)
		}
		out = append(out, a.Unmap())
	}
	*v.p = out
	return nil
}

func (addrList) Type() string { return "addresses" }

type prefixList struct{ p *[]netip.Prefix }

func (v prefixList) String() string {
	if v.p == nil {
		return ""
	}
	return joinStrings(*v.p)
}

func (v prefixList) Set(s string) error {
	var out []netip.Prefix
	for _, f := range splitList(s) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return fmt.Errorf("%q is not a CIDR", f)
		}
		if p != p.Masked() {
			return fmt.Errorf("%s has host bits set (did you mean %s?)", p, p.Masked())
		}
		out = append(out, p)
	}
	*v.p = out
	return nil
}

func (prefixList) Type() string { return "cidrs" }

type asnValue struct{ p *uint32 }

func (v asnValue) String() string {
	if v.p == nil {
		return ""
	}
	return fmt.Sprint(*v.p)
}

func (v asnValue) Set(s string) error {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 0, 64)
	if err != nil {
		return fmt.Errorf("%q is not an AS number", s)
	}
	if n > 1<<32-1 {
		return fmt.Errorf("%d does not fit in 32 bits", n)
	}
	*v.p = uint32(n)
	return nil
}

func (asnValue) Type() string { return "uint32" }

type portValue struct{ p *int32 }

func (v portValue) String() string {
	if v.p == nil {
		return ""
	}
	return fmt.Sprint(*v.p)
}

func (v portValue) Set(s string) error {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 0, 64)
	if err != nil {
		return fmt.Errorf("%q is not a port number", s)
	}
	if n < 1 || n > 65535 {
		return fmt.Errorf("%d is not a TCP port", n)
	}
	*v.p = int32(n)
	return nil
}

func (portValue) Type() string { return "port" }

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func joinStrings[T fmt.Stringer](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}
