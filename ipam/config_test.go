package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseConfigErrors(t *testing.T) {
	cases := []struct {
		name  string
		json  string
		field string // must equal FieldError.Field and start the message
		msg   string // substring of the message
	}{
		{"bad cidr", `{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.0.0/33"}]]}`,
			"ipam.ranges[0][1].subnet", `"10.0.0.0/33" is not a valid CIDR`},
		{"missing subnet", `{"ranges":[[{"rangeStart":"10.0.0.1"}]]}`,
			"ipam.ranges[0][0].subnet", "missing"},
		{"rangeStart outside", `{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/24","rangeStart":"10.1.0.5"}]]}`,
			"ipam.ranges[1][0].rangeStart", "10.1.0.5 is outside subnet 10.2.0.0/24"},
		{"rangeEnd outside", `{"ranges":[[{"subnet":"10.2.0.0/24","rangeEnd":"10.2.1.0"}]]}`,
			"ipam.ranges[0][0].rangeEnd", "10.2.1.0 is outside subnet 10.2.0.0/24"},
		{"rangeEnd other family", `{"ranges":[[{"subnet":"10.2.0.0/24","rangeEnd":"fd00::1"}]]}`,
			"ipam.ranges[0][0].rangeEnd", "fd00::1 is outside subnet 10.2.0.0/24"},
		{"rangeEnd not an address", `{"ranges":[[{"subnet":"10.2.0.0/24","rangeEnd":"10.2.0.300"}]]}`,
			"ipam.ranges[0][0].rangeEnd", `"10.2.0.300" is not a valid IP address`},
		{"start after end", `{"ranges":[[{"subnet":"10.2.0.0/24","rangeStart":"10.2.0.9","rangeEnd":"10.2.0.5"}]]}`,
			"ipam.ranges[0][0].rangeStart", "10.2.0.9 is after rangeEnd 10.2.0.5"},
		{"gateway outside", `{"ranges":[[{"subnet":"10.2.0.0/24","gateway":"10.3.0.1"}]]}`,
			"ipam.ranges[0][0].gateway", "10.3.0.1 is outside subnet 10.2.0.0/24"},
		{"overlap across sets", `{"ranges":[[{"subnet":"10.0.0.0/16"}],[{"subnet":"10.0.1.0/24"}]]}`,
			"ipam.ranges", "subnet 10.0.0.0/16 (ranges[0][0]) overlaps 10.0.1.0/24 (ranges[1][0])"},
		{"overlap within a set", `{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.0.128/25"}]]}`,
			"ipam.ranges", "subnet 10.0.0.0/24 (ranges[0][0]) overlaps 10.0.0.128/25 (ranges[0][1])"},
		{"overlap with legacy subnet", `{"subnet":"10.0.0.0/24","ranges":[[{"subnet":"10.0.0.0/24"}]]}`,
			"ipam.ranges", "subnet 10.0.0.0/24 (subnet) overlaps 10.0.0.0/24 (ranges[0][0])"},
		{"mixed families", `{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}`,
			"ipam.ranges[0]", "mixes IPv4 and IPv6"},
		{"no ranges", `{"type":"podroute-ipam"}`, "ipam.ranges", "no range configured"},
		{"empty ranges", `{"ranges":[]}`, "ipam.ranges", "no range configured"},
		{"empty range set", `{"ranges":[[{"subnet":"10.0.0.0/24"}],[]]}`, "ipam.ranges[1]", "empty range set"},
		{"ipv4-mapped subnet", `{"ranges":[[{"subnet":"::ffff:10.0.0.0/120"}]]}`,
			"ipam.ranges[0][0].subnet", "IPv4-mapped IPv6 prefix"},
		{"ipv4-mapped rangeStart", `{"ranges":[[{"subnet":"fd00::/64","rangeStart":"::ffff:10.0.0.1"}]]}`,
			"ipam.ranges[0][0].rangeStart", "IPv4-mapped IPv6 address"},
		{"zone", `{"ranges":[[{"subnet":"fd00::/64","rangeStart":"fd00::5%eth0"}]]}`,
			"ipam.ranges[0][0].rangeStart", "must not carry a zone"},
		{"host bits", `{"ranges":[[{"subnet":"10.244.1.5/24"}]]}`,
			"ipam.ranges[0][0].subnet", "10.244.1.5/24 has host bits set; the network is 10.244.1.0/24"},
		{"nothing usable after exclusions", `{"ranges":[[{"subnet":"10.0.0.0/30"}]],"exclude":["10.0.0.1","10.0.0.2"]}`,
			"ipam.ranges[0][0]", "no usable address in 10.0.0.0/30"},
		{"nothing usable: gateway is the range", `{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.1","rangeEnd":"10.0.0.1","gateway":"10.0.0.1"}]]}`,
			"ipam.ranges[0][0]", "no usable address"},
		{"nothing usable: ipv6 excluded", `{"ranges":[[{"subnet":"fd00::/64"}]],"exclude":["fd00::/64"]}`,
			"ipam.ranges[0][0]", "no usable address in fd00::/64"},
		{"exclude invalid", `{"ranges":[[{"subnet":"10.0.0.0/24"}]],"exclude":["10.0.0.0/30","nope"]}`,
			"ipam.exclude[1]", `"nope" is not a valid CIDR or IP address`},
		{"exclude host bits", `{"ranges":[[{"subnet":"10.0.0.0/24"}]],"exclude":["10.0.0.5/30"]}`,
			"ipam.exclude[0]", "host bits set"},
		{"exclude ipv4-mapped", `{"ranges":[[{"subnet":"10.0.0.0/24"}]],"exclude":["::ffff:10.0.0.5"]}`,
			"ipam.exclude[0]", "IPv4-mapped"},
		{"legacy bad subnet", `{"subnet":"10.0.0.0/40"}`, "ipam.subnet", `"10.0.0.0/40" is not a valid CIDR`},
		{"legacy start without subnet", `{"rangeStart":"10.0.0.3","ranges":[[{"subnet":"10.0.0.0/24"}]]}`, "ipam.subnet", "missing"},
		{"legacy start outside", `{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.3"}`, "ipam.rangeStart", "10.0.1.3 is outside subnet 10.0.0.0/24"},
		{"relative dataDir", `{"ranges":[[{"subnet":"10.0.0.0/24"}]],"dataDir":"var/lib"}`, "ipam.dataDir", "must be an absolute path"},
		{"route without dst", `{"ranges":[[{"subnet":"10.0.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"},{"gw":"10.0.0.1"}]}`, "ipam.routes[1].dst", "missing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(tc.json))
			if err == nil {
				t.Fatalf("accepted: %+v", cfg)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T %q is not a *FieldError", err, err)
			}
			if fe.Field != tc.field {
				t.Errorf("field = %q, want %q (error %q)", fe.Field, tc.field, err)
			}
			if !strings.HasPrefix(err.Error(), tc.field+": ") || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q, want %q followed by %q", err, tc.field+": ", tc.msg)
			}
		})
	}
}

