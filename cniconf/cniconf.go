// Package cniconf writes a node's podroute CNI network configuration and installs the
// plugin binaries the configuration names.
//
// The configuration file is the node's readiness gate: kubelet (through the container
// runtime) reports the node NotReady until a valid network configuration is present in the
// CNI configuration directory, and the runtime uses the lexically first one there. The node
// agent therefore installs the plugin first and writes the configuration last, only once
// podroute can serve pods on this node, and removes the configuration first on uninstall.
//
// The configuration list chains the reference portmap plugin after podroute, so that pods'
// hostPorts work (the runtime hands portmap the pod's port mappings through the portMappings
// capability, and podroute's result tells it the pod's addresses); Options.NoPortmap leaves
// podroute alone in the list. podroute's own entry names the plugins chained after it
// (chainedPlugins), so its STATUS can tell the runtime that one is missing from the plugin
// directory. Chaining other plugins (bandwidth, ...) is the operator's choice, made with a
// configuration of their own that sorts before podroute's.
package cniconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/podroute/podroute/cni"
)

const (
	// DefaultConfDir is where kubelet and the container runtimes look for network configurations.
	DefaultConfDir = "/etc/cni/net.d"
	// DefaultBinDir is where the runtimes look for plugin binaries.
	DefaultBinDir = "/opt/cni/bin"
	// DefaultFileName sorts early so podroute's configuration is the one the runtime picks.
	DefaultFileName = "10-podroute.conflist"
	// DefaultNetworkName is the network's name in the configuration.
	DefaultNetworkName = "podroute"
	// DefaultDataDir holds the IPAM reservations.
	DefaultDataDir = "/var/lib/cni/podroute"
	// DefaultCNIVersion is the configuration's cniVersion. Runtimes that read the CNI 1.1
	// "cniVersions" list pick 1.1.0 from it; older ones (containerd 1.6's libcni) read only
	// cniVersion and reject a 1.1.0 result, which would fail every pod sandbox.
	DefaultCNIVersion = "1.0.0"

	// PluginName is the plugin binary's name in the bin dir ("type" in the configuration).
	PluginName = "podroute"
	// IPAMPluginName is the link to the plugin that serves it as a standalone IPAM plugin.
	IPAMPluginName = cni.BuiltinIPAM
	// PortmapName is the reference portmap plugin's binary name ("type" in the configuration).
	PortmapName = "portmap"

	// PortmapBackend is the netfilter front-end portmap writes hostPort rules with: nftables,
	// on every node, whatever kube-proxy's mode. Left to itself, portmap (v1.9.1) picks per
	// call: iptables whenever an iptables binary works, nftables otherwise. nftables works
	// beside kube-proxy in either of its modes: portmap keeps its rules in a table of its own
	// (ip and ip6 cni_hostport), with its own NAT chains, and never touches kube-proxy's
	// chains, iptables or nftables; and it needs no iptables binary, which a node whose
	// kube-proxy runs in nftables mode may not have. Choosing once also keeps DEL finding what
	// ADD made: with the per-call choice, an iptables package installed or removed between a
	// pod's ADD and its DEL sends DEL to the other front-end, and the pod's DNAT rules stay
	// behind, pointing at an address IPAM hands to the next pod. What it needs: nft 1.0.1 or
	// later on the container runtime's PATH, for pods with hostPorts only (portmap does not
	// run nft for a pod without them).
	PortmapBackend = "nftables"

	minMTU   = 68
	minMTUv6 = 1280 // IPv6 requires links of at least 1280 bytes (RFC 8200).
	maxMTU   = 65535
)

