package cni

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// TestStatusChainedPlugins: STATUS passes when every chained plugin is an executable in
// CNI_PATH, looked up the way the runtime does (first file of that name wins), and fails with
// code 50 naming each one that is not.
func TestStatusChainedPlugins(t *testing.T) {
	dataDir := t.TempDir()
	conf := func(chained ...string) []byte {
		c := `{"cniVersion":"1.1.0","name":"podnet","type":"podroute",` +
			`"ipam":{"type":"podroute-ipam","ranges":[[{"subnet":"10.244.1.0/24"}]],"dataDir":"` + dataDir + `"}`
		if chained != nil {
			c += `,"chainedPlugins":["` + strings.Join(chained, `","`) + `"]`
		}
		return []byte(c + "}")
	}
	bin, other := t.TempDir(), t.TempDir()
	write := func(dir, name string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(bin, "portmap", 0o755)
	write(bin, "bandwidth", 0o644)
	write(other, "tuning", 0o755)
	if err := os.Symlink("portmap", filepath.Join(other, "linked")); err != nil {
		t.Fatal(err)
	}
	write(other, "portmap", 0o755) // shadowed by bin's
	if err := os.Mkdir(filepath.Join(bin, "firewall"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(other, "firewall", 0o755) // a directory in bin is skipped, as libcni skips it
	if err := os.Symlink("missing", filepath.Join(bin, "dangling")); err != nil {
		t.Fatal(err)
	}
	path := bin + ":" + other

	for _, tc := range []struct {
		name    string
		chained []string
		path    string
		want    []string // nil: STATUS passes; else code 50 with all of these in the message
	}{
		{"none", nil, path, nil},
		{"installed", []string{"portmap"}, path, nil},
		{"second directory", []string{"portmap", "tuning", "firewall"}, path, nil},
		{"symlink", []string{"linked"}, path, nil},
		{"missing", []string{"portmap", "bandwidth2"}, path, []string{`chained plugin "bandwidth2": not installed: not found in CNI_PATH ` + path}},
		{"not executable", []string{"bandwidth"}, path, []string{`"bandwidth"`, filepath.Join(bin, "bandwidth") + " is not executable"}},
		{"dangling symlink", []string{"dangling"}, path, []string{`"dangling": not installed`}},
		{"every one named", []string{"nope1", "portmap", "nope2"}, path, []string{`"nope1": not installed`, `"nope2": not installed`}},
		{"empty CNI_PATH", []string{"portmap"}, "", []string{`"portmap": not installed: CNI_PATH is empty`}},
		{"wrong directory", []string{"portmap"}, t.TempDir(), []string{`"portmap": not installed`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := cmdStatus(&skel.CmdArgs{StdinData: conf(tc.chained...), Path: tc.path})
			if tc.want == nil {
				if err != nil {
					t.Fatalf("STATUS: %v", err)
				}
				return
			}
			var te *types.Error
			if !errors.As(err, &te) || te.Code != 50 {
				t.Fatalf("STATUS: %v (%T), want CNI error code 50", err, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(te.Msg, w) {
					t.Errorf("message %q does not say %q", te.Msg, w)
				}
			}
		})
	}
}
