package cni

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzParseConfig feeds arbitrary bytes to the parser a runtime's stdin reaches. It must never
// panic, must answer with the spec's decode (6) or invalid-config (7) code, and whatever it
// accepts must be usable as is.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		goodConf,
		`{"cniVersion":"0.3.1","name":"n","ipam":{"type":"host-local","subnet":"10.1.0.0/16"}}`,
		`{"name":"n","mtu":9000,"ipam":{"type":"podroute-ipam","ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.10","rangeEnd":"10.0.0.20"}]],"exclude":["10.0.0.15"]}}`,
		`{"name":"n","ipam":{"type":"podroute-ipam","subnet":"10.9.0.0/30","gateway":"10.9.0.1"}}`,
		`{"name":"n","ipam":{"type":"podroute-ipam","ranges":[[{"subnet":"fd00::/120"},{"subnet":"fd01::/120"}]]}}`,
		`{"name":"n","ipam":{"type":"podroute-ipam","ranges":[[{"subnet":"::ffff:10.0.0.0/120"}]]}}`,
		`{"name":"n","ipam":{"type":"podroute-ipam","ranges":[[]]}}`,
		`{"name":"n","cniVersion":"1.0.0","ipam":{"type":"host-local"},"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/32"}]}}`,
		`{"name":"n","mtu":1e9}`, `[]`, `null`, ``, `{"name":1}`,
		`{"name":"n","ipam":{"type":"host-local"},"chainedPlugins":["portmap"]}`,
		`{"name":"n","ipam":{"type":"host-local"},"chainedPlugins":["portmap","bandwidth","tuning"]}`,
		`{"name":"n","ipam":{"type":"host-local"},"chainedPlugins":["portmap","portmap"]}`,
		`{"name":"n","ipam":{"type":"host-local"},"chainedPlugins":["../portmap",""]}`,
		`{"name":"n","ipam":{"type":"host-local"},"chainedPlugins":"portmap"}`,
		`{"name":"n","ipam":{"type":"host-local"},"chainedPlugins":[null,7]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("error %v is %T, not the spec's error type", err, err)
			}
			if te.Code != types.ErrDecodingFailure && te.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("code %d for a config problem: %s", te.Code, te.Msg)
			}
			if te.Msg == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if c.Name == "" || c.MTU < minMTU || c.MTU > maxMTU {
			t.Fatalf("accepted an unusable config: name %q mtu %d", c.Name, c.MTU)
		}
		for i, name := range c.ChainedPlugins {
			if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || slices.Contains(c.ChainedPlugins[:i], name) {
				t.Fatalf("accepted chained plugin %q in %q", name, c.ChainedPlugins)
			}
		}
		if (c.PluginConf.IPAM.Type == BuiltinIPAM) != (c.Pool != nil) {
			t.Fatalf("ipam type %q but Pool=%v", c.PluginConf.IPAM.Type, c.Pool)
		}
		if c.Pool != nil {
			if len(c.Pool.Ranges) == 0 {
				t.Fatal("accepted a pool with no ranges")
			}
			for _, set := range c.Pool.Ranges {
				for _, r := range set {
					if !r.Subnet.IsValid() || !r.Subnet.Contains(r.Start) || !r.Subnet.Contains(r.End) || r.End.Less(r.Start) {
						t.Fatalf("accepted an inconsistent range %+v", r)
					}
				}
			}
		}
	})
}
