package policy

import (
	"context"
	"reflect"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
)

func TestParseDrops(t *testing.T) {
	out := []byte(`{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
 {"table": {"family": "inet", "name": "podroute-policy", "handle": 1}},
 {"rule": {"family": "inet", "table": "podroute-policy", "chain": "ingress-abc", "handle": 4, "comment": "a/b ingress[0]",
   "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@pods4-x"}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "podroute-policy", "chain": "ingress-abc", "handle": 5, "comment": "podroute-policy: not allowed by any policy",
   "expr": [{"counter": {"packets": 7, "bytes": 420}}, {"drop": null}]}},
 {"rule": {"family": "inet", "table": "podroute-policy", "chain": "egress-def", "handle": 6, "comment": "podroute-policy: not allowed by any policy",
   "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
 {"rule": {"family": "inet", "table": "podroute-policy", "chain": "hold", "handle": 7, "comment": "podroute-policy: pod interface not judged yet",
   "expr": [{"counter": {"packets": 2, "bytes": 120}}, {"drop": null}]}},
 {"rule": {"family": "inet", "table": "podroute-policy", "chain": "forward", "handle": 8, "comment": "counted elsewhere",
   "expr": [{"counter": {"packets": 99, "bytes": 0}}, {"accept": null}]}}]}`)
	got, err := parseDrops(out)
	if err != nil {
		t.Fatal(err)
	}
	want := Drops{"ingress-abc": 7, "egress-def": 0, "hold": 2}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, err := parseDrops([]byte("Error: not json")); err == nil {
		t.Error("garbage parsed")
	}
}

// TestDropCounters: a packet the policies drop, or a held pod's, is counted where ReadDrops
// reads it, on the chain ChainPolicies attributes to the policy.
func TestDropCounters(t *testing.T) {
	node := routingNode(t)
	read := func() Drops {
		t.Helper()
		var d Drops
		do(t, node, func() error {
			var err error
			d, err = ReadDrops(context.Background())
			return err
		})
		return d
	}
	if d := read(); len(d) != 0 {
		t.Fatalf("no table, yet drops %v", d)
	}

	a := wirePod(t, node, 1, "pra000000000001")
	b := wirePod(t, node, 2, "prb000000000002")
	held := wirePod(t, node, 3, "prc000000000003") // never judged
	serve(t, b.ns, nil, []int{5353})
	in := &Input{
		Policies: []*networkingv1.NetworkPolicy{policy("default", "deny", map[string]string{"app": "server"})},
		Local: []LocalPod{
			{HostVeth: a.veth, Pod: Pod{Namespace: "default", Name: "a", Labels: map[string]string{"app": "client"}, IPs: addrs(a.v4.String(), a.v6.String())}},
			{HostVeth: b.veth, Pod: Pod{Namespace: "default", Name: "b", Labels: map[string]string{"app": "server"}, IPs: addrs(b.v4.String(), b.v6.String())}},
		},
	}
	rs := Compile(in)
	do(t, node, func() error {
		r, err := New(testLog(t))
		if err != nil {
			return err
		}
		_, err = r.Sync(context.Background(), rs)
		return err
	})
	chain := rs.Ingress[b.veth]
	if got := ChainPolicies(in, rs)[chain]; !reflect.DeepEqual(got, []string{"default/deny"}) {
		t.Fatalf("chain %s serves %v", chain, got)
	}
	before := read()
	if n, ok := before[chain]; !ok || n != 0 {
		t.Fatalf("before any traffic: %v", before)
	}

	// One UDP datagram each: the denied one is dropped once, and nothing else is.
	if exchange(a.ns, "udp", b.v4, 5353, 300*time.Millisecond) {
		t.Fatal("a reached b through a default deny")
	}
	if exchange(a.ns, "udp", b.v6, 5353, 300*time.Millisecond) {
		t.Fatal("a reached b through a default deny (IPv6)")
	}
	if exchange(held.ns, "udp", a.v4, 5353, 300*time.Millisecond) {
		t.Fatal("a held pod got through")
	}
	after := read()
	if after[chain] != 2 {
		t.Errorf("%s dropped %d packets, want 2 (all %v)", chain, after[chain], after)
	}
	if after[HoldChain] != 1 {
		t.Errorf("hold dropped %d packets, want 1 (all %v)", after[HoldChain], after)
	}
}