func TestParseConfigDecodeErrors(t *testing.T) {
	cases := []struct{ name, json, field string }{
		{"subnet not a string", `{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":5}]]}`, "ipam.ranges[0][1].subnet"},
		{"ranges not an array", `{"ranges":{}}`, "ipam.ranges"},
		{"range set not an array", `{"ranges":[{"subnet":"10.0.0.0/24"}]}`, "ipam.ranges[0]"},
		{"exclude entry not a string", `{"ranges":[[{"subnet":"10.0.0.0/24"}]],"exclude":["10.0.0.1",1]}`, "ipam.exclude[1]"},
		{"dataDir not a string", `{"dataDir":3}`, "ipam.dataDir"},
		{"legacy gateway not a string", `{"gateway":[]}`, "ipam.gateway"},
		{"route dst invalid", `{"ranges":[[{"subnet":"10.0.0.0/24"}]],"routes":[{"dst":"bogus"}]}`, "ipam.routes[0]"},
		{"truncated", `{"ranges":`, "ipam"},
		{"not an object", `[]`, "ipam"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.json))
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %T %v is not a *DecodeError", err, err)
			}
			if de.Field != tc.field || !strings.HasPrefix(err.Error(), tc.field+": ") {
				t.Errorf("field %q, error %q; want field %q", de.Field, err, tc.field)
			}
			var fe *FieldError
			if errors.As(err, &fe) {
				t.Errorf("decode failure must not also be a FieldError")
			}
		})
	}
}

