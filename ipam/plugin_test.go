package ipam

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

func netConf(version, dataDir, ipamBody string) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion":%q,"name":"pods","type":"bridge",
		"ipam":{"type":"podroute-ipam","dataDir":%q,%s}}`, version, dataDir, ipamBody))
}

func cniCode(t *testing.T, err error) uint {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %T %v is not a *types.Error", err, err)
	}
	return te.Code
}

func TestCmdAddDelCheck(t *testing.T) {
	dir := t.TempDir()
	stdin := netConf("1.0.0", dir, `"ranges":[[{"subnet":"10.244.1.0/24","gateway":"10.244.1.1"}],[{"subnet":"fd00:10:244:1::/64"}]],
		"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]`)
	args := &skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: stdin}

	var out bytes.Buffer
	if err := cmdAdd(args, &out); err != nil {
		t.Fatal(err)
	}
	var res struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Address, Gateway string
		} `json:"ips"`
		Routes []struct{ Dst string } `json:"routes"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("result %s: %v", out.String(), err)
	}
	if res.CNIVersion != "1.0.0" || len(res.IPs) != 2 ||
		res.IPs[0].Address != "10.244.1.2/24" || res.IPs[0].Gateway != "10.244.1.1" ||
		res.IPs[1].Address != "fd00:10:244:1::1/64" || res.IPs[1].Gateway != "" ||
		len(res.Routes) != 2 || res.Routes[0].Dst != "0.0.0.0/0" {
		t.Errorf("result = %s", out.String())
	}

	if err := CmdCheck(args); err != nil {
		t.Errorf("CHECK after ADD: %v", err)
	}
	if err := CmdDel(args); err != nil {
		t.Errorf("DEL: %v", err)
	}
	if err := CmdDel(args); err != nil {
		t.Errorf("second DEL: %v", err)
	}
	if code := cniCode(t, CmdCheck(args)); code != types.ErrUnknownContainer {
		t.Errorf("CHECK after DEL: code %d", code)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "pods"))
	for _, e := range entries {
		if strings.Contains(e.Name(), ":") || strings.HasPrefix(e.Name(), "10.") {
			t.Errorf("reservation %s left after DEL", e.Name())
		}
	}
}

func TestCmdAddOlderResultVersion(t *testing.T) {
	stdin := netConf("0.4.0", t.TempDir(), `"subnet":"10.9.0.0/24","gateway":"10.9.0.1"`) // host-local legacy form
	var out bytes.Buffer
	if err := cmdAdd(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: stdin}, &out); err != nil {
		t.Fatal(err)
	}
	var res struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct{ Version, Address, Gateway string }
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatal(err)
	}
	if res.CNIVersion != "0.4.0" || len(res.IPs) != 1 || res.IPs[0].Version != "4" || res.IPs[0].Address != "10.9.0.2/24" {
		t.Errorf("result = %s", out.String())
	}
}

func TestCmdCheckPartial(t *testing.T) {
	dir := t.TempDir()
	stdin := netConf("1.0.0", dir, `"ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00::/64"}]]`)
	// An attachment holding only an IPv4 address (an interrupted ADD).
	if err := os.MkdirAll(filepath.Join(dir, "pods"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("c1/eth0", filepath.Join(dir, "pods", "10.244.1.9")); err != nil {
		t.Fatal(err)
	}
	err := CmdCheck(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: stdin})
	if code := cniCode(t, err); code != types.ErrUnknownContainer || !strings.Contains(err.Error(), "ipam.ranges[1]") {
		t.Errorf("CHECK of a partial allocation: %v", err)
	}
}

func TestCmdGC(t *testing.T) {
	dir := t.TempDir()
	body := `"ranges":[[{"subnet":"10.244.1.0/24"}]]`
	for _, id := range []string{"keep", "drop1", "drop2"} {
		if err := cmdAdd(&skel.CmdArgs{ContainerID: id, IfName: "eth0", StdinData: netConf("1.1.0", dir, body)}, &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
	}
	var conf map[string]any
	if err := json.Unmarshal(netConf("1.1.0", dir, body), &conf); err != nil {
		t.Fatal(err)
	}
	conf["cni.dev/valid-attachments"] = []map[string]string{{"containerID": "keep", "ifname": "eth0"}}
	stdin, _ := json.Marshal(conf)
	if err := CmdGC(&skel.CmdArgs{StdinData: stdin}); err != nil {
		t.Fatal(err)
	}
	_, cfg, err := LoadNetConf(stdin)
	if err != nil {
		t.Fatal(err)
	}
	a, err := Open(cfg, "pods")
	if err != nil {
		t.Fatal(err)
	}
	list, err := a.List()
	if err != nil || len(list) != 1 || list[0].ContainerID != "keep" {
		t.Errorf("after GC: %v (%v)", list, err)
	}
}

func TestCmdStatus(t *testing.T) {
	dir := t.TempDir()
	if err := CmdStatus(&skel.CmdArgs{StdinData: netConf("1.1.0", dir, `"ranges":[[{"subnet":"10.244.1.0/24"}]]`)}); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := CmdStatus(&skel.CmdArgs{StdinData: netConf("1.1.0", file, `"ranges":[[{"subnet":"10.244.1.0/24"}]]`)})
	if code := cniCode(t, err); code != ErrCodeNotAvailable {
		t.Errorf("STATUS with an unusable dataDir: code %d (%v)", code, err)
	}
	err = CmdStatus(&skel.CmdArgs{StdinData: netConf("1.1.0", dir, `"ranges":[]`)})
	if code := cniCode(t, err); code != types.ErrInvalidNetworkConfig {
		t.Errorf("STATUS without ranges: code %d (%v)", code, err)
	}
}

func TestCmdErrorCodes(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	add := func(stdin []byte) error {
		return cmdAdd(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: stdin}, &bytes.Buffer{})
	}
	cases := []struct {
		name string
		err  error
		code uint
		msg  string
	}{
		{"decode", add([]byte(`{"name":"pods","ipam":{"ranges":[[{"subnet":1}]]}}`)), types.ErrDecodingFailure, "ipam.ranges[0][0].subnet"},
		{"syntax", add([]byte(`{`)), types.ErrDecodingFailure, "invalid JSON"},
		{"invalid", add(netConf("1.0.0", dir, `"ranges":[[{"subnet":"10.0.0.0/33"}]]`)), types.ErrInvalidNetworkConfig, `ipam.ranges[0][0].subnet: "10.0.0.0/33" is not a valid CIDR`},
		{"io", add(netConf("1.0.0", file, `"ranges":[[{"subnet":"10.0.0.0/24"}]]`)), types.ErrIOFailure, "create store"},
		{"busy", cniError(fmt.Errorf("allocate: %w", ErrBusy)), types.ErrTryAgainLater, "busy"},
		{"attachment", cniError(Attachment{}.validate()), types.ErrInvalidEnvironmentVariables, "container ID"},
	}
	for _, tc := range cases {
		if code := cniCode(t, tc.err); code != tc.code || !strings.Contains(tc.err.Error(), tc.msg) {
			t.Errorf("%s: code %d %q, want %d containing %q", tc.name, code, tc.err, tc.code, tc.msg)
		}
	}

	full := netConf("1.0.0", dir, `"ranges":[[{"subnet":"10.0.0.0/30"}]]`)
	for _, id := range []string{"a", "b"} {
		if err := cmdAdd(&skel.CmdArgs{ContainerID: id, IfName: "eth0", StdinData: full}, &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
	}
	err := cmdAdd(&skel.CmdArgs{ContainerID: "c", IfName: "eth0", StdinData: full}, &bytes.Buffer{})
	if code := cniCode(t, err); code != ErrCodeExhausted || !strings.Contains(err.Error(), "no free address in ipam.ranges[0] (10.0.0.0/30)") {
		t.Errorf("exhausted: code %d %v", code, err)
	}
	if cniError(nil) != nil {
		t.Error("cniError(nil) != nil")
	}
}

func TestCmdAddUnprintableVersionReleases(t *testing.T) {
	dir := t.TempDir()
	// skel rejects unknown versions first; this exercises the cleanup path.
	stdin := netConf("9.9.9", dir, `"ranges":[[{"subnet":"10.1.0.0/24"}]]`)
	err := cmdAdd(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: stdin}, &bytes.Buffer{})
	if code := cniCode(t, err); code != types.ErrIncompatibleCNIVersion {
		t.Errorf("ADD with an unprintable version: code %d (%v)", code, err)
	}
	_, cfg, _ := LoadNetConf(stdin)
	a, err := Open(cfg, "pods")
	if err != nil {
		t.Fatal(err)
	}
	if list, _ := a.List(); len(list) != 0 {
		t.Errorf("failed ADD kept %v", list)
	}
}
