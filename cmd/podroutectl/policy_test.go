package main

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/podroute/podroute/agentapi"
)

// policyFake answers NetworkPolicy questions from fixed data and records the questions.
type policyFake struct {
	*fakeSource
	mu    sync.Mutex
	asked []agentapi.PolicyCheck
}

var webPolicies = agentapi.PodPolicies{
	Namespace: "shop", Pod: "web-0", Local: true, IPs: []string{"10.244.1.5", "fd00:10:244:1::5"},
	Ingress: []agentapi.PolicyRules{
		{Policy: "shop/allow-web", Rules: []agentapi.PolicyRule{
			{Index: 0, Peers: []string{"pods {app=client} in namespace shop (2 pods now)", "ipBlock 192.0.2.0/24 except 192.0.2.128/25"},
				Ports: []string{"tcp/80", "tcp/http (= 8080 on this pod)"}},
			{Index: 1, Peers: []string{}, Ports: []string{"udp/53"}},
		}},
		{Policy: "shop/deny-all", Rules: []agentapi.PolicyRule{}},
	},
	Egress:   []agentapi.PolicyRules{},
	Problems: []string{"shop/allow-web: spec.ingress[2].ports[0]: protocol \"ICMP\" is not TCP, UDP or SCTP (the port matches nothing)"},
}

func (f *policyFake) PodPolicies(ns, pod string) (agentapi.PodPolicies, error) {
	switch ns + "/" + pod {
	case "shop/web-0":
		return webPolicies, nil
	case "kube-system/hn":
		return agentapi.PodPolicies{Namespace: ns, Pod: pod, HostNetwork: true, IPs: []string{"10.0.0.11"}}, nil
	}
	return agentapi.PodPolicies{}, agentapi.MarkError(agentapi.ErrNotFound, fmt.Errorf("no such pod %s/%s", ns, pod))
}

func (f *policyFake) CheckPolicy(q agentapi.PolicyCheck) (agentapi.PolicyVerdict, error) {
	f.mu.Lock()
	f.asked = append(f.asked, q)
	f.mu.Unlock()
	from := q.FromNamespace + "/" + q.FromPod
	if q.FromIP != "" {
		from = q.FromIP
	}
	v := agentapi.PolicyVerdict{From: from, To: q.ToNamespace + "/" + q.ToPod, FromIP: "10.244.2.3", ToIP: "10.244.1.5", Port: q.Port, Protocol: q.Protocol}
	if q.Port == 80 {
		v.Allowed = true
		v.Egress = agentapi.PolicyJudgement{Pod: from, Allowed: true, Reason: "no policy selects " + from + " for egress: open"}
		v.Ingress = agentapi.PolicyJudgement{Pod: v.To, Allowed: true, Policed: true, Policies: []string{"shop/allow-web", "shop/deny-all"},
			Rule: "shop/allow-web ingress rule 0", Reason: "allowed by shop/allow-web ingress rule 0"}
		return v, nil
	}
	v.Egress = agentapi.PolicyJudgement{Allowed: true, Reason: from + " is not a pod's address: no egress policy applies"}
	v.Ingress = agentapi.PolicyJudgement{Pod: v.To, Policed: true, Policies: []string{"shop/allow-web", "shop/deny-all"},
		Reason: "selected by shop/allow-web, shop/deny-all; no rule allows it"}
	return v, nil
}

func TestPolicyShow(t *testing.T) {
	sock := serveFixture(t, &policyFake{fakeSource: fixture()})
	want := `Pod shop/web-0 (10.244.1.5, fd00:10:244:1::5; on this node)

Ingress: selected by 2 policies; allowed what any of them allows
  shop/allow-web
    rule 0: from pods {app=client} in namespace shop (2 pods now); ipBlock 192.0.2.0/24 except 192.0.2.128/25
            ports tcp/80, tcp/http (= 8080 on this pod)
    rule 1: from anywhere
            ports udp/53
  shop/deny-all
    allows nothing (no rules)

Egress: open (no policy selects this pod)

Problems (these parts allow nothing):
  shop/allow-web: spec.ingress[2].ports[0]: protocol "ICMP" is not TCP, UDP or SCTP (the port matches nothing)
`
	for _, args := range [][]string{{"policy", "web-0", "-n", "shop"}, {"policy", "shop/web-0"}, {"policy", "--namespace=shop", "web-0"}} {
		if got := ok(t, ctl(t, nil, append([]string{"--socket", sock}, args...)...)); got != want {
			t.Errorf("%v:\n%s\nwant:\n%s", args, got, want)
		}
	}
	var pp agentapi.PodPolicies
	decode(t, json.Unmarshal, ok(t, ctl(t, nil, "--socket", sock, "policy", "shop/web-0", "-o", "json")), &pp)
	if !reflect.DeepEqual(pp, webPolicies) {
		t.Errorf("json:\n got %+v\nwant %+v", pp, webPolicies)
	}
	if got := ok(t, ctl(t, nil, "--socket", sock, "policy", "kube-system/hn")); !strings.Contains(got, "On the host network: NetworkPolicy never applies to it.") {
		t.Errorf("host network pod: %q", got)
	}
	line := failed(t, ctl(t, nil, "--socket", sock, "policy", "ghost"))
	if !strings.Contains(line, "no such pod default/ghost") || !strings.Contains(line, "HTTP 404") {
		t.Errorf("missing pod: %q", line)
	}
}

