package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SocketMode is the socket's permission: the API shows the node's routing state, which is
// for root and the socket's group, not for every local user.
const SocketMode fs.FileMode = 0o660

// Timeouts of the HTTP server. The clients are local and the answers small, so anything
// slower than this is a stuck or hostile client, not a slow network.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
	shutdownTimeout   = 5 * time.Second
	// liveCheckTimeout bounds the probe of an existing socket file before replacing it.
	liveCheckTimeout = time.Second
)

// Server serves a Source on a unix socket.
type Server struct {
	src     Source
	log     *slog.Logger
	mux     *http.ServeMux
	handler http.Handler
}

// NewServer returns a Server for src. A nil log discards.
func NewServer(src Source, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{src: src, log: log, mux: http.NewServeMux()}
	s.mux.Handle(PathStatus, s.readOnly(s.status))
	s.mux.Handle(PathNeighbors, s.readOnly(s.neighbors))
	s.mux.Handle(PathRoutes, s.readOnly(s.routes))
	s.mux.Handle(PathPolicy, s.readOnly(s.podPolicies))
	s.mux.Handle(PathPolicyCheck, s.readOnly(s.checkPolicy))
	s.mux.Handle(PathLoadBalancerPools, s.readOnly(s.loadBalancerPools))
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such path %s in the podroute agent API", r.URL.Path))
	})
	s.handler = s.recoverPanics(s.logRequests(s.mux))
	return s
}

// Handler is the whole API, with panic recovery and request logging, for callers that serve
// it themselves.
func (s *Server) Handler() http.Handler { return s.handler }

// Handle mounts h on pattern (http.ServeMux syntax) next to the API, e.g. /metrics or
// /healthz. Safe to call while serving. The read-only rule of the API paths does not apply
// to h: it sees every method.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Serve listens on socketPath and serves until ctx ends, then shuts down gracefully and
// removes the socket. It returns nil after a shutdown asked for by ctx.
func (s *Server) Serve(ctx context.Context, socketPath string) error {
	ln, err := listen(socketPath)
	if err != nil {
		return err
	}
	// Remember which file is ours: on the way out, remove it only if it still is.
	ours, _ := os.Lstat(socketPath)
	defer func() {
		if cur, err := os.Lstat(socketPath); err == nil && ours != nil && os.SameFile(ours, cur) {
			if err := os.Remove(socketPath); err != nil {
				s.log.Warn("cannot remove the agent API socket", "socket", socketPath, "err", err)
			}
		}
	}()

	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("agent API listening", "socket", socketPath, "mode", fmt.Sprintf("%#o", SocketMode))

	select {
	case err := <-errc:
		return fmt.Errorf("serving the agent API on %s: %w", socketPath, err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(shutCtx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		// Requests still running after the grace period are cut off; say so, but the
		// shutdown itself was asked for.
		s.log.Warn("agent API did not shut down cleanly", "socket", socketPath, "err", err)
		_ = srv.Close()
	}
	s.log.Info("agent API stopped", "socket", socketPath)
	return nil
}

// listen creates the socket at path with SocketMode. The socket is bound under a temporary
// name, restricted, then renamed into place, so no client ever sees it with the wider mode
// the umask would give it.
func listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating the agent API socket directory: %w", err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+"."+strconv.Itoa(os.Getpid())+".tmp")
	_ = os.Remove(tmp) // a leftover of this same pid, from a crash
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("listening on the agent API socket %s: %w", path, err)
	}
	// The listener would unlink its bind name on Close; Serve removes the final name itself.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, SocketMode); err != nil {
		return fail(fmt.Errorf("restricting the agent API socket: %w", err))
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("moving the agent API socket into place at %s: %w", path, err))
	}
	return ln, nil
}

// removeStale removes a socket file left behind by an agent that is gone. A socket that
// still answers belongs to a live agent and is left alone; so is anything that is not a
// socket, which podroute did not create.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking the agent API socket path: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%s); not replacing it", path, fi.Mode().Type())
	}
	conn, err := net.DialTimeout("unix", path, liveCheckTimeout)
	if err == nil {
		conn.Close()
		return fmt.Errorf("another podroute agent is already serving on %s; not taking over its socket", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("cannot tell whether the socket %s is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the stale agent API socket: %w", err)
	}
	return nil
}

func (s *Server) status(*http.Request) (any, error) {
	st := s.src.Status()
	// Lists are [] rather than null in the JSON, so consumers need no nil checks.
	if st.PodCIDRs == nil {
		st.PodCIDRs = []string{}
	}
	return st, nil
}

func (s *Server) neighbors(r *http.Request) (any, error) {
	advertised := false
	if v := r.URL.Query().Get("advertised"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, MarkError(ErrBadRequest, fmt.Errorf("advertised: %q is not true or false", v))
		}
		advertised = b
	}
	ns, err := s.src.Neighbors(advertised)
	if err != nil {
		return nil, fmt.Errorf("listing BGP neighbors: %w", err)
	}
	if ns == nil {
		ns = []Neighbor{}
	}
	return ns, nil
}

func (s *Server) routes(*http.Request) (any, error) {
	rs, err := s.src.Routes()
	if err != nil {
		return nil, fmt.Errorf("listing BGP routes: %w", err)
	}
	if rs.Routes == nil {
		rs.Routes = []Route{}
	}
	for i := range rs.Routes {
		if rs.Routes[i].NextHops == nil {
			rs.Routes[i].NextHops = []string{}
		}
		if rs.Routes[i].ASPath == nil {
			rs.Routes[i].ASPath = []uint32{}
		}
	}
	if rs.Refused == nil {
		rs.Refused = []Refusal{}
	}
	if rs.Advertised == nil {
		rs.Advertised = []string{}
	}
	if rs.Services == nil {
		rs.Services = []ServiceRoute{}
	}
	for i := range rs.Services {
		if rs.Services[i].Services == nil {
			rs.Services[i].Services = []string{}
		}
	}
	return rs, nil
}

