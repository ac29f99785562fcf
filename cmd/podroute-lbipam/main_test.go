package main

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/podroute/podroute/lbipam"
)

func TestDefaults(t *testing.T) {
	o, err := parseFlags(nil, "podroute-system")
	if err != nil {
		t.Fatal(err)
	}
	want := options{leaseNamespace: "podroute-system", leaseName: lbipam.DefaultLeaseName, class: lbipam.DefaultLoadBalancerClass, logLevel: slog.LevelInfo}
	if !reflect.DeepEqual(*o, want) {
		t.Errorf("defaults %+v, want %+v", *o, want)
	}
	// No POD_NAMESPACE: no election.
	if o, err := parseFlags(nil, ""); err != nil || o.leaseNamespace != "" {
		t.Errorf("without POD_NAMESPACE: %+v %v, want no lease namespace", o, err)
	}
	o, err = parseFlags([]string{"--kubeconfig=/k", "--lease-namespace", "", "--lease-name=lb", "--load-balancer-class=example.com/lb",
		"--health-address=0.0.0.0:9650", "--log-level=debug", "--cluster-cidrs=10.244.0.0/16,fd00:10:244::/56", "--service-cidrs="}, "podroute-system")
	if err != nil {
		t.Fatal(err)
	}
	want = options{kubeconfig: "/k", leaseName: "lb", class: "example.com/lb", healthAddr: "0.0.0.0:9650", logLevel: slog.LevelDebug,
		clusterCIDRs: []string{"10.244.0.0/16", "fd00:10:244::/56"}, serviceCIDRs: []string{},
		reserved: []lbipam.Reserved{
			{Prefix: netip.MustParsePrefix("10.244.0.0/16"), What: "the cluster's pod addresses (--cluster-cidrs)"},
			{Prefix: netip.MustParsePrefix("fd00:10:244::/56"), What: "the cluster's pod addresses (--cluster-cidrs)"},
		}}
	if !reflect.DeepEqual(*o, want) {
		t.Errorf("parsed %+v, want %+v", *o, want)
	}
}

// TestBadFlags: every refusal names the flag.
func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--lease-namespace=Podroute_System"}, `--lease-namespace "Podroute_System"`},
		{[]string{"--lease-name="}, `--lease-name ""`},
		{[]string{"--lease-name=a/b"}, `--lease-name "a/b"`},
		{[]string{"--load-balancer-class="}, `--load-balancer-class ""`},
		{[]string{"--load-balancer-class=not a class"}, `--load-balancer-class "not a class"`},
		{[]string{"--health-address=9650"}, `--health-address "9650": not host:port`},
		{[]string{"--health-address=0.0.0.0:http"}, `--health-address "0.0.0.0:http"`},
		{[]string{"--health-address=0.0.0.0:70000"}, `--health-address "0.0.0.0:70000"`},
		{[]string{"--health-address=pod:9650"}, `--health-address "pod:9650"`},
		{[]string{"--log-level=loud"}, `"--log-level" flag: not debug, info, warn or error`},
		{[]string{"--no-such-flag"}, "--no-such-flag"},
		{[]string{"-lease-name=x"}, "-l"}, // one dash is pflag's shorthand: refused, not misread
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"--cluster-cidrs=10.244.0.0/16,10.245.0.1/16"}, `--cluster-cidrs "10.245.0.1/16": not a CIDR`},
		{[]string{"--service-cidrs=services"}, `--service-cidrs "services": not a CIDR`},
	} {
		o, err := parseFlags(tc.args, "podroute-system")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %+v %v, want an error containing %q", tc.args, o, err, tc.want)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, a := range []string{"--help", "-h"} {
		if _, err := parseFlags([]string{a}, ""); !errors.Is(err, pflag.ErrHelp) {
			t.Errorf("%s: %v, want help", a, err)
		}
	}
	help := usage("")
	for _, name := range []string{"kubeconfig", "lease-namespace", "lease-name", "load-balancer-class", "health-address", "log-level", "version"} {
		if !regexp.MustCompile(`(?m)^\s+--` + name + `\b`).MatchString(help) {
			t.Errorf("help lacks --%s:\n%s", name, help)
		}
	}
	if !strings.Contains(help, "one replica only") {
		t.Errorf("help does not say that without a Lease only one replica may run:\n%s", help)
	}
}

