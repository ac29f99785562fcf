package agentapi

import (
	"context"
	"errors"
	"strings"
	"testing"
)

type poolSource struct {
	*fakeSource
	pools LoadBalancerPools
	err   error
}

func (p *poolSource) LoadBalancerPools(context.Context) (LoadBalancerPools, error) {
	return p.pools, p.err
}

func TestLoadBalancerPools(t *testing.T) {
	src := &poolSource{fakeSource: fixedSource(), pools: LoadBalancerPools{Installed: true, Pools: []LoadBalancerPool{
		{Name: "public", Addresses: []string{"203.0.113.0/28"}, IPv4: &PoolUsage{Allocated: 3, Total: 16}, Valid: "True"},
		{Name: "broken", Valid: "False", Message: "overlaps pool public"},
	}}}
	path, _, _ := serve(t, src)
	c := NewClient(path)
	lp, err := c.LoadBalancerPools(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if !lp.Installed || len(lp.Pools) != 2 || lp.Pools[0].IPv4.Allocated != 3 || lp.Pools[0].IPv6 != nil || lp.Pools[1].Message != "overlaps pool public" {
		t.Errorf("pools %+v", lp)
	}
	// Lists are arrays in the JSON, never null.
	if code, body, _ := rawGet(t, path, "GET", PathLoadBalancerPools); code != 200 || strings.Contains(body, "null") {
		t.Errorf("%d %s", code, body)
	}
	src.err = errors.New("the API server is away")
	if _, err := c.LoadBalancerPools(ctxT(t)); err == nil || !strings.Contains(err.Error(), "the API server is away") {
		t.Errorf("error not passed on: %v", err)
	}
}

// A Source that does not read pools answers 404, saying so.
func TestLoadBalancerPoolsWithoutPoolSource(t *testing.T) {
	path, _, _ := serve(t, fixedSource())
	_, err := NewClient(path).LoadBalancerPools(ctxT(t))
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "does not read LoadBalancerIPPools") {
		t.Errorf("err = %v", err)
	}
}
