package lab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podroute/podroute/test/kube"
)

// KubeProxyMetricsAddress is where kube-proxy serves its metrics and /proxyMode by default,
// on the node's loopback: where the agent looks for it.
const KubeProxyMetricsAddress = "127.0.0.1:10249"

// KubeProxyOptions configures Node.StartKubeProxy.
type KubeProxyOptions struct {
	// Binary is the kube-proxy executable (default: kube-proxy beside the lab's kubelet:
	// the lab's Kube.BinDir, else $PODROUTE_KUBE_BIN, else kube.DefaultBinDir).
	Binary string
	// Mode is --proxy-mode: iptables (default) or nftables.
	Mode string
	// ExtraArgs are appended to kube-proxy's command line.
	ExtraArgs []string
}

// KubeProxy is the real kube-proxy run as a process inside a node's network namespace, as
// the node's kube-proxy DaemonSet pod would (host network), with the lab's kubeconfig. Its
// rules live in the node's namespace only; it is told to leave what is shared with the
// machine alone (conntrack table size and timeouts, its OOM score).
type KubeProxy struct {
	Node *Node
	// Mode is the proxy mode it runs in.
	Mode string
	// Log is its output (each start appends).
	Log string

	binary string
	args   []string
	d      *daemon
}

// kubeBinary is a Kubernetes executable of the version the lab's API server runs, from the
// directory hack/kube/build.sh fills (the kubelet's).
func (l *Lab) kubeBinary(name string) string {
	return filepath.Join(filepath.Dir(l.kubeletBinary("")), name)
}

// StartKubeProxy starts kube-proxy in the node's namespace and waits until it answers
// /proxyMode with its mode. It is stopped in t.Cleanup, and its rules are then removed from
// the node's namespace (Stop).
func (n *Node) StartKubeProxy(t testing.TB, opts KubeProxyOptions) *KubeProxy {
	t.Helper()
	return StartKubeProxies(t, []*Node{n}, opts)[0]
}

// StartKubeProxies is StartKubeProxy on every node at once, each process starting and
// stopping beside the others': a lab's nodes wait for none but their own.
func StartKubeProxies(t testing.TB, nodes []*Node, opts KubeProxyOptions) []*KubeProxy {
	t.Helper()
	ks := make([]*KubeProxy, len(nodes))
	for i, n := range nodes {
		k, err := n.newKubeProxy(opts)
		if err != nil {
			t.Fatalf("lab: kube-proxy on %s: %v", n.Name, err)
		}
		ks[i] = k
	}
	// One cleanup for all, registered before any starts: every process started is stopped.
	t.Cleanup(func() {
		errs := eachKubeProxy(ks, (*KubeProxy).Stop)
		for i, k := range ks {
			if errs[i] != nil {
				t.Errorf("lab: %v", errs[i])
			}
			if t.Failed() {
				t.Logf("lab: kube-proxy log of %s (%s):\n%s", k.Node.Name, k.Log, Tail(k.Output(), 40))
			}
		}
	})
	errs := eachKubeProxy(ks, func(k *KubeProxy) error {
		if err := k.Start(); err != nil {
			return err
		}
		return k.wait(60 * time.Second)
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("lab: kube-proxy on %s: %v", ks[i].Node.Name, err)
		}
	}
	return ks
}

// eachKubeProxy runs f on every kube-proxy concurrently and returns the errors, in order.
func eachKubeProxy(ks []*KubeProxy, f func(*KubeProxy) error) []error {
	errs := make([]error, len(ks))
	var wg sync.WaitGroup
	for i, k := range ks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(k)
		}()
	}
	wg.Wait()
	return errs
}

