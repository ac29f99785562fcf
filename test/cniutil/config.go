package cniutil

import (
	"encoding/json"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

// Range is one entry of an IPAM range set, as host-local and podroute-ipam spell it.
type Range struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart,omitempty"`
	RangeEnd   string `json:"rangeEnd,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
}

// The pod subnets the tests and benchmarks use.
const (
	PodSubnetV4 = "10.244.1.0/24"
	PodSubnetV6 = "fd00:10:244:1::/64"
)

// V4 and V6 are single-range range sets over the pod subnets.
var (
	V4 = []Range{{Subnet: PodSubnetV4}}
	V6 = []Range{{Subnet: PodSubnetV6}}
)

// Net describes a one-plugin network configuration list.
type Net struct {
	Name       string // default "podnet"
	CNIVersion string // default "1.1.0"
	MTU        int    // default 1500
	IPAMType   string // default "podroute-ipam" for podroute, "host-local" for ptp
	DataDir    string // IPAM data directory
	Ranges     [][]Range
	Exclude    []string // podroute-ipam only
	Routes     []string // host-local only: routes for the pod (destinations via the gateway)
}

func (n Net) withDefaults(ipamType string) Net {
	if n.Name == "" {
		n.Name = "podnet"
	}
	if n.CNIVersion == "" {
		n.CNIVersion = "1.1.0"
	}
	if n.MTU == 0 {
		n.MTU = 1500
	}
	if n.IPAMType == "" {
		n.IPAMType = ipamType
	}
	return n
}

func (n Net) ipam() map[string]any {
	ipam := map[string]any{"type": n.IPAMType, "ranges": n.Ranges}
	if n.DataDir != "" {
		ipam["dataDir"] = n.DataDir
	}
	if len(n.Exclude) > 0 {
		ipam["exclude"] = n.Exclude
	}
	if len(n.Routes) > 0 {
		var routes []map[string]string
		for _, dst := range n.Routes {
			routes = append(routes, map[string]string{"dst": dst})
		}
		ipam["routes"] = routes
	}
	return ipam
}

func list(name, cniVersion string, plugin map[string]any) []byte {
	b, err := json.Marshal(map[string]any{
		"cniVersion": cniVersion,
		"name":       name,
		"plugins":    []any{plugin},
	})
	if err != nil {
		panic(err)
	}
	return b
}

// Podroute is the conflist JSON of a podroute network.
func (n Net) Podroute() []byte {
	n = n.withDefaults("podroute-ipam")
	return list(n.Name, n.CNIVersion, map[string]any{"type": "podroute", "mtu": n.MTU, "ipam": n.ipam()})
}

// Ptp is the conflist JSON of the reference ptp plugin over the same ranges, with host-local
// IPAM and no masquerading: the closest reference setup to podroute's.
func (n Net) Ptp() []byte {
	n = n.withDefaults("host-local")
	ipam := n.ipam()
	delete(ipam, "exclude")
	return list(n.Name, n.CNIVersion, map[string]any{"type": "ptp", "mtu": n.MTU, "ipMasq": false, "ipam": ipam})
}

// MustList parses conflist JSON for libcni.
func MustList(tb testing.TB, conf []byte) *libcni.NetworkConfigList {
	tb.Helper()
	l, err := libcni.NetworkConfFromBytes(conf)
	if err != nil {
		tb.Fatalf("parse conflist %s: %v", conf, err)
	}
	return l
}

// PluginConf is the plugin's own stdin for a direct run of the first plugin of a conflist: the
// plugin object with the list's name and cniVersion, as libcni builds it.
func PluginConf(tb testing.TB, conf []byte) []byte {
	tb.Helper()
	var l struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(conf, &l); err != nil || len(l.Plugins) == 0 {
		tb.Fatalf("parse conflist %s: %v", conf, err)
	}
	p := l.Plugins[0]
	p["cniVersion"] = l.CNIVersion
	p["name"] = l.Name
	b, err := json.Marshal(p)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
