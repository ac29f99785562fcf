package agent

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/podroute/podroute/services"
)

// A Local Service's address waits for kube-proxy's health check to say 200; then it goes out,
// and a withdrawal forgets the confirmation.
func TestLocalCheck(t *testing.T) {
	var healthy atomic.Bool
	var asked atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		if r.URL.Path != "/healthz" || !healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, `{"localEndpoints": 1}`)
	}))
	defer srv.Close()
	ap := netip.MustParseAddrPort(srv.Listener.Addr().String())
	port := int(ap.Port())

	kicks := make(chan struct{}, 10)
	c := newLocalCheck(slog.New(slog.NewTextHandler(io.Discard, nil)), func() { kicks <- struct{}{} })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.run(ctx)

	me := self{V4: ap.Addr()}
	local := services.Advertisement{Prefix: netip.MustParsePrefix("203.0.113.10/32"), HealthCheckNodePorts: []int32{int32(port)}}
	cluster := services.Advertisement{Prefix: netip.MustParsePrefix("203.0.113.11/32")}
	v6 := services.Advertisement{Prefix: netip.MustParsePrefix("2001:db8:1b::10/128"), HealthCheckNodePorts: []int32{int32(port)}}
	in := []services.Advertisement{local, cluster, v6}

	// kube-proxy has no local endpoint programmed yet: only the Cluster Service's address,
	// and the IPv6 one, which this node has no address to check on, go out.
	got := c.filter(in, me)
	if len(got) != 2 || got[0].Prefix != cluster.Prefix || got[1].Prefix != v6.Prefix {
		t.Fatalf("before kube-proxy forwards: %v", got)
	}
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return asked.Load() >= 3, nil
	}); err != nil {
		t.Fatalf("not asked again while waiting: %d checks", asked.Load())
	}
	if got := c.filter(in, me); len(got) != 2 {
		t.Fatalf("still unhealthy: %v", got)
	}

	healthy.Store(true)
	select {
	case <-kicks:
	case <-time.After(5 * time.Second):
		t.Fatal("no pass asked for once kube-proxy forwards")
	}
	if got := c.filter(in, me); len(got) != 3 {
		t.Fatalf("after kube-proxy forwards: %v", got)
	}

	// Withdrawn (not wanted in a pass), then wanted again: confirmed again first.
	c.filter([]services.Advertisement{cluster}, me)
	healthy.Store(false)
	if got := c.filter(in, me); len(got) != 2 {
		t.Fatalf("wanted again: %v, want it held until confirmed again", got)
	}
}

// A node whose Local endpoints drain keeps the address until kube-proxy on a successor
// forwards, plus the grace, and then withdraws it.
func TestLocalCheckHandover(t *testing.T) {
	var successorReady atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !successorReady.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	ap := netip.MustParseAddrPort(srv.Listener.Addr().String())

	kicks := make(chan struct{}, 100)
	c := newLocalCheck(slog.New(slog.NewTextHandler(io.Discard, nil)), func() {
		select {
		case kicks <- struct{}{}:
		default:
		}
	})
	c.grace = 300 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.run(ctx)

	draining := services.Advertisement{Prefix: netip.MustParsePrefix("203.0.113.10/32"),
		Handovers: []services.HealthCheck{{Addr: ap.Addr(), Port: int32(ap.Port())}}}
	me := self{V4: netip.MustParseAddr("192.0.2.1")}
	for range 3 {
		if got := c.filter([]services.Advertisement{draining}, me); len(got) != 1 {
			t.Fatalf("withdrawn before the successor forwards: %v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	successorReady.Store(true)
	start := time.Now()
	var got []services.Advertisement
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		got = c.filter([]services.Advertisement{draining}, me)
		return len(got) == 0, nil
	})
	if err != nil {
		t.Fatalf("not withdrawn after the successor forwards: %v", got)
	}
	if d := time.Since(start); d < c.grace {
		t.Errorf("withdrawn %s after the successor forwards, before the grace (%s)", d, c.grace)
	}
	if len(kicks) == 0 {
		t.Error("no pass asked for during the handover")
	}
}
