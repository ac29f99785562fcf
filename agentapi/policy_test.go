package agentapi

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// policyFake answers NetworkPolicy questions from fixed data and records what it was asked.
type policyFake struct {
	*fakeSource
	mu      sync.Mutex
	asked   []PolicyCheck
	pods    map[string]PodPolicies
	verdict PolicyVerdict
	err     error
}

func (f *policyFake) PodPolicies(ns, pod string) (PodPolicies, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return PodPolicies{}, f.err
	}
	pp, ok := f.pods[ns+"/"+pod]
	if !ok {
		return pp, MarkError(ErrNotFound, fmt.Errorf("no such pod %s/%s", ns, pod))
	}
	return pp, nil
}

func (f *policyFake) CheckPolicy(q PolicyCheck) (PolicyVerdict, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, q)
	return f.verdict, f.err
}

func policyFixture() *policyFake {
	return &policyFake{
		fakeSource: fixedSource(),
		pods: map[string]PodPolicies{
			"shop/web-0": {Namespace: "shop", Pod: "web-0", Local: true, IPs: []string{"10.244.1.5"},
				Ingress: []PolicyRules{{Policy: "shop/allow-web", Rules: []PolicyRule{{Index: 0, Peers: []string{"every pod in every namespace (3 pods now)"}, Ports: []string{"tcp/80"}}}}},
				Egress:  []PolicyRules{{Policy: "shop/deny"}}},
		},
		verdict: PolicyVerdict{From: "shop/client", To: "shop/web-0", FromIP: "10.244.2.3", ToIP: "10.244.1.5", Port: 80, Protocol: "tcp", Allowed: true,
			Egress:  PolicyJudgement{Pod: "shop/client", Allowed: true, Reason: "no policy selects shop/client for egress: open"},
			Ingress: PolicyJudgement{Pod: "shop/web-0", Allowed: true, Policed: true, Policies: []string{"shop/allow-web"}, Rule: "shop/allow-web ingress rule 0", Reason: "allowed by shop/allow-web ingress rule 0"}},
	}
}

func TestPolicyRoundTrip(t *testing.T) {
	src := policyFixture()
	path, _, _ := serve(t, src)
	c := NewClient(path)

	pp, err := c.PodPolicies(ctxT(t), "shop", "web-0")
	if err != nil {
		t.Fatal(err)
	}
	want := src.pods["shop/web-0"]
	want.Egress[0].Rules = []PolicyRule{} // [] on the wire
	if !reflect.DeepEqual(pp, want) {
		t.Errorf("pod policies:\n got %+v\nwant %+v", pp, want)
	}
	// Lists are [] on the wire, never null.
	if code, body, _ := rawGet(t, path, http.MethodGet, PathPolicy+"?namespace=shop&pod=web-0"); code != 200 || strings.Contains(body, "null") {
		t.Errorf("raw: %d %s", code, body)
	}

	q := PolicyCheck{FromNamespace: "shop", FromPod: "client", ToNamespace: "shop", ToPod: "web-0", Port: 80, Protocol: "tcp"}
	v, err := c.CheckPolicy(ctxT(t), q)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(v, src.verdict) {
		t.Errorf("verdict:\n got %+v\nwant %+v", v, src.verdict)
	}
	ip := PolicyCheck{FromIP: "192.0.2.1", ToNamespace: "shop", ToPod: "web-0", Port: 53, Protocol: "udp"}
	if _, err := c.CheckPolicy(ctxT(t), ip); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(src.asked, []PolicyCheck{q, ip}) {
		t.Errorf("the source was asked %+v", src.asked)
	}
}

func TestPolicyErrors(t *testing.T) {
	src := policyFixture()
	path, _, _ := serve(t, src)
	c := NewClient(path)

	_, err := c.PodPolicies(ctxT(t), "shop", "ghost")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no such pod shop/ghost") || !strings.Contains(err.Error(), "HTTP 404") {
		t.Errorf("missing pod: %v", err)
	}
	for _, tc := range []struct{ query, msg string }{
		{"?pod=web-0", "namespace: missing"},
		{"?namespace=shop", "pod: missing"},
	} {
		if code, body, _ := rawGet(t, path, http.MethodGet, PathPolicy+tc.query); code != 400 || !strings.Contains(body, tc.msg) {
			t.Errorf("%s: %d %s", tc.query, code, body)
		}
	}
	for _, tc := range []struct{ query, msg string }{
		{"to=shop/web-0&port=80", "from: missing"},
		{"from=shop&to=shop/web-0&port=80", `from: \"shop\" is neither an address nor a pod`},
		{"from=10.0.0.1&port=80", "to: missing"},
		{"from=10.0.0.1&to=web-0&port=80", `to: \"web-0\" is not a pod as namespace/name`},
		{"from=10.0.0.1&to=a/b/c&port=80", `to: \"a/b/c\"`},
		{"from=10.0.0.1&to=shop/web-0", "port: missing"},
		{"from=10.0.0.1&to=shop/web-0&port=0", `port: \"0\" is not a port number`},
		{"from=10.0.0.1&to=shop/web-0&port=http", `port: \"http\" is not a port number`},
		{"from=10.0.0.1&to=shop/web-0&port=80&protocol=icmp", `protocol: \"icmp\" is not tcp, udp or sctp`},
	} {
		if code, body, _ := rawGet(t, path, http.MethodGet, PathPolicyCheck+"?"+tc.query); code != 400 || !strings.Contains(body, tc.msg) {
			t.Errorf("%s: %d %s", tc.query, code, body)
		}
	}
	if len(src.asked) != 0 {
		t.Errorf("the source was asked malformed questions: %+v", src.asked)
	}

	src.err = MarkError(ErrUnavailable, errors.New("NetworkPolicy informers not synced yet"))
	if _, err := c.CheckPolicy(ctxT(t), PolicyCheck{FromIP: "10.0.0.1", ToNamespace: "a", ToPod: "b", Port: 1, Protocol: "tcp"}); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "HTTP 503") {
		t.Errorf("unavailable: %v", err)
	}
	src.err = errors.New("boom")
	if _, err := c.PodPolicies(ctxT(t), "shop", "web-0"); err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "HTTP 500") {
		t.Errorf("internal: %v", err)
	}
}

// A Source without PolicySource answers 404, saying so.
func TestPolicyWithoutPolicySource(t *testing.T) {
	path, _, _ := serve(t, fixedSource())
	_, err := NewClient(path).PodPolicies(ctxT(t), "shop", "web-0")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "does not answer NetworkPolicy questions") {
		t.Errorf("err = %v", err)
	}
}

func TestParsePolicyCheckDefaultsAndQuery(t *testing.T) {
	q, err := ParsePolicyCheck(url.Values{"from": {" ::ffff:10.0.0.1 "}, "to": {"shop/web-0"}, "port": {"443"}})
	if err != nil {
		t.Fatal(err)
	}
	want := PolicyCheck{FromIP: "10.0.0.1", ToNamespace: "shop", ToPod: "web-0", Port: 443, Protocol: "tcp"}
	if q != want {
		t.Errorf("got %+v, want %+v", q, want)
	}
	back, err := ParsePolicyCheck(want.Query())
	if err != nil || back != want {
		t.Errorf("round trip: %+v, %v", back, err)
	}
	pod := PolicyCheck{FromNamespace: "a", FromPod: "b", ToNamespace: "c", ToPod: "d", Port: 53, Protocol: "udp"}
	if back, err := ParsePolicyCheck(pod.Query()); err != nil || back != pod {
		t.Errorf("round trip: %+v, %v", back, err)
	}
}
