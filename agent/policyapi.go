package agent

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/podroute/podroute/agentapi"
	"github.com/podroute/podroute/policy"
)

// The local API's NetworkPolicy questions, answered from what the last policy pass compiled:
// the cluster's policies, namespaces and pods as the informers had them.

var _ agentapi.PolicySource = (*Agent)(nil)

var (
	errPolicyOff     = errors.New("this agent does not enforce NetworkPolicy (--network-policy=false)")
	errPolicyNotRead = errors.New("NetworkPolicies, Namespaces and Pods are not listed yet: no policy pass has run")
)

// PodPolicies implements agentapi.PolicySource.
func (a *Agent) PodPolicies(namespace, pod string) (agentapi.PodPolicies, error) {
	in, err := a.policyInput()
	if err != nil {
		return agentapi.PodPolicies{}, err
	}
	pp, err := policy.Explain(in, namespace, pod)
	if err != nil {
		return agentapi.PodPolicies{}, policyError(err)
	}
	out := agentapi.PodPolicies{
		Namespace: pp.Namespace, Pod: pp.Name, Local: pp.Local, HostNetwork: pp.HostNetwork,
		IPs: addrStrings(pp.IPs), Ingress: policyRules(pp.Ingress), Egress: policyRules(pp.Egress), Problems: pp.Problems,
	}
	return out, nil
}

// CheckPolicy implements agentapi.PolicySource.
func (a *Agent) CheckPolicy(q agentapi.PolicyCheck) (agentapi.PolicyVerdict, error) {
	in, err := a.policyInput()
	if err != nil {
		return agentapi.PolicyVerdict{}, err
	}
	conn := policy.Connection{
		From:     policy.Endpoint{Namespace: q.FromNamespace, Name: q.FromPod},
		To:       policy.Endpoint{Namespace: q.ToNamespace, Name: q.ToPod},
		Port:     q.Port,
		Protocol: q.Protocol,
	}
	if q.FromIP != "" {
		ip, err := netip.ParseAddr(q.FromIP)
		if err != nil {
			return agentapi.PolicyVerdict{}, agentapi.MarkError(agentapi.ErrBadRequest, fmt.Errorf("from: %q is not an address", q.FromIP))
		}
		conn.From = policy.Endpoint{IP: ip}
	}
	v, err := policy.Check(in, conn)
	if err != nil {
		return agentapi.PolicyVerdict{}, policyError(err)
	}
	return agentapi.PolicyVerdict{
		From: v.From, To: v.To, FromIP: addrString(v.FromIP), ToIP: addrString(v.ToIP),
		Port: v.Port, Protocol: v.Protocol, Allowed: v.Allowed,
		Egress: judgement(v.Egress), Ingress: judgement(v.Ingress),
	}, nil
}

// policyInput is the Input of the last policy pass.
func (a *Agent) policyInput() (*policy.Input, error) {
	if a.policy == nil {
		return nil, agentapi.MarkError(agentapi.ErrUnavailable, errPolicyOff)
	}
	last := a.policy.last.Load()
	if last == nil {
		return nil, agentapi.MarkError(agentapi.ErrUnavailable, errPolicyNotRead)
	}
	return last.in, nil
}

// policyError gives the evaluator's errors their API status.
func policyError(err error) error {
	switch {
	case errors.Is(err, policy.ErrNoPod):
		return agentapi.MarkError(agentapi.ErrNotFound, err)
	case errors.Is(err, policy.ErrInvalid):
		return agentapi.MarkError(agentapi.ErrBadRequest, err)
	}
	return err
}

func policyRules(in []policy.PolicyRules) []agentapi.PolicyRules {
	out := make([]agentapi.PolicyRules, 0, len(in))
	for _, pr := range in {
		r := agentapi.PolicyRules{Policy: pr.Policy, Rules: make([]agentapi.PolicyRule, 0, len(pr.Rules))}
		for _, rs := range pr.Rules {
			r.Rules = append(r.Rules, agentapi.PolicyRule{Index: rs.Index, Peers: rs.Peers, Ports: rs.Ports})
		}
		out = append(out, r)
	}
	return out
}

func judgement(j policy.Judgement) agentapi.PolicyJudgement {
	return agentapi.PolicyJudgement{Pod: j.Pod, Allowed: j.Allowed, Policed: j.Policed, Policies: j.Policies, Rule: j.Rule, Reason: j.Reason}
}

func addrStrings(as []netip.Addr) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
