package agentapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeSource serves fixed data; the transport around it is what the tests exercise.
type fakeSource struct {
	mu        sync.Mutex
	status    Status
	neighbors []Neighbor
	routes    Routes
	err       error
	panicMsg  string
	// advertised is what the last Neighbors call asked for.
	advertised bool
}

func (f *fakeSource) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

func (f *fakeSource) Neighbors(advertised bool) ([]Neighbor, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.panicMsg != "" {
		panic(f.panicMsg)
	}
	f.advertised = advertised
	return f.neighbors, f.err
}

func count(n uint64) *uint64 { return &n }

func (f *fakeSource) Routes() (Routes, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.routes, f.err
}

func fixedSource() *fakeSource {
	return &fakeSource{
		status: Status{
			Node: "node-a", PodCIDRs: []string{"10.244.1.0/24"}, ASN: 64512, RouterID: "10.0.0.11",
			CNIConfig: "/etc/cni/net.d/10-podroute.conflist", CNIConfigWritten: true,
			APIWatchHealthy: true, BGPStarted: true, Ready: true,
			Routes:        Counts{Learned: 2, Installed: 3, Advertised: 1, Refused: 1},
			LastReconcile: t0, Version: "v0.1.0",
		},
		neighbors: []Neighbor{
			{Address: "10.0.0.12", ASN: 64512, Kind: "mesh", Node: "node-b", State: "established", Since: t0, Received: 1, Accepted: 1, Advertised: count(1)},
			{Address: "192.0.2.1", ASN: 65001, Kind: "external", State: "active", Since: t0, LastError: "connection refused"},
		},
		routes: Routes{
			Routes: []Route{
				{Prefix: "10.244.2.0/24", NextHops: []string{"10.0.0.12"}, ASPath: []uint32{}, SourcePeer: "10.0.0.12", Installed: true},
			},
			Refused:    []Refusal{{Prefix: "0.0.0.0/0", Peer: "192.0.2.1", Reason: "default route", Count: 3, FirstSeen: t0, LastSeen: t0}},
			Advertised: []string{"10.244.1.0/24"},
			Services: []ServiceRoute{
				{Prefix: "203.0.113.10/32", Class: "loadBalancerIPs", Services: []string{"shop/web"}, Communities: []string{"64512:400"}, ASPathPrepend: 1},
				{Prefix: "10.96.0.0/16", Class: "clusterIPs", Services: []string{}},
			},
		},
	}
}

// sockPath is a socket path in a test directory, short enough for sun_path (108 bytes).
func sockPath(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "run", "agent.sock")
	if len(p) > 90 {
		dir, err := os.MkdirTemp("", "pr")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		p = filepath.Join(dir, "run", "agent.sock")
	}
	return p
}

// serve runs a Server on a fresh socket until the test ends, and returns the socket and
// the channel Serve's result arrives on.
func serve(t *testing.T, src Source) (string, context.CancelFunc, <-chan error) {
	t.Helper()
	path := sockPath(t)
	cancel, done := serveAt(t, src, path)
	return path, cancel, done
}

func serveAt(t *testing.T, src Source, path string) (context.CancelFunc, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan error, 1) // for the test
	finished := make(chan struct{})
	go func() {
		err := NewServer(src, nil).Serve(ctx, path)
		result <- err
		close(finished)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	waitSocket(t, path, finished, result)
	return cancel, result
}

