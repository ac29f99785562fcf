package tor_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/test/lab"
)

// TestBFD: BFD runs where it is asked for, at the defaults (300ms x 3): between the two
// nodes' speakers (BGPConfiguration spec.meshBFD) and with FRR's bfdd on the ToR (BGPPeer
// spec.bfd), and podroutectl shows it up. A BGPPeer whose spec.bfd podroute refuses keeps
// its session, without BFD, and its Valid condition names the field.
//
//	      [tor AS 65101, bfdd]
//	             │ fabric
//	═══════ 192.0.2.0/24 ═══════
//	     │                 │
//	  node-1  ─── mesh ─── node-2
func TestBFD(t *testing.T) {
	l := lab.New(t, lab.Options{})
	c := lab.InstallCRDs(t, l)
	fab := l.DefaultSegment()
	tor := l.AddRouter(t, "tor", lab.RouterOptions{ASN: 65101, Segments: []*lab.Segment{fab}, BFD: true})
	torAddr := tor.Addr4(fab)
	c.Configuration(config.BGPConfigurationSpec{NodeToNodeMesh: ptr(true), MeshBFD: &config.BFDSpec{}})
	c.Peer("tor", config.BGPPeerSpec{PeerAddress: torAddr.String(), PeerASN: 65101, BFD: &config.BFDSpec{}})
	var nodes []*lab.Node
	for i := 1; i <= 2; i++ {
		n := l.AddNode(t, fmt.Sprintf("node-%d", i), lab.NodeOptions{Index: i})
		if err := tor.AddNeighbor(lab.Neighbor{Address: n.IPv4, ASN: config.DefaultASN, Description: n.Name, BFD: true}); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}

	for i, n := range nodes {
		want := map[string]string{torAddr.String(): "up", nodes[1-i].IPv4.String(): "up"}
		lab.Eventually(t, converge, n.Name+": BGP established and BFD up with the ToR and the other node", func() error {
			return bfdStates(n, want)
		})
	}
	lab.Eventually(t, converge, "tor: bfdd's sessions with both nodes up", func() error {
		peers, err := tor.BFDPeers()
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if s := peers[n.IPv4.String()]; s != "up" {
				return fmt.Errorf("bfdd: %s is %q (%v)", n.IPv4, s, peers)
			}
		}
		return nil
	})
	out, _ := nodes[0].Ctl("bgp", "neighbors")
	if !strings.Contains(string(out), "BFD") {
		t.Errorf("podroutectl bgp neighbors has no BFD column:\n%s", out)
	}
	bfd, _ := tor.Vtysh("show bfd peers brief")
	t.Logf("node-1: podroutectl bgp neighbors:\n%s\nFRR:\n%s", out, bfd)

	// Below podroute's floor: BFD goes, the session stays (or comes back) and the peer's
	// status says why.
	c.PatchPeer("tor", map[string]any{"bfd": map[string]any{"minTx": "10ms"}})
	for i, n := range nodes {
		want := map[string]string{torAddr.String(): "", nodes[1-i].IPv4.String(): "up"}
		lab.Eventually(t, converge, n.Name+": ToR session without BFD", func() error { return bfdStates(n, want) })
	}
	lab.Eventually(t, converge, "BGPPeer tor: Valid=False naming spec.bfd.minTx, Accepted=True", func() error {
		conds, err := c.PeerConditions("tor")
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, cd := range conds {
			got[cd.Type] = string(cd.Status) + " " + cd.Message
		}
		if v := got[config.ConditionValid]; !strings.HasPrefix(v, "False ") || !strings.Contains(v, "spec.bfd.minTx") || !strings.Contains(v, "without BFD") {
			return fmt.Errorf("Valid: %q", v)
		}
		if a := got[config.ConditionAccepted]; !strings.HasPrefix(a, "True ") {
			return fmt.Errorf("Accepted: %q", a)
		}
		return nil
	})
}

// bfdStates checks that n's sessions with the peers of want are established, each with the
// BFD state wanted ("" for none).
func bfdStates(n *lab.Node, want map[string]string) error {
	ns, err := n.Neighbors()
	if err != nil {
		return err
	}
	got := map[string]string{}
	for _, p := range ns {
		if _, ok := want[p.Address]; ok && p.State == "established" {
			got[p.Address] = p.BFD
		}
	}
	for a, w := range want {
		if s, ok := got[a]; !ok || s != w {
			return fmt.Errorf("%s: with %s: established %v, BFD %q, want %q (%+v)", n.Name, a, ok, s, w, ns)
		}
	}
	return nil
}