// SupportedVersions are the CNI versions the plugin serves; runtimes that understand the
// CNI 1.1 "cniVersions" array pick the highest they support.
var SupportedVersions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// Options says where the configuration and the plugin go. Empty fields with a default take it.
type Options struct {
	ConfDir      string // CNI configuration directory, e.g. DefaultConfDir; required, absolute
	BinDir       string // CNI plugin directory, e.g. DefaultBinDir; required, absolute
	FileName     string // configuration file name; default DefaultFileName
	NetworkName  string // network name; default DefaultNetworkName
	PluginSource string // the podroute plugin binary to install; required by InstallPlugin, absolute
	DataDir      string // IPAM data dir; default DefaultDataDir
	CNIVersion   string // default DefaultCNIVersion
	// PortmapSource is the portmap plugin binary InstallPlugin installs beside podroute,
	// absolute; empty installs none (the node's own portmap in BinDir is used).
	PortmapSource string
	// NoPortmap leaves portmap out of the configuration list (and InstallPlugin does not
	// install it): podroute alone, pods' hostPorts are not served.
	NoPortmap bool
}

// NodeNetwork is what the configuration says about this node.
type NodeNetwork struct {
	PodCIDRs []netip.Prefix // the node's pod CIDRs, one IPAM range set each
	MTU      int            // pod interface MTU, see LinkMTU
}

func (o Options) withDefaults() Options {
	if o.FileName == "" {
		o.FileName = DefaultFileName
	}
	if o.NetworkName == "" {
		o.NetworkName = DefaultNetworkName
	}
	if o.DataDir == "" {
		o.DataDir = DefaultDataDir
	}
	if o.CNIVersion == "" {
		o.CNIVersion = DefaultCNIVersion
	}
	return o
}

func checkDir(field, p string) error {
	if p == "" {
		return fmt.Errorf("cniconf: %s is empty", field)
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("cniconf: %s %q is not an absolute path", field, p)
	}
	return nil
}

// validateConf checks the options Render and Write need.
func (o Options) validateConf() error {
	if err := checkDir("ConfDir", o.ConfDir); err != nil {
		return err
	}
	if err := checkDir("DataDir", o.DataDir); err != nil {
		return err
	}
	if strings.ContainsRune(o.FileName, '/') || o.FileName == "." || o.FileName == ".." {
		return fmt.Errorf("cniconf: FileName %q must be a plain file name", o.FileName)
	}
	// libcni loads a file as a configuration list only by this extension.
	if filepath.Ext(o.FileName) != ".conflist" {
		return fmt.Errorf("cniconf: FileName %q must end in .conflist", o.FileName)
	}
	supported := false
	for _, v := range SupportedVersions {
		supported = supported || v == o.CNIVersion
	}
	if !supported {
		return fmt.Errorf("cniconf: CNIVersion %q is not one of %v", o.CNIVersion, SupportedVersions)
	}
	return nil
}

func (o Options) validateBin() error {
	return checkDir("BinDir", o.BinDir)
}

func (n NodeNetwork) validate() error {
	if len(n.PodCIDRs) == 0 {
		return errors.New("cniconf: no pod CIDR: the node has no pod addresses to hand out yet")
	}
	v6 := false
	for i, p := range n.PodCIDRs {
		if !p.IsValid() {
			return fmt.Errorf("cniconf: pod CIDR %d is not a valid prefix", i)
		}
		if p.Masked() != p {
			return fmt.Errorf("cniconf: pod CIDR %s has host bits set (want %s)", p, p.Masked())
		}
		if p.Addr().Is4In6() {
			return fmt.Errorf("cniconf: pod CIDR %s is an IPv4-mapped IPv6 prefix", p)
		}
		for _, q := range n.PodCIDRs[:i] {
			if p.Overlaps(q) {
				return fmt.Errorf("cniconf: pod CIDRs %s and %s overlap", q, p)
			}
		}
		v6 = v6 || p.Addr().Is6()
	}
	if n.MTU < minMTU || n.MTU > maxMTU {
		return fmt.Errorf("cniconf: MTU %d is outside %d..%d", n.MTU, minMTU, maxMTU)
	}
	if v6 && n.MTU < minMTUv6 {
		return fmt.Errorf("cniconf: MTU %d is below %d, the minimum for IPv6 pod CIDRs", n.MTU, minMTUv6)
	}
	return nil
}

type confList struct {
	CNIVersion  string   `json:"cniVersion"`
	CNIVersions []string `json:"cniVersions"`
	Name        string   `json:"name"`
	Plugins     []any    `json:"plugins"`
}