func waitSocket(t *testing.T, path string, finished <-chan struct{}, result <-chan error) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		select {
		case <-finished:
			return false, fmt.Errorf("Serve returned early: %v", <-result)
		default:
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	})
	if wait.Interrupted(err) {
		t.Fatalf("socket %s never came up", path)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRoundTrip(t *testing.T) {
	src := fixedSource()
	path, _, _ := serve(t, src)
	c := NewClient(path)

	st, err := c.Status(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st, src.status) {
		t.Errorf("status:\n got %+v\nwant %+v", st, src.status)
	}
	for _, advertised := range []bool{false, true} {
		ns, err := c.Neighbors(ctxT(t), advertised)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(ns, src.neighbors) {
			t.Errorf("neighbors:\n got %+v\nwant %+v", ns, src.neighbors)
		}
		src.mu.Lock()
		if src.advertised != advertised {
			t.Errorf("Neighbors(%v) reached the source as %v", advertised, src.advertised)
		}
		src.mu.Unlock()
	}
	// A malformed parameter is refused, naming it.
	if code, body, _ := rawGet(t, path, http.MethodGet, PathNeighbors+"?advertised=maybe"); code != http.StatusBadRequest || !strings.Contains(body, "advertised") {
		t.Errorf("advertised=maybe: %d %s", code, body)
	}
	rs, err := c.Routes(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rs, src.routes) {
		t.Errorf("routes:\n got %+v\nwant %+v", rs, src.routes)
	}
}

// Nil lists from the Source are [] on the wire, not null.
func TestEmptyListsAreArrays(t *testing.T) {
	path, _, _ := serve(t, &fakeSource{})
	for _, p := range []string{PathNeighbors, PathRoutes, PathStatus} {
		code, body, _ := rawGet(t, path, http.MethodGet, p)
		if code != http.StatusOK || strings.Contains(body, "null") {
			t.Errorf("%s: %d %s", p, code, body)
		}
	}
}

func rawGet(t *testing.T, socket, method, path string) (int, string, http.Header) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	req, _ := http.NewRequestWithContext(ctxT(t), method, "http://x"+path, nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func TestNotFoundAndMethodNotAllowed(t *testing.T) {
	path, _, _ := serve(t, fixedSource())

	code, body, h := rawGet(t, path, http.MethodGet, "/v1/nope")
	if code != http.StatusNotFound || h.Get("Content-Type") != "application/json" || !strings.Contains(body, `"error"`) {
		t.Errorf("unknown path: %d %q %s", code, h.Get("Content-Type"), body)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		code, body, h := rawGet(t, path, m, PathStatus)
		if code != http.StatusMethodNotAllowed || h.Get("Allow") != "GET, HEAD" || !strings.Contains(body, "read-only") {
			t.Errorf("%s: %d allow=%q %s", m, code, h.Get("Allow"), body)
		}
	}
	if code, _, h := rawGet(t, path, http.MethodGet, PathNeighbors); code != 200 || h.Get("Content-Type") != "application/json" {
		t.Errorf("GET: %d %q", code, h.Get("Content-Type"))
	}
}

func TestSourceErrorReachesClient(t *testing.T) {
	src := fixedSource()
	src.err = errors.New("bgp speaker not started")
	path, _, _ := serve(t, src)

	code, body, _ := rawGet(t, path, http.MethodGet, PathRoutes)
	if code != http.StatusInternalServerError || !strings.Contains(body, `"error": "listing BGP routes: bgp speaker not started"`) {
		t.Errorf("raw: %d %s", code, body)
	}
	_, err := NewClient(path).Neighbors(ctxT(t), false)
	if err == nil || !strings.Contains(err.Error(), "bgp speaker not started") || !strings.Contains(err.Error(), "HTTP 500") {
		t.Fatalf("client error = %v", err)
	}
}

func TestPanicIsA500AndServerLives(t *testing.T) {
	src := fixedSource()
	src.panicMsg = "nil map"
	path, _, _ := serve(t, src)
	c := NewClient(path)
	if _, err := c.Neighbors(ctxT(t), false); err == nil || !strings.Contains(err.Error(), "HTTP 500") {
		t.Fatalf("err = %v", err)
	}
	if _, err := c.Status(ctxT(t)); err != nil {
		t.Fatalf("server did not survive the panic: %v", err)
	}
}

func TestHandleMountsExtraPaths(t *testing.T) {
	s := NewServer(fixedSource(), nil)
	s.Handle("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	path := sockPath(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() { done <- s.Serve(ctx, path); close(finished) }()
	defer func() { cancel(); <-finished }()
	waitSocket(t, path, finished, done)
	if code, body, _ := rawGet(t, path, http.MethodGet, "/healthz"); code != 200 || body != "ok" {
		t.Errorf("healthz: %d %q", code, body)
	}
}

func TestSocketModeAndRemovalOnShutdown(t *testing.T) {
	path, cancel, done := serve(t, fixedSource())
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode = %v, want socket 0660", fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil || di.Mode().Perm() != 0o755 {
		t.Errorf("parent dir: %v %v", di.Mode(), err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there after shutdown: %v", err)
	}
	// No temporary name left behind either.
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 0 {
		t.Errorf("left in the socket dir: %v", ents)
	}
}

func TestStaleSocketIsReplaced(t *testing.T) {
	path := sockPath(t)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	// A socket file whose listener is gone, as a crashed agent leaves it.
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not in place: %v", err)
	}
	serveAt(t, fixedSource(), path)
	if _, err := NewClient(path).Status(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

func TestLiveSocketIsNotStolen(t *testing.T) {
	path, _, _ := serve(t, fixedSource())
	before, _ := os.Lstat(path)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := NewServer(&fakeSource{}, nil).Serve(ctx, path)
	if err == nil || !strings.Contains(err.Error(), "already serving") {
		t.Fatalf("second Serve = %v, want an already-serving error", err)
	}
	after, err := os.Lstat(path)
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("the first agent's socket was touched: %v", err)
	}
	st, err := NewClient(path).Status(ctxT(t))
	if err != nil || st.Node != "node-a" {
		t.Fatalf("first agent no longer answers: %+v %v", st, err)
	}
}

func TestNonSocketIsNotReplaced(t *testing.T) {
	path := sockPath(t)
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := NewServer(&fakeSource{}, nil).Serve(ctxT(t), path)
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Serve = %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep" {
		t.Fatal("file was replaced")
	}
}

func TestClientNoSocket(t *testing.T) {
	path := sockPath(t)
	_, err := NewClient(path).Status(ctxT(t))
	want := "podroute agent is not running: no socket at " + path + " (is podroute-agent running on this node? use --socket)"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	if !errors.Is(err, ErrNotRunning) || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("errors.Is chain lost: %#v", err)
	}
}

func TestClientConnectionRefused(t *testing.T) {
	path := sockPath(t)
	os.MkdirAll(filepath.Dir(path), 0o755)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	_, err = NewClient(path).Neighbors(ctxT(t), false)
	want := "podroute agent is not running: nothing listens on " + path
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	if !errors.Is(err, ErrNotRunning) {
		t.Error("not ErrNotRunning")
	}
}

func TestClientNotASocket(t *testing.T) {
	path := sockPath(t)
	os.MkdirAll(filepath.Dir(path), 0o755)
	os.WriteFile(path, nil, 0o644)
	_, err := NewClient(path).Status(ctxT(t))
	if err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("err = %v", err)
	}
}