func TestPolicyCheck(t *testing.T) {
	src := &policyFake{fakeSource: fixture()}
	sock := serveFixture(t, src)
	got := ok(t, ctl(t, nil, "--socket", sock, "policy", "check", "client-1", "web-0", "80/tcp", "-n", "shop"))
	want := `ALLOWED: shop/client-1 (10.244.2.3) -> shop/web-0 (10.244.1.5) 80/tcp
DIRECTION  POD            VERDICT  WHY
egress     shop/client-1  allowed  no policy selects shop/client-1 for egress: open
ingress    shop/web-0     allowed  allowed by shop/allow-web ingress rule 0
`
	if got != want {
		t.Errorf("allowed:\n%s\nwant:\n%s", got, want)
	}
	got = ok(t, ctl(t, nil, "--socket", sock, "policy", "check", "192.0.2.1", "shop/web-0", "443"))
	want = `DENIED: 192.0.2.1 (10.244.2.3) -> shop/web-0 (10.244.1.5) 443/tcp
DIRECTION  POD         VERDICT  WHY
egress     -           allowed  192.0.2.1 is not a pod's address: no egress policy applies
ingress    shop/web-0  denied   selected by shop/allow-web, shop/deny-all; no rule allows it
`
	if got != want {
		t.Errorf("denied:\n%s\nwant:\n%s", got, want)
	}
	var v agentapi.PolicyVerdict
	decode(t, json.Unmarshal, ok(t, ctl(t, nil, "--socket", sock, "policy", "check", "shop/a", "other/b", "53/UDP", "-o", "json")), &v)
	if v.Allowed || v.Protocol != "udp" || v.Port != 53 || v.To != "other/b" || v.Ingress.Reason == "" {
		t.Errorf("json: %+v", v)
	}
	wantAsked := []agentapi.PolicyCheck{
		{FromNamespace: "shop", FromPod: "client-1", ToNamespace: "shop", ToPod: "web-0", Port: 80, Protocol: "tcp"},
		{FromIP: "192.0.2.1", ToNamespace: "shop", ToPod: "web-0", Port: 443, Protocol: "tcp"},
		{FromNamespace: "shop", FromPod: "a", ToNamespace: "other", ToPod: "b", Port: 53, Protocol: "udp"},
	}
	if !reflect.DeepEqual(src.asked, wantAsked) {
		t.Errorf("asked %+v\nwant %+v", src.asked, wantAsked)
	}
}

func TestPolicyUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		line string
	}{
		{[]string{"policy"}, "podroutectl: accepts 1 arg(s), received 0"},
		{[]string{"policy", "a/b/c"}, `podroutectl: POD: "a/b/c" is not a pod (name, or namespace/name)`},
		{[]string{"policy", "/web"}, `podroutectl: POD: "/web" is not a pod (name, or namespace/name)`},
		{[]string{"policy", "check", "a", "b"}, "podroutectl: accepts 3 arg(s), received 2"},
		{[]string{"policy", "check", "a/", "b", "80"}, `podroutectl: SRC: "a/" is neither an address nor a pod (name, or namespace/name)`},
		{[]string{"policy", "check", "a", "10.0.0.1", "80"}, `podroutectl: DST: "10.0.0.1" is an address; the destination must be a pod (name, or namespace/name)`},
		{[]string{"policy", "check", "a", "b", "http"}, `podroutectl: PORT/PROTO: "http": the port is not a number from 1 to 65535 (e.g. 80/tcp, 53/udp)`},
		{[]string{"policy", "check", "a", "b", "0/tcp"}, `podroutectl: PORT/PROTO: "0/tcp": the port is not a number from 1 to 65535 (e.g. 80/tcp, 53/udp)`},
		{[]string{"policy", "check", "a", "b", "80/icmp"}, `podroutectl: PORT/PROTO: "80/icmp": the protocol is not tcp, udp or sctp`},
	} {
		r := ctl(t, nil, tc.args...)
		if line := failed(t, r); line != tc.line {
			t.Errorf("%v: got %q\nwant %q", tc.args, line, tc.line)
		}
		if !strings.Contains(r.stderr, "--help' for usage.") {
			t.Errorf("%v: no usage hint: %q", tc.args, r.stderr)
		}
	}
}

func TestPolicyHelp(t *testing.T) {
	for _, args := range [][]string{{"policy", "--help"}, {"policy", "check", "--help"}} {
		out := ok(t, ctl(t, nil, args...))
		if !strings.Contains(out, "Examples:") || !strings.Contains(out, "-n, --namespace") {
			t.Errorf("%v: help without examples or -n:\n%s", args, out)
		}
	}
}

// An agent without NetworkPolicy says so, in one line.
func TestPolicyAgentWithout(t *testing.T) {
	sock := serveFixture(t, fixture())
	line := failed(t, ctl(t, nil, "--socket", sock, "policy", "check", "a", "b", "80"))
	if !strings.Contains(line, "does not answer NetworkPolicy questions") {
		t.Errorf("got %q", line)
	}
}
