package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/test/cluster"
	"github.com/podroute/podroute/test/lab"
)

const (
	// torASN is the top-of-rack router's own AS; the cluster's is BGPConfiguration's.
	torASN = 65000
	// converge bounds how long a change may take to reach the ToR's RIB.
	converge = 60 * time.Second
)

// TestLoadBalancer is the rack seen from outside: an FRR top-of-rack router on the nodes'
// segment, eBGP to every node (a BGPPeer on the cluster's side), and a client behind the
// ToR on a link of its own, which is no node and learns nothing by BGP.
//
//	client (198.19.L.2) ── link ── [tor AS 65000, 192.0.2.1]
//	                                       │ fabric segment 192.0.2.0/24
//	            ┌──────────────┬───────────┴──┬──────────────┐
//	      control-plane     worker-1      worker-2      worker-3     AS 64512 (mesh among them)
//
// The nodes route the client's subnet through the ToR, as a rack's servers whose default
// route is the ToR would.
func TestLoadBalancer(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	u := &user{t: t, c: c, ns: "podroute-lb"}
	u.kubectl("create", "namespace", u.ns)
	rk := newRack(t, c)

	t.Run("ToRLearnsPodCIDRs", func(t *testing.T) {
		nodes, err := c.Lab.Kube.Client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes.Items) != len(c.Nodes) {
			t.Fatalf("%d Node objects, want %d", len(nodes.Items), len(c.Nodes))
		}
		for _, obj := range nodes.Items {
			n := c.Lab.Node(obj.Name)
			if n == nil {
				t.Fatalf("node %s is not one of the lab's", obj.Name)
			}
			if len(obj.Spec.PodCIDRs) != 2 {
				t.Errorf("node %s: pod CIDRs %v, want one per family", obj.Name, obj.Spec.PodCIDRs)
			}
			for _, s := range obj.Spec.PodCIDRs {
				p := netip.MustParsePrefix(s)
				want := n.IPv4
				if p.Addr().Is6() {
					want = n.IPv6
				}
				lab.Eventually(t, converge, "tor: "+obj.Name+"'s "+s, func() error {
					nhs, err := rk.tor.BGPRoute(p)
					if err != nil {
						return err
					}
					if !slices.Contains(nhs, want) {
						return fmt.Errorf("next hops %v, want %s among them", nhs, want)
					}
					return nil
				})
			}
		}
	})

	t.Run("ClientReachesPod", func(t *testing.T) {
		u := u.with(t)
		u.pod("direct", c.Nodes[1].Name, nil, nil, "netexec", "--http-port=8080", "--udp-port=8081")
		u.waitRunning("direct")
		p, err := c.Lab.Kube.Client.CoreV1().Pods(u.ns).Get(context.Background(), "direct", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Status.PodIPs) != 2 {
			t.Fatalf("pod direct: IPs %v, want one per family", p.Status.PodIPs)
		}
		for _, ip := range p.Status.PodIPs {
			a := netip.MustParseAddr(ip.IP)
			lab.Eventually(t, converge, "client -> pod direct at "+a.String(), func() error {
				out, err := rk.get(a, 8080, "/hostname")
				if err == nil && out != "direct" {
					err = fmt.Errorf("answer %q", out)
				}
				return err
			})
			// Nothing translates the client's address on the way: the pod sees the client.
			out, err := rk.get(a, 8080, "/clientip")
			if err != nil {
				t.Fatal(err)
			}
			if got := hostOf(out); got != rk.client.Addr(a.Is6()) {
				t.Errorf("pod direct at %s saw the client as %q, want %s", a, out, rk.client.Addr(a.Is6()))
			}
		}
	})
}

// rack is the ToR, the client behind it and the BGP between the ToR and the nodes.
type rack struct {
	c      *cluster.Cluster
	seg    *lab.Segment
	tor    *lab.Router
	client *lab.Host
	http   *http.Client
	dyn    dynamic.Interface
}

