// Package conformance_test runs Kubernetes' own end-to-end suite, the e2e.test binary built
// from k8s.io/kubernetes (hack/kube/build.sh), against a complete cluster with podroute as its
// network (package test/cluster): real kubelets and containerd, kube-proxy, CoreDNS.
//
// The suites, run against each cluster one after the other:
//
//   - conformance: the 41 `[sig-network] ... [Conformance]` specs, all of which must run
//     and pass;
//   - network: the other sig-network specs a routed CNI is judged by that can run on this
//     kind of cluster (NetworkFocus, NetworkSkip: Networking, Services, DNS, Conntrack,
//     EndpointSlice, Proxy and the dual-stack specs; not [Serial], [Disruptive], [Flaky],
//     [Slow], SCTP or other [Feature:...] specs);
//   - netpol: the 48 `[Feature:NetworkPolicy]` specs (NetpolFocus), less the three that
//     send SCTP when the kernel has no SCTP;
//   - netpol-ci: a representative subset of netpol (NetpolCISpecs).
//
// By default it runs the conformance suite, with kube-proxy in iptables mode, as `make test`
// does on every change; `make conformance` runs conformance, network and netpol in both
// modes:
//
//	go test -count=1 -timeout 90m ./test/conformance/
//
// Environment:
//
//	PODROUTE_E2E_MODES   kube-proxy modes, comma-separated, one cluster each (default
//	                     "iptables"; `make conformance` runs "iptables,nftables")
//	PODROUTE_E2E_SUITES  the suites to run, comma-separated (default "conformance,netpol-ci",
//	                     what CI runs; `make conformance` runs "conformance,network,netpol")
//	PODROUTE_E2E_FOCUS   run this ginkgo focus instead of the suites (with
//	                     PODROUTE_E2E_SKIP), e.g. to run one spec against the cluster
//	PODROUTE_E2E_PROCS   parallel ginkgo processes (default 4; 1 runs e2e.test alone, serially)
//	PODROUTE_E2E_REPORT  directory for ginkgo's JSON and JUnit reports and the e2e log
//	                     (default: the test's temporary directory)
package conformance_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podroute/podroute/test/cluster"
	"github.com/podroute/podroute/test/kube"
	"github.com/podroute/podroute/test/lab"
)

const (
	// ConformanceFocus selects the sig-network conformance specs: 41 in v1.32.4.
	ConformanceFocus = `\[sig-network\].*\[Conformance\]`
	conformanceSpecs = 41

	// NetworkFocus and NetworkSkip select the network suite (86 specs in v1.32.4).
	NetworkFocus = `\[sig-network\] (Networking|Services|DNS|HostPort|Conntrack|EndpointSlice|Proxy|\[Feature:IPv6DualStack\])`
	NetworkSkip  = `\[Conformance\]|\[Serial\]|\[Disruptive\]|\[Flaky\]|\[Slow\]|SCTP|\[Feature:[^I]`

	// NetpolFocus selects the NetworkPolicy specs of test/e2e/network/netpol: 48 in v1.32.4,
	// none of them [Serial], [Slow], [Disruptive] or [Flaky], so they run in parallel like
	// the others. Three of them are also [Feature:SCTPConnectivity]: they send SCTP, which
	// needs SCTP in the kernel (the nodes share this machine's); without it they are
	// skipped (NetpolSCTPSkip). The two specs about SCTP policies "even if the plugin
	// doesn't support SCTP" send TCP only and always run.
	NetpolFocus    = `\[Feature:NetworkPolicy\]`
	NetpolSCTPSkip = `\[Feature:SCTPConnectivity\]`
	netpolSpecs    = 48
	netpolSCTP     = 3
)

// NetpolCISpecs are the netpol-ci suite: one or two specs of each thing NetworkPolicy
// enforcement must get right, about a fifth of the netpol suite's time. Each is the leaf
// text of a spec of "[sig-network] Netpol NetworkPolicy between server and client" (TCP).
var NetpolCISpecs = []string{
	"should support a 'default-deny-ingress' policy",                                                     // ingress default deny
	"should support a 'default-deny-all' policy",                                                         // ingress and egress default deny
	"should enforce policy to allow traffic from pods within server namespace based on PodSelector",      // ingress allow, podSelector
	"should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector", // namespaceSelector
	"should enforce policy based on PodSelector and NamespaceSelector",                                   // both in one peer
	"should allow ingress access on one named port",                                                      // named port, ingress
	"should allow egress access on one named port",                                                       // named port, egress
	"should deny egress from pods based on PodSelector",                                                  // egress deny
	"should enforce except clause while egress access to server in CIDR block",                           // ipBlock with except
	"should enforce updated policy",                                                                      // a policy changed in place
	"should stop enforcing policies after they are deleted",                                              // the last policy deleted
}

