package egress

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and nftables")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs the nft binary (Debian package nftables)")
	}
}

func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close(); _ = testutils.UnmountNS(n) })
	return n
}

// in runs f in netns; nft processes started from f inherit the namespace, since ns.Do
// locks the goroutine to a thread switched into it.
func in(t *testing.T, netns ns.NetNS, f func() error) {
	t.Helper()
	if err := netns.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

func nft(t *testing.T, netns ns.NetNS, stdin string, args ...string) string {
	t.Helper()
	var out string
	in(t, netns, func() error {
		cmd := exec.Command("nft", args...)
		if stdin != "" {
			cmd.Stdin = strings.NewReader(stdin)
		}
		b, err := cmd.CombinedOutput()
		out = string(b)
		if err != nil {
			t.Fatalf("nft %v: %v\n%s", args, err, b)
		}
		return nil
	})
	return out
}

func hasTable(t *testing.T, netns ns.NetNS) bool {
	return strings.Contains(nft(t, netns, "", "list", "tables"), "table inet podroute")
}

func newMasq(t *testing.T, netns ns.NetNS) *Masquerade {
	t.Helper()
	var m *Masquerade
	in(t, netns, func() error {
		var err error
		m, err = New(slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
		return err
	})
	return m
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func syncCfg(t *testing.T, netns ns.NetNS, m *Masquerade, cfg Config) {
	t.Helper()
	in(t, netns, func() error { return m.Sync(context.Background(), cfg) })
}

func pfx(ss ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range ss {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}

var dualStack = Config{
	PodCIDRs:     pfx("10.244.1.0/24", "fd00:10:244:1::/64"),
	ClusterCIDRs: pfx("10.244.0.0/16", "fd00:10:244::/56"),
	Enabled:      true,
}

// elements returns the elements of each of podroute's sets.
func elements(t *testing.T, netns ns.NetNS, m *Masquerade) map[string][]string {
	t.Helper()
	got := map[string][]string{}
	in(t, netns, func() error {
		for _, s := range []string{podSet4, clusterSet4, podSet6, clusterSet6} {
			els, err := m.nft.ListElements(context.Background(), "set", s)
			if err != nil {
				return err
			}
			got[s] = []string{}
			for _, e := range els {
				got[s] = append(got[s], strings.Join(e.Key, " "))
			}
			slices.Sort(got[s])
		}
		return nil
	})
	return got
}

func TestSyncRuleset(t *testing.T) {
	needRoot(t)
	netns := newNS(t)
	m := newMasq(t, netns)
	syncCfg(t, netns, m, dualStack)

	table := nft(t, netns, "", "list", "table", "inet", "podroute")
	t.Logf("nft list table inet podroute:\n%s", table)
	flat := strings.Join(strings.Fields(table), " ")
	for _, want := range []string{
		"type nat hook postrouting priority srcnat; policy accept;",
		`ip saddr @podcidrs_v4 ip daddr != @clustercidrs_v4 masquerade comment "podroute: masquerade pod egress"`,
		`ip6 saddr @podcidrs_v6 ip6 daddr != @clustercidrs_v6 masquerade comment "podroute: masquerade pod egress"`,
		"set podcidrs_v4 { type ipv4_addr flags interval elements = { 10.244.1.0/24 } }",
		"set clustercidrs_v4 { type ipv4_addr flags interval elements = { 10.244.0.0/16 } }",
		"set podcidrs_v6 { type ipv6_addr flags interval elements = { fd00:10:244:1::/64 } }",
		"set clustercidrs_v6 { type ipv6_addr flags interval elements = { fd00:10:244::/56 } }",
	} {
		if !strings.Contains(flat, want) {
			t.Errorf("ruleset lacks %q", want)
		}
	}
	in(t, netns, func() error {
		rules, err := m.nft.ListRules(context.Background(), ChainName)
		if err != nil {
			return err
		}
		if len(rules) != 2 {
			t.Errorf("%d rules, want 2", len(rules))
		}
		chains, err := m.nft.List(context.Background(), "chain")
		if err != nil {
			return err
		}
		if !slices.Equal(chains, []string{ChainName}) {
			t.Errorf("chains %v", chains)
		}
		return nil
	})

	// Syncing the same config again changes nothing.
	syncCfg(t, netns, m, dualStack)
	if again := nft(t, netns, "", "list", "table", "inet", "podroute"); again != table {
		t.Errorf("second Sync changed the table:\n%s", again)
	}
}

func TestSyncUpdatesSets(t *testing.T) {
	needRoot(t)
	netns := newNS(t)
	m := newMasq(t, netns)
	syncCfg(t, netns, m, Config{PodCIDRs: pfx("10.244.1.0/24"), ClusterCIDRs: pfx("10.244.0.0/16"), Enabled: true})
	want := map[string][]string{
		podSet4: {"10.244.1.0/24"}, clusterSet4: {"10.244.0.0/16"}, podSet6: {}, clusterSet6: {},
	}
	if got := elements(t, netns, m); !equalSets(got, want) {
		t.Errorf("sets %v, want %v", got, want)
	}

	// New CIDRs: the node's CIDR outside the cluster CIDRs is still pod-to-pod; overlapping
	// and covered prefixes collapse.
	syncCfg(t, netns, m, Config{
		PodCIDRs:     pfx("10.250.7.0/24", "10.244.3.0/24", "fd00:10:244:3::/64"),
		ClusterCIDRs: pfx("10.244.0.0/16", "10.244.128.0/17", "fd00:10:244::/56", "fd00:10:244::/48"),
		Enabled:      true,
	})
	want = map[string][]string{
		podSet4:     {"10.244.3.0/24", "10.250.7.0/24"},
		clusterSet4: {"10.244.0.0/16", "10.250.7.0/24"},
		podSet6:     {"fd00:10:244:3::/64"},
		clusterSet6: {"fd00:10:244::/48"},
	}
	if got := elements(t, netns, m); !equalSets(got, want) {
		t.Errorf("sets %v, want %v", got, want)
	}
	in(t, netns, func() error {
		rules, err := m.nft.ListRules(context.Background(), ChainName)
		if err == nil && len(rules) != 2 {
			t.Errorf("%d rules after update, want 2", len(rules))
		}
		return err
	})
}

func equalSets(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func TestDisableAndRemove(t *testing.T) {
	needRoot(t)
	netns := newNS(t)
	other := `table ip other {
	chain out {
		type filter hook output priority filter; policy accept;
		ip daddr 198.51.100.1 counter packets 0 bytes 0 comment "operator rule"
	}
}
`
	nft(t, netns, other, "-f", "-")
	before := nft(t, netns, "", "list", "table", "ip", "other")

	m := newMasq(t, netns)
	// Disabling or removing what is not there is fine.
	syncCfg(t, netns, m, Config{})
	in(t, netns, func() error { return m.Remove(context.Background()) })

	syncCfg(t, netns, m, dualStack)
	if !hasTable(t, netns) {
		t.Fatal("no table after Sync")
	}
	syncCfg(t, netns, m, Config{PodCIDRs: dualStack.PodCIDRs, ClusterCIDRs: dualStack.ClusterCIDRs, Enabled: false})
	if hasTable(t, netns) {
		t.Fatal("table left after Enabled=false")
	}
	syncCfg(t, netns, m, dualStack)
	in(t, netns, func() error { return m.Remove(context.Background()) })
	if hasTable(t, netns) {
		t.Fatal("table left after Remove")
	}
	if after := nft(t, netns, "", "list", "table", "ip", "other"); after != before {
		t.Errorf("unrelated table changed:\n%s\nwas:\n%s", after, before)
	}
}

func TestSyncValidation(t *testing.T) {
	needRoot(t)
	netns := newNS(t)
	m := newMasq(t, netns)
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Enabled: true, ClusterCIDRs: pfx("10.244.0.0/16")}, "no pod CIDR"},
		{Config{Enabled: true, PodCIDRs: pfx("10.244.1.1/24")}, "PodCIDRs: 10.244.1.1/24 has host bits set"},
		{Config{Enabled: true, PodCIDRs: pfx("10.244.1.0/24"), ClusterCIDRs: []netip.Prefix{{}}}, "ClusterCIDRs: invalid prefix"},
	} {
		var err error
		in(t, netns, func() error { err = m.Sync(context.Background(), tc.cfg); return nil })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Sync(%+v): %v, want %q", tc.cfg, err, tc.want)
		}
	}
	if hasTable(t, netns) {
		t.Error("a rejected config left a table")
	}
}

func TestNewWithoutNFT(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := New(nil)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("nftables package")) {
		t.Fatalf("New without nft: %v", err)
	}
}