func (n *Node) newKubeProxy(opts KubeProxyOptions) (*KubeProxy, error) {
	l := n.lab
	k := &KubeProxy{Node: n, Mode: opts.Mode, Log: filepath.Join(n.Dir, "kube-proxy.log"), binary: opts.Binary}
	if k.Mode == "" {
		k.Mode = "iptables"
	}
	if k.binary == "" {
		k.binary = l.kubeBinary("kube-proxy")
	}
	if !executable(k.binary) {
		return nil, fmt.Errorf("%s missing or not executable: run hack/kube/build.sh (make setup)", k.binary)
	}
	var cidrs []string
	for _, p := range l.opts.ClusterCIDRs {
		cidrs = append(cidrs, p.String())
	}
	k.args = append([]string{
		"--kubeconfig", l.Kubeconfig,
		"--hostname-override", n.Name,
		"--proxy-mode", k.Mode,
		"--cluster-cidr", strings.Join(cidrs, ","),
		"--metrics-bind-address", KubeProxyMetricsAddress,
		// Conntrack's table size is the machine's, not the namespace's: leave it, and the
		// timeouts, as they are.
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		// 0 instead of the default -999: the lab's processes are not to outlive the
		// machine's others under memory pressure.
		"--oom-score-adj=0",
		// No route_localnet, and no NodePort on 127.0.0.1, which the agent's health and
		// metrics share.
		"--iptables-localhost-nodeports=false",
	}, opts.ExtraArgs...)
	return k, nil
}

// wait waits until kube-proxy answers /proxyMode with its mode.
func (k *KubeProxy) wait(timeout time.Duration) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := Poll(ctx, timeout, 200*time.Millisecond, func() error {
		if !k.d.running() {
			cancel() // no use waiting
			k.d.mu.Lock()
			defer k.d.mu.Unlock()
			return fmt.Errorf("kube-proxy exited: %v", errOrOK(k.d.waitErr))
		}
		mode, err := k.ProxyMode()
		if err == nil && mode != k.Mode {
			err = fmt.Errorf("/proxyMode says %q, want %q", mode, k.Mode)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("%w\n%s", err, Tail(k.Output(), 20))
	}
	return nil
}

// Output is kube-proxy's log so far (every start).
func (k *KubeProxy) Output() string {
	b, err := os.ReadFile(k.Log)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

// Args is kube-proxy's command line (after the binary).
func (k *KubeProxy) Args() []string { return k.args }

// Start starts kube-proxy (again, after Stop). It is an error if it runs already.
func (k *KubeProxy) Start() error {
	if k.d.running() {
		return fmt.Errorf("kube-proxy of %s is running", k.Node.Name)
	}
	d, err := startDaemon(k.nsenter(), "kube-proxy", k.Log, k.binary, k.args...)
	if err != nil {
		return err
	}
	k.d = d
	return nil
}

// Stop SIGTERMs kube-proxy (killing it after 10 s), then removes its rules from the node's
// namespace with `kube-proxy --cleanup`, as a node taken out of service would. Stopping a
// stopped kube-proxy cleans up again.
func (k *KubeProxy) Stop() error {
	if k.d == nil {
		return nil // never started
	}
	if err := k.d.stop(10 * time.Second); err != nil {
		return fmt.Errorf("kube-proxy of %s: %w", k.Node.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append(k.nsenter(), "--", k.binary, "--cleanup")
	out, cleanErr := exec.CommandContext(ctx, "nsenter", args...).CombinedOutput()
	// --cleanup also tears down IPVS, and fails without the ipset tool even where IPVS never
	// ran: what counts is that no rule of kube-proxy's is left. It leaves the chains it
	// shares with kubelet (KUBE-FIREWALL, KUBE-MARK-MASQ, its canaries) to kubelet, which
	// the lab does not run here: remove them too.
	if err := k.removeSharedChains(ctx); err != nil {
		return fmt.Errorf("kube-proxy of %s: %w", k.Node.Name, err)
	}
	left, err := k.Leftovers()
	if err != nil {
		return fmt.Errorf("kube-proxy of %s: after --cleanup: %w", k.Node.Name, err)
	}
	if len(left) > 0 {
		return fmt.Errorf("kube-proxy --cleanup in %s (%v) left %d rules and chains:\n%s\n%s",
			k.Node.NetNS.Name, errOrOK(cleanErr), len(left), strings.Join(left, "\n"), Tail(string(out), 10))
	}
	return nil
}

// removeSharedChains deletes every KUBE- chain of the node's namespace, and the jumps to
// them, in each table of both families, with one iptables-restore --noflush per family.
func (k *KubeProxy) removeSharedChains(ctx context.Context) error {
	for _, fam := range []string{"iptables", "ip6tables"} {
		saved, err := k.Node.Exec(ctx, fam+"-save")
		if err != nil {
			return err
		}
		script := kubeChainsRemoval(saved)
		if script == "" {
			continue
		}
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", k.Node.NetNS.Name, fam+"-restore", "--noflush")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s-restore in %s: %v: %s\n%s", fam, k.Node.NetNS.Name, err, strings.TrimSpace(string(out)), script)
		}
	}
	return nil
}

// kubeChainsRemoval turns iptables-save output into an iptables-restore --noflush script
// that deletes the jumps from other chains to KUBE- chains, then flushes (by declaring
// them) and deletes the KUBE- chains; "" when there are none.
func kubeChainsRemoval(saved string) string {
	var out strings.Builder
	var table string
	var chains, jumps []string
	flush := func() {
		if table == "" || len(chains) == 0 {
			return
		}
		out.WriteString(table + "\n")
		for _, c := range chains {
			fmt.Fprintf(&out, ":%s - [0:0]\n", c)
		}
		for _, j := range jumps {
			out.WriteString(j + "\n")
		}
		for _, c := range chains {
			fmt.Fprintf(&out, "-X %s\n", c)
		}
		out.WriteString("COMMIT\n")
	}
	for _, line := range strings.Split(saved, "\n") {
		switch f := strings.Fields(line); {
		case strings.HasPrefix(line, "*"):
			table, chains, jumps = line, nil, nil
		case line == "COMMIT":
			flush()
			table = ""
		case strings.HasPrefix(line, ":KUBE-") && len(f) > 0:
			chains = append(chains, strings.TrimPrefix(f[0], ":"))
		case len(f) >= 2 && f[0] == "-A" && !strings.HasPrefix(f[1], "KUBE-") &&
			(strings.Contains(line, " -j KUBE-") || strings.Contains(line, " -g KUBE-")):
			jumps = append(jumps, "-D"+strings.TrimPrefix(line, "-A"))
		}
	}
	return out.String()
}

// Leftovers are the lines of the node namespace's rules that are kube-proxy's (KUBE-
// chains, in any table of either family, or its nftables tables).
func (k *KubeProxy) Leftovers() ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var left []string
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := k.Node.Exec(ctx, tool)
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "KUBE-") {
				left = append(left, line)
			}
		}
	}
	if _, err := exec.LookPath("nft"); err == nil {
		out, err := k.Node.Exec(ctx, "nft", "list", "tables")
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasSuffix(strings.TrimSpace(line), " kube-proxy") {
				left = append(left, line)
			}
		}
	}
	return left, nil
}

