package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podroute/podroute/agentapi"
	"github.com/podroute/podroute/lbipam"
)

var _ agentapi.PoolSource = (*Agent)(nil)

// poolsTimeout bounds the List behind one `podroutectl status`.
const poolsTimeout = 5 * time.Second

// LoadBalancerPools implements agentapi.PoolSource. The pools are listed when asked, not
// watched: only an operator asks, and every node keeping a cache of them for that would cost
// every node memory and the API server a watch each.
func (a *Agent) LoadBalancerPools(ctx context.Context) (agentapi.LoadBalancerPools, error) {
	if a.dyn == nil {
		return agentapi.LoadBalancerPools{}, errors.New("the agent runs without the podroute resources' client")
	}
	ctx, cancel := context.WithTimeout(ctx, poolsTimeout)
	defer cancel()
	list, err := a.dyn.Resource(lbipam.PoolGVR).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
		return agentapi.LoadBalancerPools{}, nil
	}
	if err != nil {
		return agentapi.LoadBalancerPools{}, err
	}
	out := agentapi.LoadBalancerPools{Installed: true}
	for i := range list.Items {
		o, err := lbipam.PoolFromUnstructured(&list.Items[i])
		if err != nil {
			out.Pools = append(out.Pools, agentapi.LoadBalancerPool{Name: list.Items[i].GetName(), Valid: "False", Message: fmt.Sprintf("unreadable: %v", err)})
			continue
		}
		p := agentapi.LoadBalancerPool{Name: o.Name, Addresses: slices.Clone(o.Spec.Addresses)}
		if u := o.Status.IPv4; u != nil {
			p.IPv4 = &agentapi.PoolUsage{Allocated: u.Allocated, Total: u.Total}
		}
		if u := o.Status.IPv6; u != nil {
			p.IPv6 = &agentapi.PoolUsage{Allocated: u.Allocated, Total: u.Total}
		}
		if c := meta.FindStatusCondition(o.Status.Conditions, lbipam.ConditionValid); c != nil {
			p.Valid = string(c.Status)
			if c.Status != metav1.ConditionTrue {
				p.Message = c.Message
			}
		}
		out.Pools = append(out.Pools, p)
	}
	slices.SortFunc(out.Pools, func(x, y agentapi.LoadBalancerPool) int { return strings.Compare(x.Name, y.Name) })
	return out, nil
}