func newRack(t *testing.T, c *cluster.Cluster) *rack {
	t.Helper()
	crds := lab.InstallCRDs(t, c.Lab)
	rk := &rack{c: c, seg: c.Lab.DefaultSegment(), dyn: crds.Dyn}
	asn := rk.clusterASN(t)
	rk.tor = c.Lab.AddRouter(t, "tor", lab.RouterOptions{ASN: torASN, Segments: []*lab.Segment{rk.seg}, MaximumPaths: 16})
	for _, n := range c.Nodes {
		if err := rk.tor.AddNeighbor(lab.Neighbor{Address: n.IPv4, ASN: asn, Description: n.Name}); err != nil {
			t.Fatal(err)
		}
	}
	rk.client = c.Lab.AddHost(t, "client", rk.tor)
	torV4, torV6 := rk.tor.Addr4(rk.seg), rk.tor.Addr6(rk.seg)
	for _, n := range c.Nodes {
		if err := n.IP(
			[]string{"route", "replace", rk.client.PrefixV4.String(), "via", torV4.String()},
			[]string{"-6", "route", "replace", rk.client.PrefixV6.String(), "via", torV6.String()},
		); err != nil {
			t.Fatalf("%s: route to the client: %v", n.Name, err)
		}
	}
	crds.Peer("tor", config.BGPPeerSpec{PeerAddress: torV4.String(), PeerASN: torASN})
	var addrs []netip.Addr
	for _, n := range c.Nodes {
		addrs = append(addrs, n.IPv4)
	}
	lab.Eventually(t, converge, "tor: sessions with every node", func() error { return rk.tor.Established(addrs...) })
	rk.http = &http.Client{
		Transport: &http.Transport{DialContext: rk.client.Dialer(), DisableKeepAlives: true},
		Timeout:   2 * time.Second,
	}
	t.Logf("rack: tor %s/%s (AS %d) peers with %d nodes (AS %d); client %s/%s behind it",
		torV4, torV6, torASN, len(c.Nodes), asn, rk.client.Addr(false), rk.client.Addr(true))
	return rk
}

// clusterASN is the BGPConfiguration default's asNumber, or the default when unset.
func (rk *rack) clusterASN(t *testing.T) uint32 {
	t.Helper()
	u, err := rk.dyn.Resource(config.BGPConfigurationGVR).Get(context.Background(), config.ConfigurationName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("BGPConfiguration %s: %v", config.ConfigurationName, err)
	}
	var bc config.BGPConfiguration
	b, _ := json.Marshal(u.Object)
	if err := json.Unmarshal(b, &bc); err != nil {
		t.Fatalf("BGPConfiguration %s: %v", config.ConfigurationName, err)
	}
	if bc.Spec.ASNumber == nil {
		return config.DefaultASN
	}
	return uint32(*bc.Spec.ASNumber)
}

// get asks http://addr:port/path from the client, on a new connection.
func (rk *rack) get(addr netip.Addr, port uint16, path string) (string, error) {
	url := "http://" + netip.AddrPortFrom(addr, port).String() + path
	resp, err := rk.http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %q", url, resp.Status, b)
	}
	return strings.TrimSpace(string(b)), nil
}

// udp sends msg to addr:port from the client, from a new socket, and returns the answer.
func (rk *rack) udp(addr netip.Addr, port uint16, msg string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	to := netip.AddrPortFrom(addr, port).String()
	conn, err := rk.client.Dialer()(ctx, "udp", to)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte(msg)); err != nil {
		return "", fmt.Errorf("UDP %q to %s: %w", msg, to, err)
	}
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		return "", fmt.Errorf("UDP %q to %s: %w", msg, to, err)
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

// hostOf is the address of agnhost's "/clientip" answer (host:port).
func hostOf(s string) netip.Addr {
	ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

var _ = corev1.ProtocolTCP
