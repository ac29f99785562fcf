package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/knftables"

	"github.com/podroute/podroute/agentapi"
	"github.com/podroute/podroute/policy"
)

// shopInput: web-0 on this node, allowed on TCP 80 from the shop's clients; client-1 on
// another node.
func shopInput() policy.Input {
	tcp80 := intstr.FromInt32(80)
	allowWeb := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "allow-web"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &tcp80}},
			}},
		},
	}
	return policy.Input{
		Policies: []*networkingv1.NetworkPolicy{allowWeb},
		Pods: []policy.Pod{{Namespace: "shop", Name: "client-1", Labels: map[string]string{"app": "client"},
			IPs: []netip.Addr{netip.MustParseAddr("10.244.2.3")}}},
		Local: []policy.LocalPod{{Pod: policy.Pod{Namespace: "shop", Name: "web-0", Labels: map[string]string{"app": "web"},
			IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}}, HostVeth: "prabcdef012345"}},
	}
}

func serveAgentAPI(t *testing.T, a *Agent) *agentapi.Client {
	t.Helper()
	dir, err := os.MkdirTemp("", "pra")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = agentapi.NewServer(a, nil).Serve(ctx, sock); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		_, err := os.Stat(sock)
		return err == nil, nil
	}); err != nil {
		t.Fatal("the API socket never came up")
	}
	return agentapi.NewClient(sock)
}

// The API answers from what the policy loop compiled last, through the real server and
// client: before the first pass it says it cannot answer yet.
func TestPolicyAPI(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	src := &fakePolicySource{changed: make(chan struct{}, 1)}
	np := &networkPolicy{source: src, kernel: policy.NewReconciler(knftables.NewFake(knftables.InetFamily, policy.TableName), log), log: log, said: newProblemLog(log)}
	c := serveAgentAPI(t, &Agent{policy: np})
	ctx := context.Background()

	if _, err := c.PodPolicies(ctx, "shop", "web-0"); !errors.Is(err, agentapi.ErrUnavailable) || !strings.Contains(err.Error(), "not listed yet") {
		t.Fatalf("before the first pass: %v", err)
	}

	src.set(shopInput())
	src.synced.Store(true)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go np.run(runCtx)
	waitPolicy(t, np, func(st *policyStatus) bool { return st.Synced && st.Active })

	pp, err := c.PodPolicies(ctx, "shop", "web-0")
	if err != nil {
		t.Fatal(err)
	}
	want := agentapi.PodPolicies{Namespace: "shop", Pod: "web-0", Local: true, IPs: []string{"10.244.1.5"},
		Ingress: []agentapi.PolicyRules{{Policy: "shop/allow-web", Rules: []agentapi.PolicyRule{{Index: 0,
			Peers: []string{"pods {app=client} in namespace shop (1 pod now)"}, Ports: []string{"tcp/80"}}}}},
		Egress: []agentapi.PolicyRules{}}
	if !reflect.DeepEqual(pp, want) {
		t.Errorf("pod policies:\n got %+v\nwant %+v", pp, want)
	}

	v, err := c.CheckPolicy(ctx, agentapi.PolicyCheck{FromNamespace: "shop", FromPod: "client-1", ToNamespace: "shop", ToPod: "web-0", Port: 80, Protocol: "tcp"})
	if err != nil {
		t.Fatal(err)
	}
	if !v.Allowed || v.Ingress.Rule != "shop/allow-web ingress rule 0" || v.FromIP != "10.244.2.3" || v.ToIP != "10.244.1.5" || v.Egress.Policed {
		t.Errorf("client to web on 80: %+v", v)
	}
	v, err = c.CheckPolicy(ctx, agentapi.PolicyCheck{FromIP: "192.0.2.1", ToNamespace: "shop", ToPod: "web-0", Port: 80, Protocol: "tcp"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Allowed || v.Ingress.Reason != "selected by shop/allow-web; no rule allows it" {
		t.Errorf("outside to web on 80: %+v", v)
	}

	if _, err := c.PodPolicies(ctx, "shop", "ghost"); !errors.Is(err, agentapi.ErrNotFound) || !strings.Contains(err.Error(), "shop/ghost") {
		t.Errorf("missing pod: %v", err)
	}
	if _, err := c.CheckPolicy(ctx, agentapi.PolicyCheck{FromIP: "fd00::1", ToNamespace: "shop", ToPod: "web-0", Port: 80, Protocol: "tcp"}); !errors.Is(err, agentapi.ErrBadRequest) || !strings.Contains(err.Error(), "no address of the family") {
		t.Errorf("IPv6 to an IPv4-only pod: %v", err)
	}
}

func TestPolicyAPIOff(t *testing.T) {
	c := serveAgentAPI(t, &Agent{})
	_, err := c.CheckPolicy(context.Background(), agentapi.PolicyCheck{FromIP: "10.0.0.1", ToNamespace: "a", ToPod: "b", Port: 80, Protocol: "tcp"})
	if !errors.Is(err, agentapi.ErrUnavailable) || !strings.Contains(err.Error(), "--network-policy=false") {
		t.Errorf("err = %v", err)
	}
}