// netpolCIFocus is one regular expression that selects exactly NetpolCISpecs.
func netpolCIFocus() string {
	alts := make([]string, len(NetpolCISpecs))
	for i, s := range NetpolCISpecs {
		alts[i] = regexp.QuoteMeta(s)
	}
	return `Netpol NetworkPolicy between server and client (` + strings.Join(alts, "|") + `) \[Feature:NetworkPolicy\]`
}

// kernelHasSCTP tells whether this kernel speaks SCTP: the nodes are network namespaces of
// this machine and share its kernel.
func kernelHasSCTP() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// netpolSuite is the netpol suite as this kernel can run it.
func netpolSuite() suite {
	if kernelHasSCTP() {
		return suite{"netpol", NetpolFocus, "", netpolSpecs}
	}
	return suite{"netpol", NetpolFocus, NetpolSCTPSkip, netpolSpecs - netpolSCTP}
}

// suite is a named ginkgo selection; want is the number of specs it must run (0: any).
type suite struct {
	name, focus, skip string
	want              int
}

var suites = map[string]suite{
	"conformance": {"conformance", ConformanceFocus, "", conformanceSpecs},
	"network":     {"network", NetworkFocus, NetworkSkip, 0},
	"netpol":      netpolSuite(),
	"netpol-ci":   {"netpol-ci", netpolCIFocus(), "", len(NetpolCISpecs)},
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func TestConformance(t *testing.T) {
	var run []suite
	if focus := os.Getenv("PODROUTE_E2E_FOCUS"); focus != "" {
		run = append(run, suite{name: "focus", focus: focus, skip: os.Getenv("PODROUTE_E2E_SKIP")})
	} else {
		for _, name := range strings.Split(env("PODROUTE_E2E_SUITES", "conformance,netpol-ci"), ",") {
			s, ok := suites[strings.TrimSpace(name)]
			if !ok {
				t.Fatalf("PODROUTE_E2E_SUITES: no suite %q (conformance, network, netpol, netpol-ci)", name)
			}
			run = append(run, s)
		}
	}
	for _, mode := range strings.Split(env("PODROUTE_E2E_MODES", cluster.ProxyModeIPTables), ",") {
		mode = strings.TrimSpace(mode)
		t.Run("kube-proxy="+mode, func(t *testing.T) {
			c := cluster.Start(t, cluster.Options{ProxyMode: mode})
			procs, err := strconv.Atoi(env("PODROUTE_E2E_PROCS", "4"))
			if err != nil || procs < 1 {
				t.Fatalf("PODROUTE_E2E_PROCS=%q: want a positive number", os.Getenv("PODROUTE_E2E_PROCS"))
			}
			for _, s := range run {
				t.Run(s.name, func(t *testing.T) {
					report := os.Getenv("PODROUTE_E2E_REPORT")
					if report == "" {
						report = t.TempDir()
					} else {
						report = filepath.Join(report, mode, s.name)
					}
					res := RunE2E(t, c, E2EOptions{Focus: s.focus, Skip: s.skip, ReportDir: report, Procs: procs})
					if table, err := specTable(filepath.Join(report, "report.json")); err != nil {
						t.Errorf("ginkgo's report: %v", err)
					} else if err := os.WriteFile(filepath.Join(report, "specs.md"), []byte(table), 0o644); err != nil {
						t.Error(err)
					}
					t.Logf("kube-proxy %s, %s: %s", mode, s.name, res.Summary)
					if s.want > 0 && res.Ran != s.want {
						t.Errorf("ran %d specs, want %d: the focus %q selects other specs than expected", res.Ran, s.want, s.focus)
					}
					if res.Ran == 0 {
						t.Errorf("no spec ran")
					}
					if res.Failed > 0 || res.Err != nil {
						t.Errorf("e2e: %d failed (%v); report in %s", res.Failed, res.Err, report)
					}
				})
			}
		})
	}
}

// E2EOptions configures RunE2E.
type E2EOptions struct {
	Focus, Skip string
	// ReportDir receives e2e.log, ginkgo's report.json and junit_01.xml.
	ReportDir string
	// Timeout bounds the whole suite (default 80 minutes).
	Timeout time.Duration
	// Procs above 1 runs the specs in that many parallel processes under the ginkgo CLI,
	// as Kubernetes' own CI does (none of the sig-network conformance specs is [Serial]).
	Procs int
}

// E2EResult is what a run of e2e.test ended with.
type E2EResult struct {
	// Ran, Passed and Failed are the counts of ginkgo's summary; Summary its two lines.
	Ran, Passed, Failed int
	Summary             string
	// Err is e2e.test's exit error, if any.
	Err error
}

var (
	ranRE    = regexp.MustCompile(`(?m)^Ran (\d+) of (\d+) Specs in .*$`)
	resultRE = regexp.MustCompile(`(?m)^(SUCCESS|FAIL)! .*? (\d+) Passed \| (\d+) Failed.*$`)
)

// RunE2E runs e2e.test against the cluster from this machine's network namespace, as a
// person would with the cluster's kubeconfig, streaming its output to the test's standard
// output and ReportDir/e2e.log.
func RunE2E(t *testing.T, c *cluster.Cluster, opts E2EOptions) E2EResult {
	t.Helper()
	bin := filepath.Join(c.Lab.Kube.BinDir, "e2e.test")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("e2e.test %s missing (%v): run hack/kube/build.sh", kube.KubeVersion, err)
	}
	if opts.Timeout == 0 {
		opts.Timeout = 80 * time.Minute
	}
	if err := os.MkdirAll(opts.ReportDir, 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(opts.ReportDir, "e2e.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	e2eArgs := []string{
		"--kubeconfig=" + c.Kubeconfig,
		"--kubectl-path=" + filepath.Join(c.Lab.Kube.BinDir, "kubectl"),
		"--provider=skeleton",
		"--dns-domain=" + cluster.DNSDomain,
		// The schedulable nodes: specs that need several skip themselves without it.
		"--num-nodes=" + strconv.Itoa(len(c.Nodes)-1),
		"--report-dir=" + opts.ReportDir,
	}
	ginkgoArgs := []string{
		"focus=" + opts.Focus,
		"timeout=" + opts.Timeout.String(),
		"no-color",
		"v",
		"json-report=report.json",
		"junit-report=junit.xml",
	}
	if opts.Skip != "" {
		ginkgoArgs = append(ginkgoArgs, "skip="+opts.Skip)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout+5*time.Minute)
	defer cancel()
	var cmd *exec.Cmd
	if opts.Procs > 1 {
		ginkgo := filepath.Join(c.Lab.Kube.BinDir, "ginkgo")
		if _, err := os.Stat(ginkgo); err != nil {
			t.Fatalf("ginkgo %s missing (%v): run hack/kube/build.sh", ginkgo, err)
		}
		args := []string{"--procs=" + strconv.Itoa(opts.Procs), "--output-dir=" + opts.ReportDir}
		for _, a := range ginkgoArgs {
			args = append(args, "--"+a)
		}
		args = append(append(args, bin, "--"), e2eArgs...)
		cmd = exec.CommandContext(ctx, ginkgo, args...)
	} else {
		// Alone, e2e.test writes its reports relative to its working directory, ReportDir.
		args := e2eArgs
		for _, a := range ginkgoArgs {
			args = append(args, "--ginkgo."+a)
		}
		cmd = exec.CommandContext(ctx, bin, args...)
	}
	cmd.Dir = opts.ReportDir
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig, "HOME="+opts.ReportDir)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var out strings.Builder
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			out.WriteString(line + "\n")
		}
	}()
	t.Logf("e2e: %s (log %s)", strings.Join(cmd.Args, " "), logPath)
	start := time.Now()
	runErr := cmd.Run()
	pw.Close()
	<-done
	res := E2EResult{Err: runErr}
	text := out.String()
	if m := ranRE.FindAllStringSubmatch(text, -1); len(m) > 0 {
		res.Ran, _ = strconv.Atoi(m[len(m)-1][1])
		res.Summary = m[len(m)-1][0]
	}
	if m := resultRE.FindAllStringSubmatch(text, -1); len(m) > 0 {
		last := m[len(m)-1]
		res.Passed, _ = strconv.Atoi(last[2])
		res.Failed, _ = strconv.Atoi(last[3])
		res.Summary += "\n" + last[0]
	}
	if res.Summary == "" {
		t.Errorf("e2e.test printed no ginkgo summary; last lines:\n%s", lab.Tail(text, 40))
	}
	if res.Failed > 0 || runErr != nil {
		t.Logf("e2e: failures:\n%s", failures(text))
	}
	t.Logf("e2e: done in %v", time.Since(start).Round(time.Second))
	return res
}