// Root passes every permission check, so the mapping is tested on the error the kernel
// gives an unprivileged user; the real thing runs too when the tests do not run as root.
func TestClientPermissionDenied(t *testing.T) {
	const sock = "/run/podroute/agent.sock"
	dialErr := &url.Error{Op: "Get", URL: "http://podroute-agent/v1/status", Err: &net.OpError{
		Op: "dial", Net: "unix", Addr: &net.UnixAddr{Name: sock, Net: "unix"},
		Err: os.NewSyscallError("connect", syscall.EACCES),
	}}
	err := describeError(sock, 0, dialErr)
	want := "cannot read the agent socket /run/podroute/agent.sock: permission denied (run as root or a member of its group)"
	if err.Error() != want {
		t.Errorf("got  %s\nwant %s", err, want)
	}
	if !errors.Is(err, syscall.EACCES) || errors.Is(err, ErrNotRunning) {
		t.Errorf("errors.Is chain wrong: %#v", err)
	}

	if os.Geteuid() == 0 {
		return
	}
	path, _, _ := serve(t, fixedSource())
	if err := os.Chmod(path, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := NewClient(path).Status(ctxT(t)); err == nil || !strings.Contains(err.Error(), "permission denied (run as root") {
		t.Fatalf("real EACCES: %v", err)
	}
}

// stuckServer accepts connections and never answers.
func stuckServer(t *testing.T) string {
	t.Helper()
	path := sockPath(t)
	os.MkdirAll(filepath.Dir(path), 0o755)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return path
}

func TestClientTimeout(t *testing.T) {
	path := stuckServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := NewClient(path).Routes(ctx)
	if time.Since(start) > 3*time.Second {
		t.Errorf("timeout took %v", time.Since(start))
	}
	want := "podroute agent on " + path + " did not answer within 200ms (raise --timeout, or check the agent's logs)"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Error("not DeadlineExceeded")
	}
}

// A server that is not the agent, or a different version of it: the client says so
// instead of showing zero values.
func TestClientBadJSONAndForeignErrors(t *testing.T) {
	path := sockPath(t)
	os.MkdirAll(filepath.Dir(path), 0o755)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case PathStatus:
			io.WriteString(w, `{"node": 42}`)
		case PathNeighbors:
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "<html>\n  upstream gone\n</html>")
		default:
			io.WriteString(w, "not json")
		}
	}), ReadHeaderTimeout: time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	c := NewClient(path)
	if _, err := c.Status(ctxT(t)); err == nil || !strings.Contains(err.Error(), "not the expected JSON") {
		t.Errorf("type mismatch: %v", err)
	}
	if _, err := c.Routes(ctxT(t)); err == nil || !strings.Contains(err.Error(), "not the expected JSON") {
		t.Errorf("not json: %v", err)
	}
	_, err = c.Neighbors(ctxT(t), false)
	if err == nil || err.Error() != "podroute agent: HTTP 502 on /v1/bgp/neighbors: <html> upstream gone </html>" {
		t.Errorf("foreign error: %v", err)
	}
	for _, e := range []error{err} {
		if e != nil && strings.Contains(e.Error(), "\n") {
			t.Errorf("multi-line error: %q", e)
		}
	}
}
