package main

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/podroute/podroute/agent"
)

var testEnv = environment{hostname: "host-1", exeDir: "/opt/podroute/bin"}

// every flag the agent has had: each must keep working.
var flagNames = []string{
	"kubeconfig", "node-name", "node-ip", "router-id", "asn", "cluster-cidrs", "service-cidrs",
	"bgp-port", "bgp-listen-address", "hold-time", "keepalive", "graceful-restart",
	"restart-time", "masquerade", "mtu", "install-cni", "cni-conf-dir", "cni-bin-dir",
	"cni-plugin", "cni-portmap", "cni-portmap-plugin", "kube-proxy-metrics-address", "data-dir",
	"socket", "health-address", "resync-interval", "stale-timeout", "log-level", "uninstall",
	"dry-run", "force", "wait", "network-policy", "policy-log-drops", "lease-namespace",
	"service-advertisement", "profiling",
}

func mustParse(t *testing.T, args ...string) *options {
	t.Helper()
	o, err := parseFlags(args, testEnv)
	if err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	return o
}

// TestHelp: every flag is listed the Kubernetes way, --name, and none with one dash.
func TestHelp(t *testing.T) {
	if _, err := parseFlags([]string{"--help"}, testEnv); !errors.Is(err, pflag.ErrHelp) {
		t.Fatalf("--help: %v, want help", err)
	}
	if _, err := parseFlags([]string{"-h"}, testEnv); !errors.Is(err, pflag.ErrHelp) {
		t.Fatalf("-h: %v, want help", err)
	}
	help := usage(testEnv)
	for _, name := range flagNames {
		if !regexp.MustCompile(`(?m)^\s+--` + name + `\b`).MatchString(help) {
			t.Errorf("help lacks --%s:\n%s", name, help)
		}
	}
	if m := regexp.MustCompile(`(?m)^\s+-[a-z][a-z-]+`).FindString(help); m != "" {
		t.Errorf("a long flag with one dash in the help: %q", m)
	}
}

// TestDeployedArgs: the DaemonSets' arguments parse, the agent's and the clean-up's.
func TestDeployedArgs(t *testing.T) {
	args := func(file string) [][]string {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", file))
		if err != nil {
			t.Fatal(err)
		}
		var ds appsv1.DaemonSet
		if err := yaml.Unmarshal(raw, &ds); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var out [][]string
		for _, c := range append(ds.Spec.Template.Spec.InitContainers, ds.Spec.Template.Spec.Containers...) {
			out = append(out, c.Args)
		}
		return out
	}
	// The kubelet expands $(VAR) from the container's environment; SERVICE_CIDRS may be empty.
	for _, services := range []string{"10.96.0.0/12", ""} {
		expand := strings.NewReplacer("$(CLUSTER_CIDRS)", "10.244.0.0/16,fd00:10:244::/56", "$(SERVICE_CIDRS)", services)
		daemon := args("30-daemonset.yaml")
		if len(daemon) != 1 {
			t.Fatalf("agent DaemonSet: %d containers", len(daemon))
		}
		var a []string
		for _, s := range daemon[0] {
			a = append(a, expand.Replace(s))
		}
		o := mustParse(t, a...)
		c := o.cfg
		if len(c.ClusterCIDRs) != 2 || c.CNI.PluginSource != "/opt/podroute/bin/podroute" ||
			c.CNI.PortmapSource != "/opt/podroute/bin/portmap" || o.healthAddr != "127.0.0.1:9649" || o.uninstall {
			t.Errorf("agent DaemonSet: %+v", o)
		}
		if (services == "") != (len(c.ServiceCIDRs) == 0) {
			t.Errorf("--service-cidrs=%s: %v", services, c.ServiceCIDRs)
		}
	}
	for i, a := range args(filepath.Join("uninstall", "uninstall.yaml")) {
		o := mustParse(t, a...)
		if !o.uninstall || o.cfg.CNI.ConfDir != "/host/etc/cni/net.d" || o.cfg.CNI.BinDir != "/host/opt/cni/bin" ||
			o.cfg.CNI.DataDir != "/host/var/lib/cni/podroute" || o.socket != "/host/run/podroute/agent.sock" ||
			o.cfg.CNI.PortmapSource != "/opt/podroute/bin/portmap" || o.dryRun != (i == 1) || o.wait != (i == 1) {
			t.Errorf("clean-up container %d %q: %+v", i, a, o)
		}
	}
}

