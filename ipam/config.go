package ipam

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// DefaultDataDir holds one directory per network.
const DefaultDataDir = "/var/lib/cni/podroute"

// Range is one validated subnet to allocate from. Start and End are always
// set (defaults: first and last usable address); Gateway is optional.
type Range struct {
	Subnet     netip.Prefix
	Start, End netip.Addr
	Gateway    netip.Addr
}

// RangeSet is a list of ranges of one address family; an attachment gets one
// address from each set, taken from the first range that has room.
type RangeSet []Range

// Config is the validated "ipam" section of a network configuration.
type Config struct {
	Type    string
	Ranges  []RangeSet
	Exclude []netip.Prefix // single addresses become /32 or /128
	DataDir string
	Routes  []*types.Route

	// paths[i][j] is the JSON path of Ranges[i][j] and setPaths[i] that of
	// Ranges[i], so errors point at what the operator wrote (the legacy
	// single-range form lives at "ipam" itself).
	paths    [][]string
	setPaths []string
}

// rawIPAM mirrors the JSON; nested values stay raw so every decode error can
// be reported with its exact path (encoding/json drops array indices).
type rawIPAM struct {
	Type       string          `json:"type"`
	Ranges     json.RawMessage `json:"ranges"`
	Exclude    json.RawMessage `json:"exclude"`
	DataDir    string          `json:"dataDir"`
	Routes     json.RawMessage `json:"routes"`
	Subnet     string          `json:"subnet"`
	RangeStart string          `json:"rangeStart"`
	RangeEnd   string          `json:"rangeEnd"`
	Gateway    string          `json:"gateway"`
}

type rawRange struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart"`
	RangeEnd   string `json:"rangeEnd"`
	Gateway    string `json:"gateway"`
}

// ParseConfig parses and validates the "ipam" object (raw JSON of that object only).
func ParseConfig(raw []byte) (*Config, error) {
	var r rawIPAM
	if err := decode(raw, &r, "ipam"); err != nil {
		return nil, err
	}
	cfg := &Config{Type: r.Type, DataDir: r.DataDir}

	// host-local's legacy single-range form goes first, as host-local does.
	legacy := rawRange{Subnet: r.Subnet, RangeStart: r.RangeStart, RangeEnd: r.RangeEnd, Gateway: r.Gateway}
	if legacy != (rawRange{}) {
		if legacy.Subnet == "" {
			return nil, fieldErr("ipam.subnet", "missing (required when rangeStart, rangeEnd or gateway is set at the top level of ipam)")
		}
		rg, err := legacy.parse("ipam")
		if err != nil {
			return nil, err
		}
		cfg.Ranges = append(cfg.Ranges, RangeSet{rg})
		cfg.paths = append(cfg.paths, []string{"ipam"})
		cfg.setPaths = append(cfg.setPaths, "ipam")
	}

	var sets []json.RawMessage
	if err := decode(r.Ranges, &sets, "ipam.ranges"); err != nil {
		return nil, err
	}
	for i, rawSet := range sets {
		setPath := fmt.Sprintf("ipam.ranges[%d]", i)
		var entries []json.RawMessage
		if err := decode(rawSet, &entries, setPath); err != nil {
			return nil, err
		}
		set := RangeSet{}
		paths := []string{}
		for j, rawEntry := range entries {
			path := fmt.Sprintf("%s[%d]", setPath, j)
			var rr rawRange
			if err := decode(rawEntry, &rr, path); err != nil {
				return nil, err
			}
			rg, err := rr.parse(path)
			if err != nil {
				return nil, err
			}
			set = append(set, rg)
			paths = append(paths, path)
		}
		cfg.Ranges = append(cfg.Ranges, set)
		cfg.paths = append(cfg.paths, paths)
		cfg.setPaths = append(cfg.setPaths, setPath)
	}

	var excl []json.RawMessage
	if err := decode(r.Exclude, &excl, "ipam.exclude"); err != nil {
		return nil, err
	}
	for k, rawEx := range excl {
		path := fmt.Sprintf("ipam.exclude[%d]", k)
		var s string
		if err := decode(rawEx, &s, path); err != nil {
			return nil, err
		}
		p, err := parseExclude(s, path)
		if err != nil {
			return nil, err
		}
		cfg.Exclude = append(cfg.Exclude, p)
	}

	var routes []json.RawMessage
	if err := decode(r.Routes, &routes, "ipam.routes"); err != nil {
		return nil, err
	}
	for k, rawRt := range routes {
		path := fmt.Sprintf("ipam.routes[%d]", k)
		rt := &types.Route{}
		if err := decode(rawRt, rt, path); err != nil {
			return nil, err
		}
		if rt.Dst.IP == nil {
			return nil, fieldErr(path+".dst", "missing")
		}
		cfg.Routes = append(cfg.Routes, rt)
	}

	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// validNetName is the CNI spec's rule for network names; it also makes the name
// safe to use as a directory name.
// (A loop, not a regexp: compiling one would cost every exec of the plugin.)
func validNetName(name string) bool {
	for i, c := range name {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || (c != '_' && c != '.' && c != '-')) {
			return false
		}
	}
	return name != ""
}