func TestParseConfigValid(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{
		"type": "podroute-ipam",
		"ranges": [ [ {"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.10", "rangeEnd": "10.244.1.200", "gateway": "10.244.1.1"} ],
		            [ {"subnet": "fd00:10:244:1::/64"} ] ],
		"exclude": ["10.244.1.0/30", "10.244.1.77", "fd00:10:244:1::5"],
		"dataDir": "/var/lib/cni/podroute/",
		"routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00:10:244:1::1"}],
		"someOtherPluginField": {"ignored": true}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []RangeSet{
		{{Subnet: mustPrefix("10.244.1.0/24"), Start: mustAddr("10.244.1.10"), End: mustAddr("10.244.1.200"), Gateway: mustAddr("10.244.1.1")}},
		{{Subnet: mustPrefix("fd00:10:244:1::/64"), Start: mustAddr("fd00:10:244:1::1"), End: mustAddr("fd00:10:244:1:ffff:ffff:ffff:ffff")}},
	}
	if len(cfg.Ranges) != 2 || len(cfg.Ranges[0]) != 1 || len(cfg.Ranges[1]) != 1 ||
		cfg.Ranges[0][0] != want[0][0] || cfg.Ranges[1][0] != want[1][0] {
		t.Errorf("ranges = %+v, want %+v", cfg.Ranges, want)
	}
	wantEx := []netip.Prefix{mustPrefix("10.244.1.0/30"), mustPrefix("10.244.1.77/32"), mustPrefix("fd00:10:244:1::5/128")}
	if len(cfg.Exclude) != 3 || cfg.Exclude[0] != wantEx[0] || cfg.Exclude[1] != wantEx[1] || cfg.Exclude[2] != wantEx[2] {
		t.Errorf("exclude = %v, want %v", cfg.Exclude, wantEx)
	}
	if cfg.Type != "podroute-ipam" || cfg.DataDir != "/var/lib/cni/podroute" {
		t.Errorf("type %q dataDir %q", cfg.Type, cfg.DataDir)
	}
	if len(cfg.Routes) != 2 || cfg.Routes[0].Dst.String() != "0.0.0.0/0" || cfg.Routes[1].GW.String() != "fd00:10:244:1::1" {
		t.Errorf("routes = %v", cfg.Routes)
	}
}