type plugin struct {
	Type           string   `json:"type"`
	MTU            int      `json:"mtu"`
	IPAM           ipam     `json:"ipam"`
	ChainedPlugins []string `json:"chainedPlugins,omitempty"`
}

// portmapPlugin is portmap's entry. The runtime passes it the pod's port mappings as
// runtimeConfig.portMappings, and only to a plugin declaring the capability.
type portmapPlugin struct {
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities"`
	Backend      string          `json:"backend"`
}

type ipam struct {
	Type    string      `json:"type"`
	Ranges  [][]ipRange `json:"ranges"`
	DataDir string      `json:"dataDir"`
}

type ipRange struct {
	Subnet string `json:"subnet"`
}

// Render returns the configuration list for the node: the podroute plugin with one IPAM
// range set per pod CIDR, so a dual-stack node gives each pod one address of each family,
// then portmap (unless NoPortmap) with the PortmapBackend. The plugin's own parser checks
// podroute's entry, so a configuration Render returns is one the plugin accepts.
func Render(opts Options, n NodeNetwork) ([]byte, error) {
	opts = opts.withDefaults()
	if err := opts.validateConf(); err != nil {
		return nil, err
	}
	if err := n.validate(); err != nil {
		return nil, err
	}
	p := plugin{
		Type: PluginName,
		MTU:  n.MTU,
		IPAM: ipam{Type: cni.BuiltinIPAM, DataDir: opts.DataDir},
	}
	for _, c := range n.PodCIDRs {
		p.IPAM.Ranges = append(p.IPAM.Ranges, []ipRange{{Subnet: c.String()}})
	}
	plugins := []any{&p}
	if !opts.NoPortmap {
		p.ChainedPlugins = []string{PortmapName}
		plugins = append(plugins, portmapPlugin{
			Type:         PortmapName,
			Capabilities: map[string]bool{"portMappings": true},
			Backend:      PortmapBackend,
		})
	}
	out, err := json.MarshalIndent(confList{
		CNIVersion:  opts.CNIVersion,
		CNIVersions: SupportedVersions,
		Name:        opts.NetworkName,
		Plugins:     plugins,
	}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("cniconf: encoding the configuration: %w", err)
	}
	out = append(out, '\n')
	if err := checkWithPlugin(opts, p); err != nil {
		return nil, err
	}
	return out, nil
}

// checkWithPlugin runs the plugin's parser over the configuration the runtime will pass it
// (the list's name and version injected into the plugin entry, as libcni does).
func checkWithPlugin(opts Options, p plugin) error {
	stdin, err := json.Marshal(struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		plugin
	}{opts.CNIVersion, opts.NetworkName, p})
	if err != nil {
		return fmt.Errorf("cniconf: encoding the plugin configuration: %w", err)
	}
	if _, err := cni.ParseConfig(stdin); err != nil {
		return fmt.Errorf("cniconf: the plugin rejects the configuration: %w", err)
	}
	return nil
}

// Write renders the configuration and puts it at ConfDir/FileName, creating ConfDir. The
// file is replaced atomically (temporary file in the same directory, fsync, rename), so a
// runtime reading it sees the old or the new configuration, never part of one. Unchanged
// content is not rewritten: changed is false and the file is untouched.
func Write(opts Options, n NodeNetwork) (path string, changed bool, err error) {
	opts = opts.withDefaults()
	content, err := Render(opts, n)
	if err != nil {
		return "", false, err
	}
	path = filepath.Join(opts.ConfDir, opts.FileName)
	changed, err = writeFileAtomic(path, content, 0o644)
	if err != nil {
		return path, false, fmt.Errorf("cniconf: writing %s: %w", path, err)
	}
	return path, changed, nil
}

// sameContent reports whether path is a regular file holding exactly content with mode perm.
func sameContent(path string, content []byte, perm uint32) bool {
	cur, err := readRegular(path, perm)
	return err == nil && bytes.Equal(cur, content)
}
