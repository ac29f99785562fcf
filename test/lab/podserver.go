package lab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podroute/podroute/test/kube"
)

// PodServer is agnhost netexec (Kubernetes' e2e test server) running in a pod's network
// namespace, in a UTS namespace of its own whose host name is the pod's name, as a
// container's is: GET /hostname answers the pod's name, /clientip the address the request
// came from (host:port).
type PodServer struct {
	Pod *Pod
	// Port is the HTTP port.
	Port uint16
	// Log is agnhost's output.
	Log string

	d *daemon
}

// StartServer runs `agnhost netexec --http-port=port` (agnhost from the Kubernetes
// binaries hack/kube/build.sh builds, beside kube-proxy) in the pod and waits until it
// answers /hostname from inside the pod. It is stopped in t.Cleanup.
func (p *Pod) StartServer(t testing.TB, port uint16) *PodServer {
	t.Helper()
	s, err := p.startServer(t, port)
	if err != nil {
		t.Fatalf("lab: HTTP server in pod %s: %v", p.Name, err)
	}
	return s
}

func (p *Pod) startServer(t testing.TB, port uint16) (*PodServer, error) {
	agnhost := p.Node.lab.kubeBinary("agnhost")
	if st, err := os.Stat(agnhost); err != nil || st.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("%s missing or not executable: run hack/kube/build.sh (make setup)", agnhost)
	}
	s := &PodServer{Pod: p, Port: port, Log: filepath.Join(p.Node.Dir, "agnhost-"+p.Name+".log")}
	// unshare --uts gives the server a host name of its own (set before agnhost starts);
	// the machine's is untouched. sh and unshare exec in place: the process is agnhost.
	script := `printf %s "$1" > /proc/sys/kernel/hostname && shift && exec "$0" "$@"`
	args := []string{"--uts", "--", "sh", "-c", script, agnhost, p.Name,
		"netexec", fmt.Sprintf("--http-port=%d", port), "--udp-port=-1"}
	d, err := startDaemon([]string{"--net=" + p.NetNS.Path}, "agnhost", s.Log, "unshare", args...)
	if err != nil {
		return nil, err
	}
	s.d = d
	t.Cleanup(func() {
		if err := s.d.stop(5 * time.Second); err != nil {
			t.Errorf("lab: agnhost in %s: %v", p.Name, err)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = Poll(ctx, 30*time.Second, 100*time.Millisecond, func() error {
		if !d.running() {
			cancel()
			return fmt.Errorf("agnhost exited: %s", Tail(s.output(), 10))
		}
		name, err := s.Get("/hostname")
		if err == nil && name != p.Name {
			err = fmt.Errorf("/hostname answered %q, want %q", name, p.Name)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Get asks the server for path from inside its pod (at its loopback) and returns the body.
func (s *PodServer) Get(path string) (string, error) {
	c := &http.Client{
		Transport: &http.Transport{DialContext: kube.DialerIn(s.Pod.NetNS.Path), DisableKeepAlives: true},
		Timeout:   2 * time.Second,
	}
	return GetText(c, "http://"+netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), s.Port).String()+path)
}

// GetText asks url with c and returns the body, trimmed; anything but 200 is an error naming
// the URL, the status and the body.
func GetText(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %q", url, resp.Status, b)
	}
	return strings.TrimSpace(string(b)), nil
}

func (s *PodServer) output() string {
	b, _ := os.ReadFile(s.Log)
	return string(b)
}
