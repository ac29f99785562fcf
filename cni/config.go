package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podroute/podroute/ipam"
)

// BuiltinIPAM is the ipam type served in-process, without a second exec.
const BuiltinIPAM = "podroute-ipam"

const (
	defaultMTU = 1500
	minMTU     = 68
	minMTUv6   = 1280 // IPv6 requires links of at least 1280 bytes (RFC 8200).
	maxMTU     = 65535
)

// NetConf is podroute's network configuration, the "plugins" entry with "type": "podroute".
type NetConf struct {
	types.PluginConf
	MTU int `json:"mtu,omitempty"`
	// ChainedPlugins are the types of the plugins the configuration list runs after podroute
	// (["portmap"] in the list the agent writes). The runtime hands each plugin its own entry
	// only, so this is how podroute knows them: STATUS fails with code 50 naming any of them
	// that is not an executable in CNI_PATH, which would fail every ADD. Optional.
	ChainedPlugins []string `json:"chainedPlugins,omitempty"`
}

// maxPluginName is the longest file name Linux allows (NAME_MAX).
const maxPluginName = 255

// Config is a parsed and validated NetConf.
type Config struct {
	NetConf
	// Stdin is the original configuration, passed unchanged to a delegated IPAM plugin.
	Stdin []byte
	// Pool is the built-in allocator's configuration; nil when IPAM is delegated.
	Pool *ipam.Config
}

// ParseConfig decodes and validates the network configuration a runtime passes on stdin.
// Decoding problems are CNI code 6 and invalid values code 7; both name the field.
func ParseConfig(stdin []byte) (*Config, error) {
	var n NetConf
	if err := json.Unmarshal(stdin, &n); err != nil {
		return nil, decodeErr(err)
	}
	c := &Config{NetConf: n, Stdin: stdin}
	if c.Name == "" {
		return nil, invalidConfig("name", "missing network name")
	}
	if c.MTU == 0 {
		c.MTU = defaultMTU
	}
	if c.MTU < minMTU || c.MTU > maxMTU {
		return nil, invalidConfig("mtu", "%d is outside %d..%d", c.MTU, minMTU, maxMTU)
	}
	if err := validateChained(c.ChainedPlugins); err != nil {
		return nil, err
	}
	switch c.PluginConf.IPAM.Type {
	case "":
		return nil, invalidConfig("ipam.type", "missing: set %q or another IPAM plugin", BuiltinIPAM)
	case BuiltinIPAM:
		_, cfg, err := ipam.LoadNetConf(stdin)
		if err != nil {
			return nil, ipamErr(err)
		}
		c.Pool = cfg
		if c.MTU < minMTUv6 && c.hasIPv6() {
			return nil, invalidConfig("mtu", "%d is below %d, the minimum for IPv6 ranges", c.MTU, minMTUv6)
		}
	}
	if c.RawPrevResult != nil {
		if err := version.ParsePrevResult(&c.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
		}
	}
	return c, nil
}

// validateChained checks that every chained plugin is a plugin type the runtime could look
// up: a plain file name in CNI_PATH, listed once.
func validateChained(names []string) error {
	for i, name := range names {
		field := fmt.Sprintf("chainedPlugins[%d]", i)
		switch {
		case name == "":
			return invalidConfig(field, "empty plugin type")
		case name == "." || name == ".." || strings.ContainsAny(name, "/\x00"):
			return invalidConfig(field, "%q is not a plugin type (a file name in CNI_PATH, without a directory)", name)
		case len(name) > maxPluginName:
			return invalidConfig(field, "%d bytes long: a plugin type is a file name of at most %d bytes", len(name), maxPluginName)
		case slices.Contains(names[:i], name):
			return invalidConfig(field, "%q is listed twice", name)
		}
	}
	return nil
}

func (c *Config) hasIPv6() bool {
	for _, set := range c.Pool.Ranges {
		if len(set) > 0 && set[0].Subnet.Addr().Is6() {
			return true
		}
	}
	return false
}

// decodeErr turns encoding/json's errors into code 6 with the field or byte offset named.
func decodeErr(err error) *types.Error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			field = "(top level)"
		}
		return types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("%s: expected %s, got JSON %s", field, typeErr.Type, typeErr.Value), "")
	case errors.As(err, &syntaxErr):
		return types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("network config is not valid JSON (byte %d): %v", syntaxErr.Offset, err), "")
	default:
		return types.NewError(types.ErrDecodingFailure, "network config: "+err.Error(), "")
	}
}