// TestLabArgs: the command line test/lab gives its agents (--name value), with the extra
// flags the benchmarks add.
func TestLabArgs(t *testing.T) {
	o := mustParse(t,
		"--kubeconfig", "/tmp/lab/kubeconfig",
		"--node-name", "node-1",
		"--cluster-cidrs", "10.244.0.0/16,fd00:10:244::/56",
		"--cni-conf-dir", "/tmp/lab/node-1/net.d",
		"--cni-bin-dir", "/tmp/lab/node-1/bin",
		"--cni-plugin", "/repo/build/testbin/podroute",
		"--data-dir", "/tmp/lab/node-1/data",
		"--socket", "/tmp/lab/node-1/agent.sock",
		"--health-address", "127.0.0.1:9649",
		"--hold-time", "3s",
		"--keepalive", "1s",
		"--graceful-restart=false", "--restart-time", "0s", "--masquerade=false",
	)
	c := o.cfg
	if o.kubeconfig != "/tmp/lab/kubeconfig" || c.NodeName != "node-1" || c.HoldTime != 3*time.Second ||
		c.KeepaliveTime != time.Second || c.GracefulRestart || c.RestartTime != 0 || c.Masquerade ||
		c.CNI.PluginSource != "/repo/build/testbin/podroute" || c.CNI.BinDir != "/tmp/lab/node-1/bin" ||
		o.socket != "/tmp/lab/node-1/agent.sock" {
		t.Errorf("lab arguments: %+v", o)
	}
	if !slices.Equal(c.ClusterCIDRs, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}) {
		t.Errorf("--cluster-cidrs: %v", c.ClusterCIDRs)
	}
}

// TestDefaults: what an agent started with the required flags alone runs with.
func TestDefaults(t *testing.T) {
	o := mustParse(t, "--cluster-cidrs=10.244.0.0/16")
	c := o.cfg
	if c.NodeName != "host-1" || c.ASN != agent.DefaultASN || c.BGPPort != 179 || c.HoldTime != 9*time.Second ||
		c.KeepaliveTime != 3*time.Second || !c.GracefulRestart || c.RestartTime != 2*time.Minute ||
		c.StaleTimeout != c.RestartTime || !c.Masquerade || !c.InstallCNI || c.CNI.NoPortmap ||
		c.CNI.PluginSource != "/opt/podroute/bin/podroute" || c.CNI.PortmapSource != "/opt/podroute/bin/portmap" ||
		c.KubeProxyMetricsAddress != agent.DefaultKubeProxyMetricsAddress || c.ResyncInterval != 30*time.Second ||
		o.socket != "/run/podroute/agent.sock" || o.healthAddr != "" || o.logLevel.String() != "INFO" {
		t.Errorf("defaults: %+v", o)
	}
	env := testEnv
	env.nodeName = "from-env"
	if o, err := parseFlags([]string{"--cluster-cidrs=10.244.0.0/16"}, env); err != nil || o.cfg.NodeName != "from-env" {
		t.Errorf("NODE_NAME: %v %v", o, err)
	}
	o = mustParse(t, "--cluster-cidrs=10.244.0.0/16", "--cni-portmap=false", "--stale-timeout=5s", "--kube-proxy-metrics-address=",
		"--node-ip", "192.0.2.1,2001:db8::1", "--router-id", "10.255.0.1", "--asn", "65001", "--bgp-port", "1179", "--log-level", "debug")
	c = o.cfg
	if !c.CNI.NoPortmap || c.StaleTimeout != 5*time.Second || c.KubeProxyMetricsAddress != "" || len(c.NodeIPs) != 2 ||
		c.RouterID != netip.MustParseAddr("10.255.0.1") || c.ASN != 65001 || c.BGPPort != 1179 || o.logLevel.String() != "DEBUG" {
		t.Errorf("set flags: %+v", o)
	}
}

