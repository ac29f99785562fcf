package policy

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"
)

// With LogDrops every drop rule, the hold's too, is preceded by a rate-limited log rule;
// without it there is none, and the chains are not the same ones.
func TestCompileLogDrops(t *testing.T) {
	plain := Compile(fixture(basePolicies()...))
	in := fixture(basePolicies()...)
	in.LogDrops = true
	logged := Compile(in)
	for name, c := range logged.Chains {
		n := len(c.Rules)
		if n < 2 || c.Rules[n-2].Comment != logComment || !strings.Contains(c.Rules[n-2].Rule, "limit rate 10/second") ||
			!strings.Contains(c.Rules[n-2].Rule, `log prefix "podroute-policy `) || c.Rules[n-1].Rule != "counter drop" {
			t.Errorf("chain %s: %+v, want a rate-limited log rule before the drop", name, c.Rules)
		}
		if _, same := plain.Chains[name]; same && name != HoldChain {
			t.Errorf("chain %s has the same name with and without the log rule", name)
		}
	}
	for name, c := range plain.Chains {
		for _, r := range c.Rules {
			if r.Comment == logComment {
				t.Errorf("chain %s logs without LogDrops", name)
			}
		}
	}
}

// The kernel takes the log rules, an agent that restarts finds them as it left them, and the
// drop counters are still read.
func TestLogDropsInKernel(t *testing.T) {
	node := routingNode(t)
	in := fixture(basePolicies()...)
	in.LogDrops = true
	rs := Compile(in)
	do(t, node, func() error {
		nft, err := knftables.New(knftables.InetFamily, TableName)
		if err != nil {
			return err
		}
		ctx := context.Background()
		if _, err := NewReconciler(nft, testLog(t)).Sync(ctx, rs); err != nil {
			return err
		}
		out, err := exec.Command("nft", "list", "table", "inet", TableName).CombinedOutput()
		if err != nil {
			t.Fatalf("nft list: %v: %s", err, out)
		}
		for _, want := range []string{`log prefix "podroute-policy drop ingress: "`, `log prefix "podroute-policy hold: "`, "limit rate 10/second burst 20 packets"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("the table lacks %s:\n%s", want, out)
			}
		}
		ch, err := NewReconciler(nft, testLog(t)).Sync(ctx, rs)
		if err != nil {
			return err
		}
		if !ch.Empty() {
			t.Errorf("a restarted agent changed %v", ch)
		}
		drops, err := ReadDrops(ctx)
		if err != nil {
			return err
		}
		if _, ok := drops[HoldChain]; !ok {
			t.Errorf("drop counters %v: the hold chain's is not read", drops)
		}
		return nil
	})
}
