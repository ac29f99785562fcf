package cni_test

import (
	"testing"
	"time"

	"github.com/podroute/podroute/test/cniutil"
)

// TestHarnessWithPtp runs the harness itself (node and pod namespaces, libcni in the node
// namespace, ping and TCP probes) against the reference ptp + host-local plugins, so that a
// failure in the podroute tests can be told apart from a broken harness.
func TestHarnessWithPtp(t *testing.T) {
	cniutil.RequireRefPlugins(t, "ptp", "host-local")
	t.Parallel()
	node := cniutil.NewNode(t)
	list := cniutil.MustList(t, cniutil.Net{DataDir: t.TempDir(), Ranges: [][]cniutil.Range{cniutil.V4, cniutil.V6}}.Ptp())

	a, b := node.NewPod(t), node.NewPod(t)
	resA := node.MustAddPod(t, list, a)
	resB := node.MustAddPod(t, list, b)
	if len(resA.IPs) != 2 || len(resB.IPs) != 2 {
		t.Fatalf("want one v4 and one v6 address per pod, got %v and %v", resA.IPs, resB.IPs)
	}
	for i := range resB.IPs {
		dst := resB.IPs[i].Address.IP
		// ptp gives its host veths a global address that goes through DAD first.
		if err := cniutil.Ping(node.NS, dst, 5*time.Second); err != nil {
			t.Errorf("node -> pod: %v", err)
		}
		if err := cniutil.Ping(a.NS, dst, 5*time.Second); err != nil {
			t.Errorf("pod -> pod: %v", err)
		}
		if err := cniutil.TCPExchange(a.NS, b.NS, dst, 2*time.Second); err != nil {
			t.Errorf("pod -> pod: %v", err)
		}
	}
	for _, p := range []*cniutil.Pod{a, b} {
		if err := node.DelPod(t.Context(), list, p); err != nil {
			t.Errorf("DEL: %v", err)
		}
	}
	if links, err := cniutil.LinkNames(node.NS, "veth"); err != nil || len(links) != 0 {
		t.Errorf("host veths left after DEL: %v %v", links, err)
	}
}
