package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/podroute/podroute/test/cniutil"
)

// AgentImage builds podroute's image (hack/image) as the docker-archive dir/image.tar, from
// the podroute and podroutectl binaries of bin and an agent built to report version; it
// returns the archive's path. The image is tagged podroute/podroute:<version>.
func AgentImage(t testing.TB, bin, version string) string {
	t.Helper()
	root, err := cniutil.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range []string{"podroute", "podroutectl", "podroute-lbipam"} {
		if err := copyFile(filepath.Join(bin, name), filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tar := filepath.Join(dir, "image.tar")
	for _, args := range [][]string{
		{"build", "-trimpath", "-ldflags", "-s -w -X github.com/podroute/podroute/agent.Version=" + version,
			"-o", filepath.Join(dir, "podroute-agent"), "./cmd/podroute-agent"},
		{"run", "./hack/image", "-bin", dir, "-lbipam", filepath.Join(dir, "podroute-lbipam"), "-version", version, "-o", tar},
	} {
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return tar
}

// DeployOptions are an operator's edits to deploy/ (WriteDeploy).
type DeployOptions struct {
	// Release is the image tag (podroute/podroute:<Release>).
	Release string
	// ClusterCIDRs and ServiceCIDRs go into the podroute-config ConfigMap (comma-separated).
	ClusterCIDRs, ServiceCIDRs string
	// APIServer, host:port, adds the optional kubernetes-services-endpoint ConfigMap, for a
	// cluster whose agents cannot reach the API server through the "kubernetes" Service
	// (no kube-proxy). Empty: the agents use the Service.
	APIServer string
}

// WriteDeploy writes a copy of the repository's deploy/ into dir (manifests in dir, CRDs in
// dir/crds) as an operator edits it before `kubectl apply -f`.
func WriteDeploy(t testing.TB, dir string, opts DeployOptions) {
	t.Helper()
	root, err := cniutil.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(root, "deploy")
	files, _ := filepath.Glob(filepath.Join(src, "*.yaml"))
	crds, _ := filepath.Glob(filepath.Join(src, "crds", "*.yaml"))
	if len(files) == 0 || len(crds) == 0 {
		t.Fatalf("no manifests in %s", src)
	}
	if err := os.MkdirAll(filepath.Join(dir, "crds"), 0o755); err != nil {
		t.Fatal(err)
	}
	edits := map[string][][2]string{
		"20-config.yaml": {
			{`(?m)^(\s*clusterCIDRs:).*$`, fmt.Sprintf(`${1} "%s"`, opts.ClusterCIDRs)},
			{`(?m)^(\s*serviceCIDRs:).*$`, fmt.Sprintf(`${1} "%s"`, opts.ServiceCIDRs)},
		},
		"30-daemonset.yaml": {
			{`(?m)^(\s*image:) podroute/podroute:\S+.*$`, "${1} podroute/podroute:" + opts.Release},
		},
		"50-lbipam.yaml": {
			{`(?m)^(\s*image:) podroute/podroute:\S+.*$`, "${1} podroute/podroute:" + opts.Release},
		},
	}
	for _, f := range append(files, crds...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range edits[filepath.Base(f)] {
			re := regexp.MustCompile(e[0])
			if !re.Match(b) {
				t.Fatalf("%s: nothing matches %s", f, e[0])
			}
			b = re.ReplaceAll(b, []byte(e[1]))
		}
		dst := filepath.Join(dir, filepath.Base(f))
		if filepath.Base(filepath.Dir(f)) == "crds" {
			dst = filepath.Join(dir, "crds", filepath.Base(f))
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	endpoint := filepath.Join(dir, "25-kubernetes-services-endpoint.yaml")
	if opts.APIServer == "" {
		if err := os.Remove(endpoint); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		return
	}
	host, port, ok := strings.Cut(opts.APIServer, ":")
	if !ok {
		t.Fatalf("DeployOptions.APIServer %q is not host:port", opts.APIServer)
	}
	cm := fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata:
  name: kubernetes-services-endpoint
  namespace: podroute-system
data:
  KUBERNETES_SERVICE_HOST: "%s"
  KUBERNETES_SERVICE_PORT: "%s"
`, host, port)
	if err := os.WriteFile(endpoint, []byte(cm), 0o644); err != nil {
		t.Fatal(err)
	}
}