// failures picks ginkgo's "Summarizing N Failures" block out of the output.
func failures(text string) string {
	i := strings.Index(text, "Summarizing ")
	if i < 0 {
		return lab.Tail(text, 60)
	}
	return text[i:]
}

// specTable renders ginkgo's JSON report as a Markdown table of every spec the selection
// ran or skipped at run time (with the reason), sorted by name; specs the focus left out
// are not listed.
func specTable(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var suites []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeText            string
			LeafNodeType            string
			State                   string
			RunTime                 time.Duration
			Failure                 struct{ Message string }
		}
	}
	if err := json.Unmarshal(b, &suites); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	var rows []string
	for _, s := range suites {
		for _, r := range s.SpecReports {
			if r.LeafNodeType != "It" || (r.State == "skipped" && r.Failure.Message == "") {
				continue // a suite node or report hook, or a spec the focus did not select
			}
			note := ""
			if r.State != "passed" {
				note = strings.Join(strings.Fields(r.Failure.Message), " ")
				if len(note) > 160 {
					note = note[:160] + "..."
				}
				note = strings.ReplaceAll(note, "|", "\\|")
			}
			name := strings.Join(append(append([]string(nil), r.ContainerHierarchyTexts...), r.LeafNodeText), " ")
			rows = append(rows, fmt.Sprintf("| %s | %s | %.0f s | %s |", name, r.State, r.RunTime.Seconds(), note))
		}
	}
	sort.Strings(rows)
	return "| spec | result | time | note |\n|---|---|---:|---|\n" + strings.Join(rows, "\n") + "\n", nil
}