// Running reports whether the kube-proxy process is alive.
func (k *KubeProxy) Running() bool { return k.d.running() }

// ProxyMode asks kube-proxy for its mode at /proxyMode, from inside the node's namespace, as
// the agent does.
func (k *KubeProxy) ProxyMode() (string, error) {
	c := &http.Client{
		Transport: &http.Transport{DialContext: kube.DialerIn(k.Node.NetNS.Path), DisableKeepAlives: true},
		Timeout:   2 * time.Second,
	}
	resp, err := c.Get("http://" + KubeProxyMetricsAddress + "/proxyMode")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	if err != nil {
		return "", fmt.Errorf("/proxyMode: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("/proxyMode: %s", resp.Status)
	}
	return strings.TrimSpace(string(b)), nil
}

// Rules is the node namespace's ruleset of kube-proxy's mode (iptables-save of both
// families, or nft list ruleset), to look at what it made of the Services.
func (k *KubeProxy) Rules() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if k.Mode == "nftables" {
		return k.Node.Exec(ctx, "nft", "list", "ruleset")
	}
	v4, err := k.Node.Exec(ctx, "iptables-save")
	if err != nil {
		return "", err
	}
	v6, err := k.Node.Exec(ctx, "ip6tables-save")
	return v4 + v6, err
}

// nsenter enters the node's network namespace only: kube-proxy keeps the test process's
// mount namespace (ip netns exec would remount /sys).
func (k *KubeProxy) nsenter() []string { return []string{"--net=" + k.Node.NetNS.Path} }
