package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/podroute/podroute/services"
)

const (
	// localCheckEvery is how often an address held back is checked again: kube-proxy takes
	// 0.5 to 2 s to program a new endpoint, and each check is one local HTTP request.
	localCheckEvery = 100 * time.Millisecond
	// localCheckTimeout bounds one check.
	localCheckTimeout = time.Second
	// handoverGrace is how long a node whose local endpoints drain keeps a Local Service's
	// address after kube-proxy on a node with ready endpoints forwards: the time for that
	// node's agent to see it too (one check, at most localCheckEvery) and for its
	// advertisement to reach the rack (about 0.2 s; 0.7 s seen under heavy load).
	handoverGrace = 1500 * time.Millisecond
)

// localCheck holds back the address of an externalTrafficPolicy Local Service on this node
// until the node's kube-proxy forwards to its local endpoints. kube-proxy answers 200 on the
// Service's healthCheckNodePort once its rules for them are in place (the check cloud load
// balancers make), 0.5 to 2 s after the EndpointSlice says the endpoint is ready; advertised
// earlier, the rack sends new connections to a node that drops them, in every rolling
// update. A withdrawal follows the EndpointSlice at once, but for the handover: a node whose
// local endpoints drain (terminating but serving) while other nodes have ready ones keeps the
// address until kube-proxy on one of those forwards, plus handoverGrace, and then withdraws,
// while its own endpoints still serve. Left to the EndpointSlice, the withdrawal would race
// kube-proxy's removal of the draining endpoint on this node, and lose what the rack sends
// in between.
type localCheck struct {
	log    *slog.Logger
	client *http.Client
	kick   func()
	wake   chan struct{}
	grace  time.Duration // handoverGrace

	mu sync.Mutex
	// wanted are the checks the last pass needed, with when each was first needed; passed
	// those kube-proxy confirmed. A check no pass needs any more is forgotten, so an address
	// withdrawn and wanted again is confirmed again.
	wanted map[localProbe]time.Time
	passed map[localProbe]bool
	// handedOver is when each draining prefix's successor was first seen forwarding.
	handedOver map[netip.Prefix]time.Time
	// graceRunning asks run for passes while a handover's grace runs.
	graceRunning bool
}

// localProbe is one check: kube-proxy's health check server for one Service, on this node's
// address of one family (kube-proxy runs a proxier per family, each with its own).
type localProbe struct {
	addr netip.Addr
	port int32
}

func (p localProbe) url() string {
	return "http://" + netip.AddrPortFrom(p.addr, uint16(p.port)).String() + "/healthz"
}

func newLocalCheck(log *slog.Logger, kick func()) *localCheck {
	return &localCheck{
		log:        log,
		kick:       kick,
		wake:       make(chan struct{}, 1),
		grace:      handoverGrace,
		wanted:     map[localProbe]time.Time{},
		passed:     map[localProbe]bool{},
		handedOver: map[netip.Prefix]time.Time{},
		// This node's kube-proxy, never through a proxy from the environment.
		client: &http.Client{Timeout: localCheckTimeout, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}},
	}
}

// filter returns the advertisements whose Local Services this node's kube-proxy forwards
// to, and records which checks the others wait for.
func (c *localCheck) filter(advs []services.Advertisement, me self) []services.Advertisement {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	wanted := make(map[localProbe]time.Time, len(c.wanted))
	out := advs[:0:0]
	pending := false
	handedOver := map[netip.Prefix]time.Time{}
	c.graceRunning = false
	for _, a := range advs {
		if len(a.Handovers) > 0 {
			if c.handover(a, now, wanted, handedOver) {
				continue // withdrawn: the successor has it
			}
			pending = true
		}
		addr := me.V4
		if a.Prefix.Addr().Is6() {
			addr = me.V6
		}
		ok := true
		for _, port := range a.HealthCheckNodePorts {
			if !addr.IsValid() {
				break // no address of the family to ask on: nothing to wait for
			}
			if !c.want(localProbe{addr: addr, port: port}, now, wanted) {
				ok = false
			}
		}
		if ok {
			out = append(out, a)
		} else {
			pending = true
		}
	}
	for p := range c.passed {
		if _, ok := wanted[p]; !ok {
			delete(c.passed, p)
		}
	}
	c.wanted = wanted
	c.handedOver = handedOver
	if pending {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	return out
}

// want records that this pass needs check p (keeping when it was first needed) and tells
// whether kube-proxy has passed it. Needs mu.
func (c *localCheck) want(p localProbe, now time.Time, wanted map[localProbe]time.Time) bool {
	since, seen := c.wanted[p]
	if !seen {
		since = now
	}
	wanted[p] = since
	return c.passed[p]
}

// handover tells whether a's node should withdraw a now that its endpoints drain: once a
// successor's kube-proxy forwards and handoverGrace has passed. It records the checks it
// needs in wanted and the handover's start in handedOver. Needs mu.
func (c *localCheck) handover(a services.Advertisement, now time.Time, wanted map[localProbe]time.Time, handedOver map[netip.Prefix]time.Time) bool {
	forwarding := false
	for _, h := range a.Handovers {
		if c.want(localProbe{addr: h.Addr, port: h.Port}, now, wanted) {
			forwarding = true
		}
	}
	if !forwarding {
		return false
	}
	at, ok := c.handedOver[a.Prefix]
	if !ok {
		at = now
		c.log.Info("handing a Local Service's address over: kube-proxy forwards on a node with ready endpoints", "prefix", a.Prefix, "services", a.Services, "grace", c.grace)
	}
	handedOver[a.Prefix] = at
	if now.Sub(at) >= c.grace {
		return true
	}
	c.graceRunning = true
	return false
}

// run checks what filter held back, every localCheckEvery while something waits, and asks
// for a pass when a check passes.
func (c *localCheck) run(ctx context.Context) {
	tick := time.NewTicker(localCheckEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		case <-tick.C:
		}
		c.mu.Lock()
		var todo []localProbe
		for p := range c.wanted {
			if !c.passed[p] {
				todo = append(todo, p)
			}
		}
		// A handover's grace ends with no event of its own: a pass ends it.
		passed := c.graceRunning
		c.mu.Unlock()
		for _, p := range todo {
			if err := c.probe(ctx, p); err != nil {
				c.log.Debug("kube-proxy does not forward to local endpoints yet", "check", p.url(), "err", err)
				continue
			}
			c.mu.Lock()
			since, still := c.wanted[p]
			if still {
				c.passed[p] = true
				passed = true
			}
			c.mu.Unlock()
			if still {
				c.log.Info("kube-proxy forwards to local endpoints", "check", p.url(), "waited", time.Since(since).Round(time.Millisecond))
			}
		}
		if passed {
			c.kick()
		}
	}
}

// probe asks kube-proxy's health check server whether it forwards to local endpoints: 200
// says it does, 503 that it has none (yet).
func (c *localCheck) probe(ctx context.Context, p localProbe) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url(), nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %s", strconv.Itoa(resp.StatusCode))
	}
	return nil
}