// TestExitStatus: a bad flag exits 2 with the flag named on stderr, and no panic.
func TestExitStatus(t *testing.T) {
	if args := os.Getenv("PODROUTE_LBIPAM_ARGS"); args != "" {
		os.Args = append([]string{"podroute-lbipam"}, strings.Fields(args)...)
		main()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestExitStatus$")
	cmd.Env = append(os.Environ(), "PODROUTE_LBIPAM_ARGS=--log-level=info --lease-name=Bad_Name")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit: %v, want status 2\n%s", err, out)
	}
	if !strings.Contains(string(out), `--lease-name "Bad_Name"`) || strings.Contains(string(out), "panic") {
		t.Errorf("stderr %q", out)
	}
}

type fakeController struct{ synced, leading bool }

func (f *fakeController) Synced() bool  { return f.synced }
func (f *fakeController) Leading() bool { return f.leading }

// TestProbes: live at once; ready once the caches are synced, standby or leading.
func TestProbes(t *testing.T) {
	c := &fakeController{}
	srv := httptest.NewServer(healthHandler(c))
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		r, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return r.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz before sync: %d", code)
	}
	if code, _ := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before sync: %d, want 503", code)
	}
	c.synced = true
	if code, body := get("/readyz"); code != http.StatusOK || !strings.Contains(body, "standby") {
		t.Errorf("/readyz synced, standby: %d %q", code, body)
	}
	c.leading = true
	if code, body := get("/readyz"); code != http.StatusOK || !strings.Contains(body, "leading") {
		t.Errorf("/readyz leading: %d %q", code, body)
	}
}

// TestDeployedArgs: the Deployment's arguments parse, and its probes use the health address.
func TestDeployedArgs(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "50-lbipam.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range strings.Split(string(raw), "\n---") {
		var d appsv1.Deployment
		if err := yaml.Unmarshal([]byte(part), &d); err != nil {
			t.Fatal(err)
		}
		if d.Kind != "Deployment" {
			continue
		}
		c := d.Spec.Template.Spec.Containers[0]
		// The kubelet expands $(VAR) from the container's env (the podroute-config
		// ConfigMap's values here).
		env := map[string]string{"CLUSTER_CIDRS": "10.244.0.0/16,fd00:10:244::/56", "SERVICE_CIDRS": "10.96.0.0/12"}
		var args []string
		for _, a := range c.Args {
			for k, v := range env {
				a = strings.ReplaceAll(a, "$("+k+")", v)
			}
			args = append(args, a)
		}
		for _, e := range c.Env {
			if _, ok := env[e.Name]; ok && (e.ValueFrom == nil || e.ValueFrom.ConfigMapKeyRef == nil || e.ValueFrom.ConfigMapKeyRef.Name != "podroute-config") {
				t.Errorf("env %s is not from the podroute-config ConfigMap: %+v", e.Name, e)
			}
		}
		o, err := parseFlags(args, "podroute-system")
		if err != nil {
			t.Fatalf("args %q: %v", c.Args, err)
		}
		if len(o.reserved) != 3 {
			t.Errorf("reserved ranges %v: want the cluster and Service CIDRs from podroute-config", o.reserved)
		}
		if o.healthAddr == "" || !strings.HasSuffix(o.healthAddr, ":"+c.ReadinessProbe.HTTPGet.Port.String()) {
			t.Errorf("--health-address %q, readiness probe on port %s", o.healthAddr, c.ReadinessProbe.HTTPGet.Port.String())
		}
		return
	}
	t.Fatal("no Deployment in deploy/50-lbipam.yaml")
}
