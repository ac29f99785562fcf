// Package conformance_test runs Kubernetes' own end-to-end suite, the e2e.test binary built
// from k8s.io/kubernetes (hack/kube/build.sh), against a complete cluster with podroute as its
// network (package test/cluster): real kubelets and containerd, kube-proxy, CoreDNS.
//
// Two suites run against each cluster, one after the other:
//
//   - conformance: the 41 `[sig-network] ... [Conformance]` specs, all of which must run
//     and pass;
//   - network: the other sig-network specs a routed CNI is judged by that can run on this
//     kind of cluster (NetworkFocus, NetworkSkip: Networking, Services, DNS, Conntrack,
//     EndpointSlice, Proxy and the dual-stack specs; not [Serial], [Disruptive], [Flaky],
//     [Slow], SCTP or other [Feature:...] specs).
//
// By default it runs the conformance suite, with kube-proxy in iptables mode, as `make test`
// does on every change; `make conformance` runs both suites in both modes:
//
//	go test -count=1 -timeout 90m ./test/conformance/
//
// Environment:
//
//	PODROUTE_E2E_MODES   kube-proxy modes, comma-separated, one cluster each (default
//	                     "iptables"; `make conformance` runs "iptables,nftables")
//	PODROUTE_E2E_SUITES  the suites to run, comma-separated (default "conformance";
//	                     `make conformance` runs "conformance,network")
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
)

// suite is a named ginkgo selection; want is the number of specs it must run (0: any).
type suite struct {
	name, focus, skip string
	want              int
}

var suites = map[string]suite{
	"conformance": {"conformance", ConformanceFocus, "", conformanceSpecs},
	"network":     {"network", NetworkFocus, NetworkSkip, 0},
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
		for _, name := range strings.Split(env("PODROUTE_E2E_SUITES", "conformance"), ",") {
			s, ok := suites[strings.TrimSpace(name)]
			if !ok {
				t.Fatalf("PODROUTE_E2E_SUITES: no suite %q (conformance, network)", name)
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
