package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
)

// kubeProxyHandler answers /proxyMode the way kube-proxy's metrics server does
// (cmd/kube-proxy/app/server.go): 200, text/plain, the bare mode, no newline; every other
// path is a 404.
func kubeProxyHandler(mode func() string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		fmt.Fprintf(w, "%s", mode())
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "# HELP kubeproxy_sync_proxy_rules_duration_seconds ...")
	})
	return mux
}

func serveKubeProxy(t *testing.T, mode string) string {
	t.Helper()
	s := httptest.NewServer(kubeProxyHandler(func() string { return mode }))
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// freePort returns a loopback address nothing listens on: a port the kernel handed out and
// that was closed again, so connecting to it is refused.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestProbeKubeProxy(t *testing.T) {
	notFound := httptest.NewServer(http.NotFoundHandler()) // something else on the port
	defer notFound.Close()
	garbled := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "<html>\x1b[31mhello</html>")
	}))
	defer garbled.Close()
	unavailable := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "starting", http.StatusServiceUnavailable)
	}))
	defer unavailable.Close()
	refused := freePort(t)

	for _, tc := range []struct {
		name, addr string
		mode, key  string
		problem    []string // nil: no problem
	}{
		{"iptables", serveKubeProxy(t, "iptables"), "iptables", "mode:iptables", nil},
		{"nftables", serveKubeProxy(t, "nftables"), "nftables", "mode:nftables", nil},
		{"ipvs", serveKubeProxy(t, "ipvs"), "ipvs", "mode:ipvs",
			[]string{"kube-proxy runs in ipvs mode, which podroute does not support", "iptables or nftables mode"}},
		{"newline", serveKubeProxy(t, "nftables\n"), "nftables", "mode:nftables", nil},
		{"404", notFound.Listener.Addr().String(), "", "status:404",
			[]string{"kube-proxy not found", "/proxyMode answered \"404 Not Found\"", "--kube-proxy-metrics-address"}},
		{"503", unavailable.Listener.Addr().String(), "", "status:503", []string{"kube-proxy not found", "503"}},
		{"garbled", garbled.Listener.Addr().String(), "", "garbled", []string{"kube-proxy not found", `answered "<html>\x1b[31mhello</html>"`}},
		{"connection refused", refused, "", "absent",
			[]string{"kube-proxy not found: no answer at http://" + refused + "/proxyMode", "connection refused", "iptables or nftables mode"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), kubeProxyTimeout)
			defer cancel()
			st := probeKubeProxy(ctx, &http.Client{Transport: &http.Transport{Proxy: nil}}, tc.addr)
			if st.Mode != tc.mode || st.key != tc.key {
				t.Errorf("mode %q key %q, want %q %q (problem %q)", st.Mode, st.key, tc.mode, tc.key, st.Problem)
			}
			if tc.problem == nil && st.Problem != "" {
				t.Errorf("problem %q, want none", st.Problem)
			}
			if tc.problem != nil && st.Problem == "" {
				t.Errorf("no problem reported")
			}
			for _, w := range tc.problem {
				if !strings.Contains(st.Problem, w) {
					t.Errorf("problem %q does not say %q", st.Problem, w)
				}
			}
		})
	}
}

// A kube-proxy that accepts the connection and never answers costs one timeout, no more.
func TestProbeKubeProxyBounded(t *testing.T) {
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer hung.Close()
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	st := probeKubeProxy(ctx, &http.Client{Transport: &http.Transport{Proxy: nil}}, hung.Listener.Addr().String())
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("probe took %v with a 300ms deadline", d)
	}
	if st.key != "absent" || !strings.Contains(st.Problem, "no answer") {
		t.Errorf("state %+v", st)
	}
}

