package cni

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

const goodConf = `{"cniVersion":"1.1.0","name":"podnet","type":"podroute","mtu":1450,
 "ipam":{"type":"podroute-ipam","ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]],"dataDir":"/tmp/x"}}`

func TestParseConfigGood(t *testing.T) {
	c, err := ParseConfig([]byte(goodConf))
	if err != nil {
		t.Fatal(err)
	}
	if c.MTU != 1450 || c.Name != "podnet" || c.Pool == nil || len(c.Pool.Ranges) != 2 {
		t.Fatalf("unexpected config: %+v", c)
	}
	if !c.hasIPv6() {
		t.Fatal("hasIPv6 = false for a dual-stack pool")
	}
	d, err := ParseConfig([]byte(`{"cniVersion":"1.0.0","name":"n","type":"podroute","ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if d.Pool != nil || d.MTU != defaultMTU {
		t.Fatalf("delegated config: Pool=%v MTU=%d, want nil and %d", d.Pool, d.MTU, defaultMTU)
	}
}

func TestParseConfigErrors(t *testing.T) {
	cases := []struct {
		name, conf string
		code       uint
		mention    string
	}{
		{"not json", `{"name":`, types.ErrDecodingFailure, "not valid JSON"},
		{"mtu wrong type", `{"name":"n","mtu":"big","ipam":{"type":"host-local"}}`, types.ErrDecodingFailure, "mtu"},
		{"ipam wrong type", `{"name":"n","ipam":"podroute-ipam"}`, types.ErrDecodingFailure, "ipam"},
		{"no name", `{"ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, "name"},
		{"mtu too big", `{"name":"n","mtu":70000,"ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, "mtu"},
		{"mtu negative", `{"name":"n","mtu":-1,"ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, "mtu"},
		{"no ipam", `{"name":"n"}`, types.ErrInvalidNetworkConfig, "ipam.type"},
		{"mtu small for v6", `{"name":"n","mtu":1000,"ipam":{"type":"podroute-ipam","ranges":[[{"subnet":"fd00::/64"}]]}}`, types.ErrInvalidNetworkConfig, "mtu"},
		{"bad subnet", `{"name":"n","ipam":{"type":"podroute-ipam","ranges":[[{"subnet":"10.0.0.0/33"}]]}}`, types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].subnet"},
		{"overlap", `{"name":"n","ipam":{"type":"podroute-ipam","ranges":[[{"subnet":"10.0.0.0/16"}],[{"subnet":"10.0.1.0/24"}]]}}`, types.ErrInvalidNetworkConfig, "overlaps"},
		{"no ranges", `{"name":"n","ipam":{"type":"podroute-ipam"}}`, types.ErrInvalidNetworkConfig, "ipam.ranges"},
		{"ranges wrong type", `{"name":"n","ipam":{"type":"podroute-ipam","ranges":{"subnet":"10.0.0.0/24"}}}`, types.ErrDecodingFailure, "ranges"},
		{"bad prevResult", `{"name":"n","cniVersion":"1.0.0","ipam":{"type":"host-local"},"prevResult":{"ips":"x"}}`, types.ErrDecodingFailure, "prevResult"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.conf))
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("got %v (%T), want a *types.Error", err, err)
			}
			if te.Code != tc.code {
				t.Errorf("code %d, want %d (%s)", te.Code, tc.code, te.Msg)
			}
			if !strings.Contains(te.Msg, tc.mention) {
				t.Errorf("message %q does not name %q", te.Msg, tc.mention)
			}
		})
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("default", "web-0", "c1", "eth0")
	if len(a) != 15 || !strings.HasPrefix(a, HostVethPrefix) {
		t.Fatalf("name %q: want 15 characters starting with %q", a, HostVethPrefix)
	}
	if b := HostVethName("default", "web-0", "c2", "eth0"); b != a {
		t.Errorf("same pod, new sandbox: %q != %q; the name must depend on the pod alone", b, a)
	}
	if b := HostVethName("default", "web-1", "c1", "eth0"); b == a {
		t.Error("different pods share a host interface name")
	}
	if b := HostVethName("default", "web-0", "c1", "net1"); b == a {
		t.Error("a second interface of the same pod shares the first one's host name")
	}
	if c, d := HostVethName("", "", "c1", "eth0"), HostVethName("", "", "c2", "eth0"); c == d {
		t.Error("without pod args, different containers share a host name")
	}
}

func TestOwnerAlias(t *testing.T) {
	if a := OwnerAlias("abc", "eth0"); a != "podroute:abc:eth0" || !IsPodrouteAlias(a) {
		t.Fatalf("alias %q", a)
	}
	long := strings.Repeat("f", 300)
	a, b := OwnerAlias(long, "eth0"), OwnerAlias(long+"0", "eth0")
	if len(a) > maxAlias || a == b || !IsPodrouteAlias(a) {
		t.Fatalf("long container IDs: %q / %q", a, b)
	}
}

func TestParseK8sArgs(t *testing.T) {
	got := parseK8sArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns-1;garbage;K8S_POD_INFRA_CONTAINER_ID=x")
	if got.PodNamespace != "kube-system" || got.PodName != "dns-1" {
		t.Fatalf("got %+v", got)
	}
}

func TestParseConfigChained(t *testing.T) {
	c, err := ParseConfig([]byte(`{"name":"n","ipam":{"type":"host-local"},"chainedPlugins":["portmap","bandwidth"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.ChainedPlugins, ",") != "portmap,bandwidth" {
		t.Fatalf("chainedPlugins %q", c.ChainedPlugins)
	}
	for _, tc := range []struct {
		name, value string
		code        uint
		mention     string
	}{
		{"not a list", `"portmap"`, types.ErrDecodingFailure, "chainedPlugins"},
		{"not strings", `[1]`, types.ErrDecodingFailure, "chainedPlugins"},
		{"empty name", `["portmap",""]`, types.ErrInvalidNetworkConfig, "chainedPlugins[1]: empty"},
		{"path", `["../bin/portmap"]`, types.ErrInvalidNetworkConfig, `chainedPlugins[0]: "../bin/portmap" is not a plugin type`},
		{"absolute", `["/opt/cni/bin/portmap"]`, types.ErrInvalidNetworkConfig, "chainedPlugins[0]"},
		{"dot dot", `[".."]`, types.ErrInvalidNetworkConfig, "chainedPlugins[0]"},
		{"nul", `["port\u0000map"]`, types.ErrInvalidNetworkConfig, "chainedPlugins[0]"},
		{"too long", `["` + strings.Repeat("p", 256) + `"]`, types.ErrInvalidNetworkConfig, "chainedPlugins[0]: 256 bytes"},
		{"twice", `["portmap","bandwidth","portmap"]`, types.ErrInvalidNetworkConfig, `chainedPlugins[2]: "portmap" is listed twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(`{"name":"n","ipam":{"type":"host-local"},"chainedPlugins":` + tc.value + `}`))
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("got %v (%T), want a *types.Error", err, err)
			}
			if te.Code != tc.code {
				t.Errorf("code %d, want %d (%s)", te.Code, tc.code, te.Msg)
			}
			if !strings.Contains(te.Msg, tc.mention) {
				t.Errorf("message %q does not say %q", te.Msg, tc.mention)
			}
		})
	}
	if c, err := ParseConfig([]byte(`{"name":"n","ipam":{"type":"host-local"},"chainedPlugins":[]}`)); err != nil || len(c.ChainedPlugins) != 0 {
		t.Errorf("empty list: %v %v", c, err)
	}
}
