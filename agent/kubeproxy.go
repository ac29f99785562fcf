package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// DefaultKubeProxyMetricsAddress is where kube-proxy serves its metrics, /proxyMode among
// them, unless told otherwise (its --metrics-bind-address). The agent runs in the node's
// network namespace, so the node's loopback is its own.
const DefaultKubeProxyMetricsAddress = "127.0.0.1:10249"

// SupportedProxyModes are the kube-proxy modes podroute is tested with. Pods reach Services
// through kube-proxy's rules; podroute routes the pod addresses those rules translate to.
var SupportedProxyModes = []string{"iptables", "nftables"}

const (
	// kubeProxyTimeout bounds one check: kube-proxy answers from the node's loopback at once,
	// or not at all.
	kubeProxyTimeout = 2 * time.Second
	// kubeProxyEvery is how often kube-proxy is checked again, so that one started after the
	// agent (or stopped, or reconfigured) is seen.
	kubeProxyEvery = 30 * time.Second
)

// kubeProxyState is the outcome of one check of kube-proxy.
type kubeProxyState struct {
	// Mode is the mode kube-proxy reported; empty when nothing answered with one.
	Mode string
	// Problem says why Services may not work on this node; empty when kube-proxy runs in a
	// supported mode.
	Problem string
	// key identifies the outcome without its details (an error's wording), so a lasting
	// problem is logged once.
	key string
}

var modeToken = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

// probeKubeProxy asks kube-proxy at addr (host:port) for its mode, as
// `curl http://127.0.0.1:10249/proxyMode` does: kube-proxy answers 200 with the bare mode
// ("iptables", "nftables", "ipvs").
func probeKubeProxy(ctx context.Context, client *http.Client, addr string) kubeProxyState {
	u := "http://" + addr + "/proxyMode"
	absent := func(why string) kubeProxyState {
		return kubeProxyState{key: "absent", Problem: fmt.Sprintf(
			"kube-proxy not found: %s: Services need kube-proxy, in %s mode, on every node "+
				"(--kube-proxy-metrics-address says where it serves its metrics; empty turns this check off)",
			why, strings.Join(SupportedProxyModes, " or "))}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return absent(fmt.Sprintf("%s: %v", u, err))
	}
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return absent(fmt.Sprintf("no answer at %s (%v)", u, err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	if err != nil {
		return absent(fmt.Sprintf("reading the answer of %s: %v", u, err))
	}
	if resp.StatusCode != http.StatusOK {
		st := absent(fmt.Sprintf("%s answered %q, not kube-proxy's mode", u, resp.Status))
		st.key = fmt.Sprintf("status:%d", resp.StatusCode)
		return st
	}
	mode := strings.TrimSpace(string(body))
	if !modeToken.MatchString(mode) {
		st := absent(fmt.Sprintf("%s answered %q, not kube-proxy's mode", u, mode))
		st.key = "garbled"
		return st
	}
	st := kubeProxyState{Mode: mode, key: "mode:" + mode}
	if !slices.Contains(SupportedProxyModes, mode) {
		st.Problem = fmt.Sprintf("kube-proxy runs in %s mode, which podroute does not support: "+
			"run it in %s mode (its --proxy-mode)", mode, strings.Join(SupportedProxyModes, " or "))
	}
	return st
}

// watchKubeProxy checks kube-proxy now and every kubeProxyEvery until ctx ends, off the
// reconcile loop: a check never delays a pass, and a slow or silent kube-proxy costs at most
// kubeProxyTimeout of this goroutine's time.
func (a *Agent) watchKubeProxy(ctx context.Context) {
	client := &http.Client{
		Timeout: kubeProxyTimeout,
		// The node's loopback, never through a proxy from the environment; no connection
		// is kept between checks.
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	}
	every := a.kubeProxyEvery
	if every <= 0 {
		every = kubeProxyEvery
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, kubeProxyTimeout)
		st := probeKubeProxy(cctx, client, a.cfg.KubeProxyMetricsAddress)
		cancel()
		if ctx.Err() != nil {
			return
		}
		a.setKubeProxy(st)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// setKubeProxy records a check for the API and logs when its outcome changes: a problem is
// said once, not every check, and said to be over when it is.
func (a *Agent) setKubeProxy(st kubeProxyState) {
	prev := *a.kubeProxy.Swap(&st)
	if st.key == prev.key {
		return
	}
	if (st.Mode != "") != (prev.Mode != "") {
		a.poke() // whether this node advertises Service addresses depends on it
	}
	switch {
	case st.Problem != "":
		a.log.Warn("kube-proxy", "node", a.cfg.NodeName, "problem", st.Problem)
	case prev.Problem != "":
		a.log.Info("kube-proxy found: problem cleared", "node", a.cfg.NodeName, "mode", st.Mode, "was", prev.Problem)
	default:
		a.log.Info("kube-proxy found", "node", a.cfg.NodeName, "mode", st.Mode)
	}
}