// syncBuffer is a log sink the agent's goroutine and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines returns the log records whose message is msg.
func (s *syncBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if l == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// TestWatchKubeProxy runs the agent's check against a port where kube-proxy is not yet
// running, then starts it there, then switches it to ipvs: the status follows each change,
// and each problem is logged once, with the node, however many checks see it.
func TestWatchKubeProxy(t *testing.T) {
	addr := freePort(t)
	logs := &syncBuffer{}
	cfg := testConfig()
	cfg.KubeProxyMetricsAddress = addr
	a, err := New(cfg, fake.NewSimpleClientset(), nil, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	a.kubeProxyEvery = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.watchKubeProxy(ctx); close(done) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("watchKubeProxy did not return after its context ended")
		}
	}()

	problems := func() string { return strings.Join(a.Status().Problems, "\n") }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
			return cond(), nil
		})
		if err != nil {
			t.Fatalf("timed out waiting for %s; status problems %q, mode %q", what, problems(), a.Status().KubeProxyMode)
		}
	}
	waitFor("kube-proxy reported missing", func() bool { return strings.Contains(problems(), "kube-proxy not found") })
	time.Sleep(100 * time.Millisecond) // several more checks, which must not log again
	if st := a.Status(); st.KubeProxyMode != "" {
		t.Errorf("mode %q with no kube-proxy", st.KubeProxyMode)
	}

	// kube-proxy starts on its port, after the agent.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken again meanwhile: %v", addr, err)
	}
	var mode atomic.Value
	mode.Store("iptables")
	srv := &http.Server{Handler: kubeProxyHandler(func() string { return mode.Load().(string) }), ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	waitFor("the problem cleared", func() bool { return a.Status().KubeProxyMode == "iptables" && problems() == "" })

	mode.Store("ipvs")
	waitFor("ipvs reported", func() bool { return strings.Contains(problems(), "ipvs mode, which podroute does not support") })
	time.Sleep(100 * time.Millisecond)
	if st := a.Status(); st.KubeProxyMode != "ipvs" || len(st.Problems) != 1 {
		t.Errorf("mode %q problems %q, want ipvs and one problem", st.KubeProxyMode, st.Problems)
	}

	warns := logs.lines(t, "kube-proxy")
	if len(warns) != 2 {
		t.Fatalf("%d warnings, want one when kube-proxy was missing and one for ipvs: %v", len(warns), warns)
	}
	for i, want := range []string{"kube-proxy not found", "ipvs mode"} {
		if warns[i]["level"] != "WARN" || warns[i]["node"] != cfg.NodeName || !strings.Contains(fmt.Sprint(warns[i]["problem"]), want) {
			t.Errorf("warning %d: %v, want level WARN, node %s and a problem saying %q", i, warns[i], cfg.NodeName, want)
		}
	}
	cleared := logs.lines(t, "kube-proxy found: problem cleared")
	if len(cleared) != 1 || cleared[0]["mode"] != "iptables" || cleared[0]["node"] != cfg.NodeName {
		t.Errorf("cleared: %v, want one record with mode iptables and the node", cleared)
	}
}

// With kube-proxy in a supported mode from the start, the agent says so once, at info.
func TestWatchKubeProxyFound(t *testing.T) {
	logs := &syncBuffer{}
	cfg := testConfig()
	cfg.KubeProxyMetricsAddress = serveKubeProxy(t, "nftables")
	a, err := New(cfg, fake.NewSimpleClientset(), nil, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	a.kubeProxyEvery = 10 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	a.watchKubeProxy(ctx)
	if st := a.Status(); st.KubeProxyMode != "nftables" || len(st.Problems) != 0 {
		t.Errorf("mode %q problems %q", st.KubeProxyMode, st.Problems)
	}
	if found := logs.lines(t, "kube-proxy found"); len(found) != 1 || found[0]["mode"] != "nftables" {
		t.Errorf("found: %v, want one record", found)
	}
	if w := logs.lines(t, "kube-proxy"); len(w) != 0 {
		t.Errorf("warnings: %v", w)
	}
}

func TestConfigKubeProxyAddress(t *testing.T) {
	for addr, ok := range map[string]bool{
		"":                true,
		"127.0.0.1:10249": true,
		"[::1]:10249":     true,
		"localhost:10249": true,
		"127.0.0.1":       false,
		":10249":          false,
		"127.0.0.1:0":     false,
		"127.0.0.1:http":  false,
		"127.0.0.1:70000": false,
	} {
		cfg := testConfig()
		cfg.KubeProxyMetricsAddress = addr
		err := cfg.Validate()
		if ok != (err == nil) {
			t.Errorf("%q: %v, want ok=%v", addr, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--kube-proxy-metrics-address") {
			t.Errorf("%q: error %v does not name the flag", addr, err)
		}
	}
}