// TestSuiteSelection dry-runs e2e.test (no cluster: ginkgo only walks its specs) with each
// suite's focus and skip and checks that it selects the specs it claims: the counts of
// conformance and netpol, and for netpol-ci exactly NetpolCISpecs, once each.
func TestSuiteSelection(t *testing.T) {
	bin := filepath.Join(kube.DefaultBinDir, "e2e.test")
	if d := os.Getenv(kube.BinDirEnv); d != "" {
		bin = filepath.Join(d, "e2e.test")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("e2e.test %s missing (%v): run hack/kube/build.sh", kube.KubeVersion, err)
	}
	for _, name := range []string{"conformance", "netpol", "netpol-ci"} {
		s := suites[name]
		t.Run(name, func(t *testing.T) {
			specs := dryRun(t, bin, s.focus, s.skip)
			if len(specs) != s.want {
				t.Errorf("focus %q skip %q selects %d specs, want %d:\n%s", s.focus, s.skip, len(specs), s.want, strings.Join(specs, "\n"))
			}
			if name != "netpol-ci" {
				return
			}
			for _, leaf := range NetpolCISpecs {
				n := 0
				for _, sp := range specs {
					if strings.HasSuffix(sp, " "+leaf+" [Feature:NetworkPolicy]") {
						n++
					}
				}
				if n != 1 {
					t.Errorf("netpol-ci: %q selects %d specs, want 1", leaf, n)
				}
			}
			t.Logf("netpol-ci:\n%s", strings.Join(specs, "\n"))
		})
	}
}

// dryRun lists the full texts of the specs e2e.test selects with focus and skip.
func dryRun(t *testing.T, bin, focus, skip string) []string {
	t.Helper()
	dir := t.TempDir()
	args := []string{"--provider=skeleton", "--kubeconfig=/dev/null", "--ginkgo.dry-run", "--ginkgo.no-color",
		"--ginkgo.focus=" + focus, "--ginkgo.json-report=report.json"}
	if skip != "" {
		args = append(args, "--ginkgo.skip="+skip)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("e2e.test dry run: %v\n%s", err, lab.Tail(string(out), 20))
	}
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeText            string
			LeafNodeType            string
			State                   string
		}
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	var specs []string
	for _, s := range rep {
		for _, r := range s.SpecReports {
			if r.LeafNodeType == "It" && r.State == "passed" {
				specs = append(specs, strings.Join(append(append([]string(nil), r.ContainerHierarchyTexts...), r.LeafNodeText), " "))
			}
		}
	}
	sort.Strings(specs)
	return specs
}
