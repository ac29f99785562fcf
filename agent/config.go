// Package agent is the node agent's reconcile loop: Kubernetes Nodes in, desired state out
// (BGP neighbours, advertisements, import filter, kernel routes, CNI config, egress rules),
// applied idempotently to the BGP speaker and the kernel, at start, on every change and
// periodically, so a crash at any point is repaired by the next run.
package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/podroute/podroute/cniconf"
	"github.com/podroute/podroute/config"
)

// DefaultASN is the private AS number the cluster uses unless told otherwise.
const DefaultASN = 64512

// Config is the agent's settings, from flags.
type Config struct {
	NodeName string
	// NodeIPs override the Node's InternalIPs as this node's addresses (one per family).
	NodeIPs []netip.Addr
	// RouterID overrides the BGP identifier (default: the node's IPv4 address).
	RouterID netip.Addr
	ASN      uint32
	// ClusterCIDRs are every pod address in the cluster: learned routes must fall inside.
	ClusterCIDRs []netip.Prefix
	// ServiceCIDRs are never accepted from BGP.
	ServiceCIDRs []netip.Prefix

	BGPPort int32 // 0 = 179
	// ListenAddresses are where the BGP speaker listens (default: the node's addresses).
	ListenAddresses []netip.Addr
	HoldTime        time.Duration
	KeepaliveTime   time.Duration
	GracefulRestart bool
	RestartTime     time.Duration

	// Masquerade SNATs pod traffic leaving the cluster's pod CIDRs to the node address.
	Masquerade bool
	// MTU of pod interfaces; 0 = the MTU of the interface holding the node address.
	MTU int
	CNI cniconf.Options
	// InstallCNI writes the conflist and installs the plugin binaries (podroute, and portmap
	// when the conflist chains it and CNI.PortmapSource is set).
	InstallCNI bool

	// KubeProxyMetricsAddress is where kube-proxy serves /proxyMode (host:port, normally
	// DefaultKubeProxyMetricsAddress): the agent checks, now and then, that kube-proxy runs
	// there in a supported mode and reports it when not. Empty: no check.
	KubeProxyMetricsAddress string

	// NetworkPolicy enforces NetworkPolicy for this node's pods (nftables table inet
	// podroute-policy).
	NetworkPolicy bool
	// PolicyLogDrops logs what NetworkPolicy drops to the kernel log, at most 10 packets a
	// second per chain.
	PolicyLogDrops bool

	// ServiceAdvertisement advertises the Service addresses the BGPConfiguration allows
	// (serviceClusterIPs, serviceExternalIPs, serviceLoadBalancerIPs) to external peers,
	// from this node when it can serve them; it watches every Service and EndpointSlice.
	ServiceAdvertisement bool

	// LeaseNamespace holds the Lease that elects the one agent writing the status of the
	// cluster-wide podroute objects (BGPPeers, the BGPConfiguration). Empty: every agent
	// writes (without the CRDs' client there is nothing to write).
	LeaseNamespace string

	// ResyncInterval is the period of the safety-net reconcile.
	ResyncInterval time.Duration
	// StaleTimeout bounds how long routes left by a previous run are kept while the BGP
	// speaker resynchronises after a restart.
	StaleTimeout time.Duration
}

// defaults is the BGP configuration the flags describe: what applies when the cluster has no
// BGPConfiguration (or the CRDs are not installed).
func (c *Config) defaults() config.Configuration {
	d := config.DefaultConfiguration()
	d.ASN = c.ASN
	d.ClusterCIDRs = c.ClusterCIDRs
	d.ServiceCIDRs = c.ServiceCIDRs
	return d
}

// Validate checks the configuration; errors name the flag.
func (c *Config) Validate() error {
	var errs []error
	bad := func(flag, format string, a ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, a...)))
	}
	if c.NodeName == "" {
		bad("node-name", "required (defaults to the host name)")
	}
	if len(c.ClusterCIDRs) == 0 {
		bad("cluster-cidrs", "required: the cluster's pod CIDRs (kubeadm --pod-network-cidr)")
	}
	for _, p := range c.ClusterCIDRs {
		if p.Bits() == 0 {
			bad("cluster-cidrs", "%s would accept every route", p)
		}
	}
	if c.ASN == 0 || c.ASN == 23456 {
		bad("asn", "%d is not a usable AS number", c.ASN)
	}
	if c.RouterID.IsValid() && !c.RouterID.Is4() {
		bad("router-id", "%s: the BGP identifier is an IPv4 address", c.RouterID)
	}
	if c.HoldTime != 0 && c.HoldTime < 3*time.Second {
		bad("hold-time", "%s: at least 3s", c.HoldTime)
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		bad("mtu", "%d is outside 68..65535", c.MTU)
	}
	if c.ResyncInterval <= 0 {
		bad("resync-interval", "must be positive")
	}
	if a := c.KubeProxyMetricsAddress; a != "" {
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" {
			bad("kube-proxy-metrics-address", "%q is not host:port, e.g. %s", a, DefaultKubeProxyMetricsAddress)
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			bad("kube-proxy-metrics-address", "%q: port %q is not a TCP port", a, port)
		}
	}
	if ns := c.LeaseNamespace; ns != "" {
		// Caught here, not by the election retrying a request the API server refuses
		// every two seconds.
		if problems := validation.IsDNS1123Label(ns); len(problems) > 0 {
			bad("lease-namespace", "%q is not a namespace name: %s", ns, strings.Join(problems, "; "))
		}
	}
	seen := map[bool]bool{}
	for _, ip := range c.NodeIPs {
		if seen[ip.Is6()] {
			bad("node-ip", "one address per family")
		}
		seen[ip.Is6()] = true
	}
	return errors.Join(errs...)
}