func (s *Server) loadBalancerPools(r *http.Request) (any, error) {
	ps, ok := s.src.(PoolSource)
	if !ok {
		return nil, MarkError(ErrNotFound, errors.New("this podroute agent does not read LoadBalancerIPPools"))
	}
	lp, err := ps.LoadBalancerPools(r.Context())
	if err != nil {
		return nil, fmt.Errorf("listing LoadBalancerIPPools: %w", err)
	}
	if lp.Pools == nil {
		lp.Pools = []LoadBalancerPool{}
	}
	for i := range lp.Pools {
		if lp.Pools[i].Addresses == nil {
			lp.Pools[i].Addresses = []string{}
		}
	}
	return lp, nil
}

// policySource is the Source's PolicySource, or an error for an agent without one.
func (s *Server) policySource() (PolicySource, error) {
	ps, ok := s.src.(PolicySource)
	if !ok {
		return nil, MarkError(ErrNotFound, errors.New("this podroute agent does not answer NetworkPolicy questions"))
	}
	return ps, nil
}

func (s *Server) podPolicies(r *http.Request) (any, error) {
	q := r.URL.Query()
	ns, pod := strings.TrimSpace(q.Get("namespace")), strings.TrimSpace(q.Get("pod"))
	if ns == "" {
		return nil, MarkError(ErrBadRequest, errors.New("namespace: missing (the pod's namespace)"))
	}
	if pod == "" {
		return nil, MarkError(ErrBadRequest, errors.New("pod: missing (the pod's name)"))
	}
	ps, err := s.policySource()
	if err != nil {
		return nil, err
	}
	pp, err := ps.PodPolicies(ns, pod)
	if err != nil {
		return nil, fmt.Errorf("NetworkPolicies of pod %s/%s: %w", ns, pod, err)
	}
	if pp.IPs == nil {
		pp.IPs = []string{}
	}
	for _, l := range []*[]PolicyRules{&pp.Ingress, &pp.Egress} {
		if *l == nil {
			*l = []PolicyRules{}
		}
		for i := range *l {
			pr := &(*l)[i]
			if pr.Rules == nil {
				pr.Rules = []PolicyRule{}
			}
			for j := range pr.Rules {
				if pr.Rules[j].Peers == nil {
					pr.Rules[j].Peers = []string{}
				}
				if pr.Rules[j].Ports == nil {
					pr.Rules[j].Ports = []string{}
				}
			}
		}
	}
	return pp, nil
}

func (s *Server) checkPolicy(r *http.Request) (any, error) {
	pc, err := ParsePolicyCheck(r.URL.Query())
	if err != nil {
		return nil, MarkError(ErrBadRequest, err)
	}
	ps, err := s.policySource()
	if err != nil {
		return nil, err
	}
	v, err := ps.CheckPolicy(pc)
	if err != nil {
		return nil, fmt.Errorf("checking a connection against NetworkPolicy: %w", err)
	}
	return v, nil
}

// readOnly adapts a getter to an http.Handler that answers GET and HEAD with JSON.
func (s *Server) readOnly(get func(*http.Request) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed,
				fmt.Sprintf("method %s not allowed on %s: the podroute agent API is read-only", r.Method, r.URL.Path))
			return
		}
		v, err := get(r)
		if err != nil {
			code := statusOf(err)
			if code == http.StatusInternalServerError {
				s.log.Warn("agent API request failed", "path", r.URL.Path, "err", err)
			} else {
				s.log.Debug("agent API request refused", "path", r.URL.Path, "status", code, "err", err)
			}
			writeError(w, code, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
}

// ErrorBody is the JSON body of every error answer.
type ErrorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorBody{Error: msg})
}

// writeJSON encodes before writing, so an encoding failure can still become a 500.
func writeJSON(w http.ResponseWriter, code int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		code = http.StatusInternalServerError
		buf.Reset()
		_ = json.NewEncoder(&buf).Encode(ErrorBody{Error: "encoding the answer: " + err.Error()})
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// statusRecorder remembers the answer's status, for the log and for the panic handler,
// which can only send a 500 if nothing was sent yet.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer (flush, deadlines), which
// handlers mounted with Handle, such as /metrics, may use.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := asRecorder(w)
		next.ServeHTTP(rec, r)
		s.log.Debug("agent API request", "method", r.Method, "path", r.URL.Path,
			"status", rec.code, "duration", time.Since(start))
	})
}

// recoverPanics turns a panic in a handler (a Source bug) into a 500 instead of a dropped
// connection, and keeps the agent up.
func (s *Server) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := asRecorder(w)
		defer func() {
			p := recover()
			if p == nil {
				return
			}
			if p == http.ErrAbortHandler { //nolint:errorlint // the sentinel is compared, by net/http too
				panic(p)
			}
			s.log.Error("agent API handler panicked", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(p))
			if rec.code == 0 {
				writeError(rec, http.StatusInternalServerError, fmt.Sprintf("internal error serving %s: %v", r.URL.Path, p))
			}
		}()
		next.ServeHTTP(rec, r)
	})
}

func asRecorder(w http.ResponseWriter) *statusRecorder {
	if rec, ok := w.(*statusRecorder); ok {
		return rec
	}
	return &statusRecorder{ResponseWriter: w}
}