func TestParseConfigHostLocalLegacy(t *testing.T) {
	// host-local's single-range form, including its own type name.
	cfg, err := ParseConfig([]byte(`{"type":"host-local","subnet":"10.1.2.0/24","gateway":"10.1.2.1",
		"ranges":[[{"subnet":"fd00::/120"}]]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Ranges) != 2 {
		t.Fatalf("ranges = %+v", cfg.Ranges)
	}
	r := cfg.Ranges[0][0]
	if r.Subnet != mustPrefix("10.1.2.0/24") || r.Start != mustAddr("10.1.2.1") || r.End != mustAddr("10.1.2.254") || r.Gateway != mustAddr("10.1.2.1") {
		t.Errorf("legacy range = %+v", r)
	}
	if cfg.Ranges[1][0].End != mustAddr("fd00::ff") {
		t.Errorf("ipv6 default end = %v", cfg.Ranges[1][0].End)
	}
	if cfg.DataDir != DefaultDataDir {
		t.Errorf("dataDir = %q", cfg.DataDir)
	}
}

func TestParseConfigPointToPoint(t *testing.T) {
	cases := []struct{ subnet, start, end string }{
		{"10.0.0.0/31", "10.0.0.0", "10.0.0.1"},
		{"10.0.0.7/32", "10.0.0.7", "10.0.0.7"},
		{"fd00::/127", "fd00::", "fd00::1"},
		{"fd00::1/128", "fd00::1", "fd00::1"},
		{"10.0.0.0/30", "10.0.0.1", "10.0.0.2"},
		{"fd00::/126", "fd00::1", "fd00::3"},
	}
	for _, tc := range cases {
		cfg, err := ParseConfig([]byte(`{"ranges":[[{"subnet":"` + tc.subnet + `"}]]}`))
		if err != nil {
			t.Errorf("%s: %v", tc.subnet, err)
			continue
		}
		r := cfg.Ranges[0][0]
		if r.Start != mustAddr(tc.start) || r.End != mustAddr(tc.end) {
			t.Errorf("%s: start %v end %v, want %s %s", tc.subnet, r.Start, r.End, tc.start, tc.end)
		}
	}
}

func TestLoadNetConf(t *testing.T) {
	name, cfg, err := LoadNetConf([]byte(`{"cniVersion":"1.1.0","name":"pods","type":"podroute",
		"ipam":{"type":"podroute-ipam","ranges":[[{"subnet":"10.9.0.0/24"}]]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if name != "pods" || cfg.Ranges[0][0].Subnet != mustPrefix("10.9.0.0/24") {
		t.Errorf("got %q %+v", name, cfg)
	}

	errCases := []struct {
		json, field string
		decode      bool
	}{
		{`{"name":"pods"}`, "ipam", false},
		{`{"name":"pods","ipam":null}`, "ipam", false},
		{`{"ipam":{"ranges":[[{"subnet":"10.9.0.0/24"}]]}}`, "name", false},
		{`{"name":"../etc","ipam":{"ranges":[[{"subnet":"10.9.0.0/24"}]]}}`, "name", false},
		{`{"name":5}`, "name", true},
		{`{"name":"pods","ipam":{"ranges":[[{"subnet":true}]]}}`, "ipam.ranges[0][0].subnet", true},
		{`{"name":"pods","ipam":{"ranges":[[{"subnet":"10.9.0.0/24","gateway":"10.8.0.1"}]]}}`, "ipam.ranges[0][0].gateway", false},
		{`not json`, "(network config)", true},
	}
	for _, tc := range errCases {
		_, _, err := LoadNetConf([]byte(tc.json))
		var fe *FieldError
		var de *DecodeError
		switch {
		case tc.decode && errors.As(err, &de):
			if de.Field != tc.field {
				t.Errorf("%s: field %q, want %q", tc.json, de.Field, tc.field)
			}
		case !tc.decode && errors.As(err, &fe):
			if fe.Field != tc.field {
				t.Errorf("%s: field %q, want %q", tc.json, fe.Field, tc.field)
			}
		default:
			t.Errorf("%s: error %T %v, want decode=%v on %s", tc.json, err, err, tc.decode, tc.field)
		}
	}
}

func TestOpenValidatesHandBuiltConfig(t *testing.T) {
	dir := t.TempDir()
	a, err := Open(&Config{DataDir: dir, Ranges: []RangeSet{{{Subnet: mustPrefix("10.5.0.0/30")}}}}, "net")
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.Allocate(Attachment{"c1", "eth0"})
	if err != nil || len(got.IPs) != 1 || got.IPs[0] != mustPrefix("10.5.0.1/30") {
		t.Fatalf("allocate = %v, %v", got, err)
	}

	_, err = Open(&Config{DataDir: dir, Ranges: []RangeSet{{{Subnet: mustPrefix("10.5.0.0/30"), Start: mustAddr("10.6.0.1")}}}}, "net")
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "ipam.ranges[0][0].rangeStart" {
		t.Errorf("Open with bad rangeStart: %v", err)
	}
	_, err = Open(&Config{DataDir: dir}, "net")
	if !errors.As(err, &fe) || fe.Field != "ipam.ranges" {
		t.Errorf("Open without ranges: %v", err)
	}
	_, err = Open(&Config{DataDir: dir, Ranges: []RangeSet{{{Subnet: mustPrefix("10.5.0.0/30")}}}}, "a/b")
	if !errors.As(err, &fe) || fe.Field != "name" {
		t.Errorf("Open with bad network name: %v", err)
	}
}
