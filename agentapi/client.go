package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"
)

// maxResponse bounds what the client reads: a route table of a large cluster fits many
// times over, and a runaway answer does not exhaust the operator's machine.
const maxResponse = 256 << 20

// ErrNotRunning is matched (errors.Is) by client errors that mean no agent serves the socket.
var ErrNotRunning = errors.New("podroute agent is not running")

// Client reads the agent API over its unix socket. The context of each call bounds it.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a Client for the agent listening on socketPath.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		// Always the socket, whatever the URL says; and never a proxy from the environment.
		Proxy: nil,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns:          1,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 0, // the caller's context decides
	}
	return &Client{socket: socketPath, http: &http.Client{Transport: tr}}
}

// Socket is the socket path the client talks to.
func (c *Client) Socket() string { return c.socket }

// Status is the node's routing state.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.get(ctx, PathStatus, &st)
	return st, err
}

// Neighbors are the BGP peers, with the prefixes advertised to each if advertised (see
// Neighbor.Advertised for its cost).
func (c *Client) Neighbors(ctx context.Context, advertised bool) ([]Neighbor, error) {
	var ns []Neighbor
	path := PathNeighbors
	if advertised {
		path += "?advertised=true"
	}
	err := c.get(ctx, path, &ns)
	return ns, err
}

// Routes are the learned, refused and advertised prefixes.
func (c *Client) Routes(ctx context.Context) (Routes, error) {
	var rs Routes
	err := c.get(ctx, PathRoutes, &rs)
	return rs, err
}

// LoadBalancerPools are the cluster's LoadBalancerIPPools and their usage.
func (c *Client) LoadBalancerPools(ctx context.Context) (LoadBalancerPools, error) {
	var lp LoadBalancerPools
	err := c.get(ctx, PathLoadBalancerPools, &lp)
	return lp, err
}

// PodPolicies are the NetworkPolicies that select a pod and what they allow.
func (c *Client) PodPolicies(ctx context.Context, namespace, pod string) (PodPolicies, error) {
	var pp PodPolicies
	q := url.Values{"namespace": {namespace}, "pod": {pod}}
	err := c.get(ctx, PathPolicy+"?"+q.Encode(), &pp)
	return pp, err
}

// CheckPolicy tells whether a new connection would be allowed, and by which rule.
func (c *Client) CheckPolicy(ctx context.Context, q PolicyCheck) (PolicyVerdict, error) {
	var v PolicyVerdict
	err := c.get(ctx, PathPolicyCheck+"?"+q.Query().Encode(), &v)
	return v, err
}

func (c *Client) get(ctx context.Context, path string, into any) error {
	var budget time.Duration
	if dl, ok := ctx.Deadline(); ok {
		budget = time.Until(dl)
	}
	// The host is a placeholder: the transport dials the socket whatever the URL says.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://podroute-agent"+path, nil)
	if err != nil {
		return fmt.Errorf("building the request for %s: %w", path, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return describeError(c.socket, budget, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return describeError(c.socket, budget, err)
	}
	if len(body) > maxResponse {
		return fmt.Errorf("the podroute agent's answer on %s is larger than %d MiB; not reading it", path, maxResponse>>20)
	}
	if resp.StatusCode != http.StatusOK {
		return httpError(path, resp, body)
	}
	if err := json.Unmarshal(body, into); err != nil {
		return fmt.Errorf("the podroute agent sent an answer on %s that is not the expected JSON (%v); are podroutectl and the agent of compatible versions?", path, err)
	}
	return nil
}

// httpError carries the server's own error message, which says what went wrong on its side.
func httpError(path string, resp *http.Response, body []byte) error {
	var eb ErrorBody
	kind := kindOf(resp.StatusCode)
	if err := json.Unmarshal(body, &eb); err == nil && eb.Error != "" {
		err := fmt.Errorf("podroute agent: %s (HTTP %d on %s)", eb.Error, resp.StatusCode, path)
		if kind != nil {
			return MarkError(kind, err)
		}
		return err
	}
	text := strings.Join(strings.Fields(string(body)), " ")
	if len(text) > 200 {
		text = text[:200] + "..."
	}
	if text == "" {
		text = http.StatusText(resp.StatusCode)
	}
	return fmt.Errorf("podroute agent: HTTP %d on %s: %s", resp.StatusCode, path, text)
}

// clientError is an error with a message for operators, keeping the cause for errors.Is.
type clientError struct {
	msg   string
	cause error
}

func (e *clientError) Error() string { return e.msg }
func (e *clientError) Unwrap() []error {
	return []error{e.cause}
}

// notRunning also matches ErrNotRunning.
type notRunning struct{ clientError }

func (e *notRunning) Unwrap() []error { return []error{ErrNotRunning, e.cause} }

// describeError turns a transport error into one line that says what to do about it.
// budget is the time the call had, zero if unbounded.
func describeError(socket string, budget time.Duration, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOENT):
		return &notRunning{clientError{
			msg:   fmt.Sprintf("podroute agent is not running: no socket at %s (is podroute-agent running on this node? use --socket)", socket),
			cause: err,
		}}
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return &clientError{
			msg:   fmt.Sprintf("cannot read the agent socket %s: permission denied (run as root or a member of its group)", socket),
			cause: err,
		}
	case errors.Is(err, syscall.ECONNREFUSED):
		if fi, serr := os.Stat(socket); serr == nil && fi.Mode().Type() != fs.ModeSocket {
			return &clientError{msg: fmt.Sprintf("%s is not a socket (use --socket to point at the agent's)", socket), cause: err}
		}
		return &notRunning{clientError{
			msg:   fmt.Sprintf("podroute agent is not running: nothing listens on %s", socket),
			cause: err,
		}}
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		msg := fmt.Sprintf("podroute agent on %s did not answer in time (raise --timeout, or check the agent's logs)", socket)
		if budget > 0 {
			msg = fmt.Sprintf("podroute agent on %s did not answer within %s (raise --timeout, or check the agent's logs)", socket, roundBudget(budget))
		}
		return &clientError{msg: msg, cause: err}
	case errors.Is(err, context.Canceled):
		return &clientError{msg: "request to the podroute agent canceled", cause: err}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		return &clientError{
			msg:   fmt.Sprintf("podroute agent on %s closed the connection without answering (check the agent's logs)", socket),
			cause: err,
		}
	}
	return &clientError{msg: fmt.Sprintf("talking to the podroute agent on %s: %s", socket, innermost(err)), cause: err}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// roundBudget shows the budget as the operator gave it (5s, not 4.99987s).
func roundBudget(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(time.Millisecond)
	}
	return d
}

// innermost drops the url.Error and net.OpError layers, whose text repeats the fake URL
// and the socket the message already names.
func innermost(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error }) //nolint:errorlint // one layer at a time
		if !ok || u.Unwrap() == nil {
			return err
		}
		err = u.Unwrap()
	}
}