// TestBadValues: each bad value is an error that names its flag.
func TestBadValues(t *testing.T) {
	base := []string{"--cluster-cidrs=10.244.0.0/16"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bgp-port", "x"}, `"--bgp-port"`},
		{[]string{"--bgp-port=70000"}, `"--bgp-port"`},
		{[]string{"--asn=4294967296"}, `"--asn"`},
		{[]string{"--asn=-1"}, `"--asn"`},
		{[]string{"--asn=0"}, "--asn"},
		{[]string{"--hold-time=3x"}, `"--hold-time"`},
		{[]string{"--hold-time=1s"}, "--hold-time"},
		{[]string{"--mtu=ten"}, `"--mtu"`},
		{[]string{"--mtu=20"}, "--mtu"},
		{[]string{"--masquerade=maybe"}, `"--masquerade"`},
		{[]string{"--node-ip=192.0.2.300"}, `"--node-ip"`},
		{[]string{"--node-ip=192.0.2.1,192.0.2.2"}, "--node-ip"},
		{[]string{"--router-id=router"}, `"--router-id"`},
		{[]string{"--router-id=2001:db8::1"}, "--router-id"},
		{[]string{"--bgp-listen-address=::g"}, `"--bgp-listen-address"`},
		{[]string{"--cluster-cidrs=10.244.0.1/16"}, `"--cluster-cidrs"`},
		{[]string{"--cluster-cidrs="}, "--cluster-cidrs"},
		{[]string{"--service-cidrs=10.96.0.0"}, `"--service-cidrs"`},
		{[]string{"--resync-interval=0s"}, "--resync-interval"},
		{[]string{"--log-level=loud"}, `"--log-level"`},
		{[]string{"--kube-proxy-metrics-address=localhost"}, "--kube-proxy-metrics-address"},
		{[]string{"--hold-time"}, "--hold-time"},
		{[]string{"--no-such-flag"}, "--no-such-flag"},
		{[]string{"--cni-portmap", "false"}, `"false"`},
	} {
		_, err := parseFlags(append(slices.Clone(base), tc.args...), testEnv)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
	// Bad values are errors with --uninstall too, where the agent's own settings are not
	// required.
	if _, err := parseFlags([]string{"--uninstall", "--log-level=loud"}, testEnv); err == nil {
		t.Error("--uninstall --log-level=loud parsed")
	}
	if o, err := parseFlags([]string{"--uninstall"}, testEnv); err != nil || !o.uninstall {
		t.Errorf("--uninstall alone: %v", err)
	}
}

// TestSingleDash: flags written the Go way (-name, as the agent's flag parsing took them
// before) still work, and are reported; a value is never rewritten.
func TestSingleDash(t *testing.T) {
	o := mustParse(t, "-node-name", "n1", "-cluster-cidrs=10.244.0.0/16", "-masquerade=false", "-uninstall",
		"--kubeconfig", "-asn", "-asn", "65001")
	if o.cfg.NodeName != "n1" || len(o.cfg.ClusterCIDRs) != 1 || o.cfg.Masquerade || !o.uninstall ||
		o.kubeconfig != "-asn" || o.cfg.ASN != 65001 {
		t.Errorf("single-dash flags: %+v", o)
	}
	if want := []string{"node-name", "cluster-cidrs", "masquerade", "uninstall", "asn"}; !slices.Equal(o.deprecated, want) {
		t.Errorf("reported %q, want %q", o.deprecated, want)
	}
	if o := mustParse(t, "--cluster-cidrs=10.244.0.0/16"); len(o.deprecated) != 0 {
		t.Errorf("reported %q for two-dash flags", o.deprecated)
	}
}

// TestFlagsDefined: every flag the agent has had is still defined.
func TestFlagsDefined(t *testing.T) {
	fs := newFlagSet(&options{}, testEnv)
	for _, name := range flagNames {
		if fs.Lookup(name) == nil {
			t.Errorf("--%s is gone", name)
		}
	}
}