// LoadNetConf parses a whole CNI network config (stdin bytes) and returns the
// network name and the validated ipam config.
func LoadNetConf(stdin []byte) (netName string, cfg *Config, err error) {
	netName, _, cfg, err = loadNetConf(stdin)
	return netName, cfg, err
}

func loadNetConf(stdin []byte) (netName, cniVersion string, cfg *Config, err error) {
	var nc struct {
		Name       string          `json:"name"`
		CNIVersion string          `json:"cniVersion"`
		IPAM       json.RawMessage `json:"ipam"`
	}
	if err := decode(stdin, &nc, ""); err != nil {
		return "", "", nil, err
	}
	if err := checkNetName(nc.Name); err != nil {
		return "", "", nil, err
	}
	if len(nc.IPAM) == 0 || bytes.Equal(bytes.TrimSpace(nc.IPAM), []byte("null")) {
		return "", "", nil, fieldErr("ipam", "missing")
	}
	cfg, err = ParseConfig(nc.IPAM)
	if err != nil {
		return "", "", nil, err
	}
	return nc.Name, nc.CNIVersion, cfg, nil
}

func checkNetName(name string) error {
	if name == "" {
		return fieldErr("name", "missing")
	}
	if !validNetName(name) {
		return fieldErr("name", fmt.Sprintf("%q must start with a letter or digit and contain only letters, digits, '_', '.' and '-'", name))
	}
	return nil
}

// decode unmarshals raw into v; an absent or null value leaves v untouched.
// Errors name path plus whatever encoding/json knows below it.
func decode(raw []byte, v any, path string) error {
	if len(raw) == 0 {
		return nil
	}
	err := json.Unmarshal(raw, v)
	if err == nil {
		return nil
	}
	field := path
	msg := err.Error()
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		field = joinPath(path, te.Field)
		msg = fmt.Sprintf("expected %s, got JSON %s", jsonKind(te.Type.String()), te.Value)
	case errors.As(err, &se):
		msg = fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, se)
	default:
		// e.g. types.Route rejecting its dst or a truncated document
		msg = strings.TrimPrefix(msg, "json: ")
	}
	if field == "" {
		field = "(network config)"
	}
	return &DecodeError{Field: field, Msg: msg, Err: err}
}

func joinPath(path, sub string) string {
	switch {
	case sub == "":
		return path
	case path == "":
		return sub
	}
	return path + "." + sub
}

// jsonKind turns a Go type name into what the operator wrote it as.
func jsonKind(goType string) string {
	switch {
	case goType == "string":
		return "a string"
	case strings.HasPrefix(goType, "[]"):
		return "an array"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"), strings.HasPrefix(goType, "float"):
		return "a number"
	case goType == "bool":
		return "a boolean"
	}
	return "an object"
}

// parse turns one range's strings into addresses; path is where it sits.
func (rr rawRange) parse(path string) (Range, error) {
	var rg Range
	if rr.Subnet == "" {
		return rg, fieldErr(path+".subnet", "missing")
	}
	p, err := netip.ParsePrefix(rr.Subnet)
	if err != nil {
		return rg, fieldErr(path+".subnet", fmt.Sprintf("%q is not a valid CIDR", rr.Subnet))
	}
	rg.Subnet = p
	for _, f := range []struct {
		name string
		s    string
		dst  *netip.Addr
	}{{"rangeStart", rr.RangeStart, &rg.Start}, {"rangeEnd", rr.RangeEnd, &rg.End}, {"gateway", rr.Gateway, &rg.Gateway}} {
		if f.s == "" {
			continue
		}
		a, err := netip.ParseAddr(f.s)
		if err != nil {
			return rg, fieldErr(path+"."+f.name, fmt.Sprintf("%q is not a valid IP address", f.s))
		}
		*f.dst = a
	}
	return rg, nil
}

// parseExclude accepts a CIDR or a single address.
func parseExclude(s, path string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fieldErr(path, fmt.Sprintf("%q is not a valid CIDR", s))
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fieldErr(path, fmt.Sprintf("%q is not a valid CIDR or IP address", s))
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fieldErr(path, fmt.Sprintf("%q must not carry a zone", s))
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
