// Package deploy_test checks podroute's manifests: every YAML parses, the DaemonSet is what
// the docs promise (host network, two capabilities, probes on the node's loopback, ...), the
// allocator's Deployment is hardened (non-root, read-only, no capability), and all of it
// applies to a real kube-apiserver, where the agent's and the allocator's ServiceAccounts can
// do exactly what each does (shown by running their own code as that ServiceAccount) and
// nothing more.
package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/lbipam"
	"github.com/podroute/podroute/services"
	"github.com/podroute/podroute/test/kube"
)

const (
	namespace = "podroute-system"
	agentSA   = "system:serviceaccount:podroute-system:podroute-agent"
	lbipamSA  = "system:serviceaccount:podroute-system:podroute-lbipam"
)

// doc is one YAML document of a manifest file.
type doc struct {
	file string
	obj  *unstructured.Unstructured
	raw  []byte
}

func (d doc) String() string { return d.file + ": " + d.obj.GetKind() + " " + d.obj.GetName() }

// load reads every document of the YAML files matching pattern, in file order.
func load(t *testing.T, pattern string) []doc {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests match %s (%v)", pattern, err)
	}
	sort.Strings(files)
	var out []doc
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, part := range bytes.Split(b, []byte("\n---")) {
			j, err := yaml.YAMLToJSON(part)
			if err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			if string(j) == "null" {
				continue // comments only
			}
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(j); err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			if u.GetAPIVersion() == "" || u.GetKind() == "" || u.GetName() == "" {
				t.Fatalf("%s document %d: apiVersion, kind and metadata.name are required", f, i)
			}
			out = append(out, doc{file: f, obj: u, raw: part})
		}
	}
	return out
}

// installSet is what `kubectl apply -f deploy/` applies, after deploy/crds.
func installSet(t *testing.T) []doc { return load(t, "*.yaml") }

func kinds(docs []doc) []string {
	var out []string
	for _, d := range docs {
		out = append(out, d.obj.GetKind()+"/"+d.obj.GetName())
	}
	return out
}

func TestManifests(t *testing.T) {
	docs := installSet(t)
	want := []string{
		"Namespace/podroute-system",
		"ServiceAccount/podroute-agent", "ClusterRole/podroute-agent", "ClusterRoleBinding/podroute-agent",
		"Role/podroute-agent-secrets", "RoleBinding/podroute-agent-secrets",
		"Role/podroute-agent-lease", "RoleBinding/podroute-agent-lease",
		"ConfigMap/podroute-config",
		"DaemonSet/podroute-agent",
		"BGPConfiguration/default",
		"ServiceAccount/podroute-lbipam", "ClusterRole/podroute-lbipam", "ClusterRoleBinding/podroute-lbipam",
		"Role/podroute-lbipam-lease", "RoleBinding/podroute-lbipam-lease",
		"Deployment/podroute-lbipam",
	}
	if got := kinds(docs); !slices.Equal(got, want) {
		t.Errorf("deploy/*.yaml hold\n%q\nwant, in this order (the namespace first)\n%q", got, want)
	}
	for _, d := range docs {
		ns := d.obj.GetNamespace()
		switch d.obj.GetKind() {
		case "Namespace", "ClusterRole", "ClusterRoleBinding", "BGPConfiguration":
			if ns != "" {
				t.Errorf("%s: cluster-scoped, has namespace %q", d, ns)
			}
		case "Role", "RoleBinding":
			if ns != namespace && ns != metav1.NamespaceDefault {
				t.Errorf("%s: namespace %q", d, ns)
			}
		default:
			if ns != namespace {
				t.Errorf("%s: namespace %q, want %s", d, ns, namespace)
			}
		}
	}
	for _, pattern := range []string{"crds/*.yaml", "examples/*.yaml", "uninstall/*.yaml"} {
		load(t, pattern)
	}

	t.Run("AgentDaemonSet", func(t *testing.T) {
		ds := daemonSet(t, docs, "podroute-agent")
		checkNodePod(t, ds)
		if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType ||
			ds.Spec.UpdateStrategy.RollingUpdate == nil || ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.String() != "1" {
			t.Errorf("update strategy %+v, want RollingUpdate maxUnavailable 1", ds.Spec.UpdateStrategy)
		}
		p := ds.Spec.Template.Spec
		if p.ServiceAccountName != "podroute-agent" {
			t.Errorf("serviceAccountName %q", p.ServiceAccountName)
		}
		if g := p.TerminationGracePeriodSeconds; g == nil || *g < 5 || *g > 30 {
			t.Errorf("terminationGracePeriodSeconds %v", g)
		}
		if len(p.Containers) != 1 || len(p.InitContainers) != 0 {
			t.Fatalf("containers %d, init containers %d; want one agent", len(p.Containers), len(p.InitContainers))
		}
		c := p.Containers[0]
		checkSecurity(t, c, []corev1.Capability{"NET_ADMIN", "NET_BIND_SERVICE"})
		for _, a := range []string{"--cluster-cidrs=$(CLUSTER_CIDRS)", "--health-address=127.0.0.1:9649", "--cni-plugin=/opt/podroute/bin/podroute", "--cni-portmap-plugin=/opt/podroute/bin/portmap"} {
			if !slices.Contains(c.Args, a) {
				t.Errorf("args %q lack %s", c.Args, a)
			}
		}
		env := map[string]corev1.EnvVar{}
		for _, e := range c.Env {
			env[e.Name] = e
		}
		if e := env["NODE_NAME"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
			t.Errorf("NODE_NAME %+v, want spec.nodeName", e)
		}
		if e := env["CLUSTER_CIDRS"]; e.ValueFrom == nil || e.ValueFrom.ConfigMapKeyRef == nil || e.ValueFrom.ConfigMapKeyRef.Name != "podroute-config" {
			t.Errorf("CLUSTER_CIDRS %+v, want from ConfigMap podroute-config", e)
		}
		// The API server override must stay optional: a cluster with kube-proxy has no
		// such ConfigMap, and a required one would keep the agent from starting there.
		if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != "kubernetes-services-endpoint" ||
			c.EnvFrom[0].ConfigMapRef.Optional == nil || !*c.EnvFrom[0].ConfigMapRef.Optional || c.EnvFrom[0].Prefix != "" {
			t.Errorf("envFrom %+v, want the optional ConfigMap kubernetes-services-endpoint", c.EnvFrom)
		}
		for name, pr := range map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
			if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Host != "127.0.0.1" || pr.HTTPGet.Port.IntValue() != 9649 || pr.HTTPGet.Path != name {
				t.Errorf("probe %s: %+v, want httpGet 127.0.0.1:9649%s", name, pr, name)
			}
		}
		r := c.Resources
		if r.Requests.Cpu().String() != "50m" || r.Requests.Memory().String() != "64Mi" || r.Limits.Memory().String() != "256Mi" || !r.Limits.Cpu().IsZero() {
			t.Errorf("resources %+v", r)
		}
		mounts := map[string]string{}
		for _, m := range c.VolumeMounts {
			mounts[m.MountPath] = m.Name
		}
		hostPaths := map[string]string{}
		for _, v := range p.Volumes {
			if v.HostPath == nil {
				t.Errorf("volume %s is not a hostPath", v.Name)
				continue
			}
			hostPaths[v.Name] = v.HostPath.Path
		}
		wantMounts := map[string]string{"/etc/cni/net.d": "/etc/cni/net.d", "/opt/cni/bin": "/opt/cni/bin", "/run/podroute": "/run/podroute"}
		if len(mounts) != len(wantMounts) {
			t.Errorf("mounts %v, want exactly %v", mounts, wantMounts)
		}
		for at, host := range wantMounts {
			if hostPaths[mounts[at]] != host {
				t.Errorf("%s is mounted from %q, want host %s", at, hostPaths[mounts[at]], host)
			}
		}
	})

	t.Run("LBIPAMDeployment", func(t *testing.T) {
		checkLBIPAM(t, docs)
		// The image is edited like the agent's: one line, marked.
		i := slices.IndexFunc(docs, func(d doc) bool { return d.obj.GetKind() == "Deployment" && d.obj.GetName() == "podroute-lbipam" })
		if i < 0 || !regexp.MustCompile(`(?m)^\s*image: podroute/podroute:\S+\s+# EDIT ME`).Match(docs[i].raw) {
			t.Error("the Deployment's image line lacks the EDIT ME mark of 30-daemonset.yaml")
		}
	})
	t.Run("LBIPAMRules", func(t *testing.T) {
		var cr rbacv1.ClusterRole
		decode(t, docs, "ClusterRole", "podroute-lbipam", &cr)
		if !equality.Semantic.DeepEqual(cr.Rules, lbipam.ClusterRoleRules) {
			t.Errorf("ClusterRole podroute-lbipam rules\n%+v\nwant lbipam.ClusterRoleRules\n%+v", cr.Rules, lbipam.ClusterRoleRules)
		}
		var r rbacv1.Role
		decode(t, docs, "Role", "podroute-lbipam-lease", &r)
		if !equality.Semantic.DeepEqual(r.Rules, lbipam.LeaseRoleRules) || r.Namespace != namespace {
			t.Errorf("Role %s/podroute-lbipam-lease rules\n%+v\nwant lbipam.LeaseRoleRules\n%+v", r.Namespace, r.Rules, lbipam.LeaseRoleRules)
		}
		for _, kind := range []string{"ClusterRoleBinding", "RoleBinding"} {
			var b rbacv1.RoleBinding // a ClusterRoleBinding has the same fields but namespace
			decode(t, docs, kind, map[string]string{"ClusterRoleBinding": "podroute-lbipam", "RoleBinding": "podroute-lbipam-lease"}[kind], &b)
			want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: "podroute-lbipam", Namespace: namespace}}
			if !slices.Equal(b.Subjects, want) || b.RoleRef.Name != b.Name {
				t.Errorf("%s %s: subjects %+v role %+v", kind, b.Name, b.Subjects, b.RoleRef)
			}
		}
	})

	t.Run("UninstallDaemonSet", func(t *testing.T) {
		ds := daemonSet(t, load(t, "uninstall/*.yaml"), "podroute-uninstall")
		checkNodePod(t, ds)
		p := ds.Spec.Template.Spec
		if p.AutomountServiceAccountToken == nil || *p.AutomountServiceAccountToken {
			t.Error("the clean-up needs no API token: automountServiceAccountToken false")
		}
		if len(p.InitContainers) != 1 || !slices.Contains(p.InitContainers[0].Args, "--uninstall") || slices.Contains(p.InitContainers[0].Args, "--dry-run") {
			t.Fatalf("init containers %+v, want one running --uninstall", p.InitContainers)
		}
		for _, c := range append(p.InitContainers, p.Containers...) {
			checkSecurity(t, c, []corev1.Capability{"NET_ADMIN"})
		}
	})
}

// decode unmarshals, strictly, the document of that kind and name into out.
func decode(t *testing.T, docs []doc, kind, name string, out any) {
	t.Helper()
	for _, d := range docs {
		if d.obj.GetKind() == kind && d.obj.GetName() == name {
			j, _ := yaml.YAMLToJSON(d.raw)
			if err := yaml.UnmarshalStrict(j, out); err != nil {
				t.Fatalf("%s: %v", d, err)
			}
			return
		}
	}
	t.Fatalf("no %s %s", kind, name)
}

// checkLBIPAM: the allocator's Deployment, two replicas on the pod network, on different
// nodes when it can, hardened, with probes on its health address.
func checkLBIPAM(t *testing.T, docs []doc) {
	var d appsv1.Deployment
	decode(t, docs, "Deployment", "podroute-lbipam", &d)
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas %v, want 2 (one leads, one stands by)", d.Spec.Replicas)
	}
	p := d.Spec.Template.Spec
	if p.ServiceAccountName != "podroute-lbipam" {
		t.Errorf("serviceAccountName %q", p.ServiceAccountName)
	}
	if p.HostNetwork || p.HostPID || p.HostIPC {
		t.Errorf("hostNetwork %v hostPID %v hostIPC %v: want the pod's own", p.HostNetwork, p.HostPID, p.HostIPC)
	}
	if p.PriorityClassName != "system-cluster-critical" {
		t.Errorf("priorityClassName %q", p.PriorityClassName)
	}
	if !slices.ContainsFunc(p.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Key == "node-role.kubernetes.io/control-plane" && tl.Effect == corev1.TaintEffectNoSchedule && tl.Operator == corev1.TolerationOpExists
	}) {
		t.Errorf("tolerations %+v: want the control-plane NoSchedule taint tolerated", p.Tolerations)
	}
	apart := slices.ContainsFunc(p.TopologySpreadConstraints, func(c corev1.TopologySpreadConstraint) bool {
		return c.TopologyKey == corev1.LabelHostname && c.LabelSelector != nil && c.LabelSelector.MatchLabels["app.kubernetes.io/name"] == "podroute-lbipam"
	})
	if a := p.Affinity; a != nil && a.PodAntiAffinity != nil {
		apart = apart || slices.ContainsFunc(a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution, func(w corev1.WeightedPodAffinityTerm) bool {
			return w.PodAffinityTerm.TopologyKey == corev1.LabelHostname
		})
	}
	if !apart {
		t.Error("no topology spread or anti-affinity keeping the two replicas on different nodes")
	}
	ps := p.SecurityContext
	if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.RunAsUser == nil || *ps.RunAsUser == 0 {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and a numeric user other than 0", ps)
	}
	if ps == nil || ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext %+v: want seccomp RuntimeDefault", ps)
	}
	if len(p.Containers) != 1 || len(p.InitContainers) != 0 {
		t.Fatalf("containers %d, init containers %d; want one", len(p.Containers), len(p.InitContainers))
	}
	c := p.Containers[0]
	checkSecurity(t, c, nil)
	var ds appsv1.DaemonSet
	decode(t, docs, "DaemonSet", "podroute-agent", &ds)
	if agent := ds.Spec.Template.Spec.Containers[0].Image; c.Image != agent {
		t.Errorf("image %s, the agent's is %s: both come from one `make image`", c.Image, agent)
	}
	if !slices.Equal(c.Command, []string{"/usr/local/bin/podroute-lbipam"}) {
		t.Errorf("command %q", c.Command)
	}
	if e := c.Env; len(e) != 3 || e[0].Name != "POD_NAMESPACE" || e[0].ValueFrom == nil || e[0].ValueFrom.FieldRef == nil || e[0].ValueFrom.FieldRef.FieldPath != "metadata.namespace" {
		t.Errorf("env %+v, want POD_NAMESPACE from metadata.namespace, then the CIDRs", e)
	}
	// The reserved ranges come from the agent's ConfigMap, with the same keys.
	agentEnv := map[string]corev1.EnvVar{}
	for _, e := range ds.Spec.Template.Spec.Containers[0].Env {
		agentEnv[e.Name] = e
	}
	for _, e := range c.Env[1:] {
		if a, ok := agentEnv[e.Name]; !ok || !reflect.DeepEqual(a.ValueFrom, e.ValueFrom) {
			t.Errorf("env %s %+v, the agent's %+v", e.Name, e.ValueFrom, a.ValueFrom)
		}
	}
	for _, a := range []string{"--cluster-cidrs=$(CLUSTER_CIDRS)", "--service-cidrs=$(SERVICE_CIDRS)"} {
		if !slices.Contains(c.Args, a) {
			t.Errorf("args %q lack %s", c.Args, a)
		}
	}
	if !slices.Contains(c.Args, "--health-address=:9650") {
		t.Errorf("args %q lack --health-address=:9650", c.Args)
	}
	for name, pr := range map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
		// No host: the kubelet probes the pod's address.
		if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Host != "" || pr.HTTPGet.Port.IntValue() != 9650 || pr.HTTPGet.Path != name {
			t.Errorf("probe %s: %+v, want httpGet on the pod's :9650%s", name, pr, name)
		}
	}
	r := c.Resources
	if r.Requests.Cpu().IsZero() || r.Requests.Cpu().MilliValue() > 100 || r.Requests.Memory().IsZero() || r.Requests.Memory().Value() > 128<<20 || r.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want small requests and a memory limit", r)
	}
	if len(c.VolumeMounts) != 0 || len(p.Volumes) != 0 {
		t.Errorf("volumes %+v: the allocator writes no file", p.Volumes)
	}
}

func daemonSet(t *testing.T, docs []doc, name string) *appsv1.DaemonSet {
	t.Helper()
	for _, d := range docs {
		if d.obj.GetKind() == "DaemonSet" && d.obj.GetName() == name {
			ds := &appsv1.DaemonSet{}
			j, _ := yaml.YAMLToJSON(d.raw)
			if err := yaml.UnmarshalStrict(j, ds); err != nil {
				t.Fatalf("%s: %v", d, err)
			}
			return ds
		}
	}
	t.Fatalf("no DaemonSet %s", name)
	return nil
}

// checkNodePod: the host's network, on every node whatever its taints, before anything else.
func checkNodePod(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	p := ds.Spec.Template.Spec
	if !p.HostNetwork || p.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("%s: hostNetwork %v dnsPolicy %s", ds.Name, p.HostNetwork, p.DNSPolicy)
	}
	if p.PriorityClassName != "system-node-critical" {
		t.Errorf("%s: priorityClassName %q", ds.Name, p.PriorityClassName)
	}
	if !slices.ContainsFunc(p.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
	}) {
		t.Errorf("%s: tolerations %+v, want operator Exists for every taint", ds.Name, p.Tolerations)
	}
	if p.HostPID || p.HostIPC {
		t.Errorf("%s: hostPID/hostIPC", ds.Name)
	}
}

// checkSecurity: not privileged, read-only root, every capability dropped but caps.
func checkSecurity(t *testing.T, c corev1.Container, caps []corev1.Capability) {
	t.Helper()
	s := c.SecurityContext
	if s == nil {
		t.Fatalf("%s: no securityContext", c.Name)
	}
	if s.Privileged == nil || *s.Privileged {
		t.Errorf("%s: privileged must be false", c.Name)
	}
	if s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation must be false", c.Name)
	}
	if s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem must be true", c.Name)
	}
	if s.Capabilities == nil || !slices.Equal(s.Capabilities.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(s.Capabilities.Add, caps) {
		t.Errorf("%s: capabilities %+v, want drop [ALL] add %v", c.Name, s.Capabilities, caps)
	}
}

func ptr[T any](v T) *T { return &v }

func testLogger(t *testing.T) *slog.Logger { return kube.TestLogger(t, slog.LevelInfo, "") }

var eventually = kube.Eventually

// applier server-side-applies documents, mapping kinds through discovery.
type applier struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func (a *applier) apply(ctx context.Context, d doc) error {
	gvk := d.obj.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		a.mapper.Reset()
		if m, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
			return fmt.Errorf("%s: %w", d, err)
		}
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = a.dyn.Resource(m.Resource).Namespace(d.obj.GetNamespace())
	}
	if _, err := ri.Apply(ctx, d.obj.GetName(), d.obj, metav1.ApplyOptions{FieldManager: "podroute-deploy-test", Force: true}); err != nil {
		return fmt.Errorf("%s: %w", d, err)
	}
	return nil
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

func TestApply(t *testing.T) {
	c := kube.Start(t, kube.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	admin := dynamic.NewForConfigOrDie(c.RestConfig)
	a := &applier{dyn: admin, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(kubernetes.NewForConfigOrDie(c.RestConfig).Discovery()))}

	// The documented order: the CRDs, established, then deploy/.
	for _, d := range load(t, "crds/*.yaml") {
		if err := a.apply(ctx, d); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, d.obj.GetName()+" established", func() error {
			o, err := admin.Resource(crdGVR).Get(ctx, d.obj.GetName(), metav1.GetOptions{})
			if err != nil {
				return err
			}
			conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
			for _, cd := range conds {
				m, _ := cd.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
			return fmt.Errorf("conditions %v", conds)
		})
	}
	// What the docs say: kubectl apply -f deploy/ (the files in name order, namespace first).
	t.Run("KubectlApply", func(t *testing.T) {
		if _, err := exec.LookPath("kubectl"); err != nil {
			t.Skip("kubectl not installed")
		}
		out, err := exec.CommandContext(ctx, "kubectl", "--kubeconfig", c.Kubeconfig, "apply", "-f", ".").CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl apply -f deploy/: %v\n%s", err, out)
		}
		t.Logf("kubectl apply -f deploy/:\n%s", out)
	})
	// Server-side apply of the same documents: there whether or not kubectl is, and a second
	// apply is a no-op.
	for _, d := range installSet(t) {
		if err := a.apply(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	// The examples and the clean-up DaemonSet are valid objects too.
	for _, d := range append(load(t, "examples/*.yaml"), load(t, "uninstall/*.yaml")...) {
		if err := a.apply(ctx, d); err != nil {
			t.Fatal(err)
		}
	}

	sa := rest.CopyConfig(c.RestConfig)
	sa.Impersonate = rest.ImpersonationConfig{
		UserName: agentSA,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
	}
	saClient := kubernetes.NewForConfigOrDie(sa)
	saDyn := dynamic.NewForConfigOrDie(sa)

	t.Run("AccessReview", func(t *testing.T) {
		allowed, denied := agentAccess()
		testAccess(ctx, t, saClient, "the agent", allowed, denied)
	})
	t.Run("AgentWatchersAsServiceAccount", func(t *testing.T) { testAgentAsSA(ctx, t, c, admin, saClient, saDyn) })
	t.Run("RealCallsRefused", func(t *testing.T) {
		forbidden := func(what string, err error) {
			t.Helper()
			if !apierrors.IsForbidden(err) {
				t.Errorf("%s: %v, want Forbidden", what, err)
			}
		}
		_, err := saClient.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
		forbidden("get node", err)
		_, err = saClient.CoreV1().Nodes().Patch(ctx, "node-1", types.MergePatchType, []byte(`{"metadata":{"labels":{"x":"y"}}}`), metav1.PatchOptions{})
		forbidden("patch node", err)
		forbidden("delete node", saClient.CoreV1().Nodes().Delete(ctx, "node-1", metav1.DeleteOptions{}))
		_, err = saClient.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
		forbidden("list secrets cluster-wide", err)
		_, err = saClient.CoreV1().Secrets(namespace).Get(ctx, "tor-rack1", metav1.GetOptions{})
		forbidden("get a secret", err)
		_, err = saClient.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
		forbidden("list secrets in kube-system", err)
		forbidden("delete bgppeer", saDyn.Resource(config.BGPPeerGVR).Delete(ctx, "tor-rack1", metav1.DeleteOptions{}))
		_, err = saDyn.Resource(config.BGPPeerGVR).Patch(ctx, "tor-rack1", types.MergePatchType, []byte(`{"spec":{"peerASN":65002}}`), metav1.PatchOptions{})
		forbidden("patch a peer's spec", err)
		_, err = saDyn.Resource(config.BGPConfigurationGVR).List(ctx, metav1.ListOptions{})
		forbidden("list every BGPConfiguration", err)
		_, err = saClient.CoreV1().Pods(metav1.NamespaceDefault).Get(ctx, "web", metav1.GetOptions{})
		forbidden("get a pod", err)
		forbidden("delete pods", saClient.CoreV1().Pods(metav1.NamespaceDefault).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}))
		_, err = saClient.CoreV1().Namespaces().Patch(ctx, metav1.NamespaceDefault, types.MergePatchType, []byte(`{"metadata":{"labels":{"x":"y"}}}`), metav1.PatchOptions{})
		forbidden("label a namespace", err)
		forbidden("delete a network policy", saClient.NetworkingV1().NetworkPolicies(metav1.NamespaceDefault).Delete(ctx, "deny", metav1.DeleteOptions{}))
		_, err = saClient.CoreV1().Services(metav1.NamespaceDefault).Patch(ctx, "kubernetes", types.MergePatchType, []byte(`{"metadata":{"labels":{"x":"y"}}}`), metav1.PatchOptions{})
		forbidden("label a Service", err)
	})

	lb := rest.CopyConfig(c.RestConfig)
	lb.Impersonate = rest.ImpersonationConfig{
		UserName: lbipamSA,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
	}
	lbClient := kubernetes.NewForConfigOrDie(lb)
	t.Run("LBIPAMAccessReview", func(t *testing.T) {
		allowed, denied := lbipamAccess()
		testAccess(ctx, t, lbClient, "the allocator", allowed, denied)
	})
	t.Run("LBIPAMAsServiceAccount", func(t *testing.T) { testLBIPAMAsSA(ctx, t, c, admin, lbClient, dynamic.NewForConfigOrDie(lb)) })
}

// testLBIPAMAsSA runs the allocator as its ServiceAccount, with leader election in
// podroute-system as deployed: it takes the Lease, gives a Service an address from the
// example pool, writes the pool's status and an Event, cannot touch a Service's spec or
// read a Secret, and releases the Lease when stopped.
func testLBIPAMAsSA(ctx context.Context, t *testing.T, c *kube.Cluster, admin dynamic.Interface, cs kubernetes.Interface, dyn dynamic.Interface) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: metav1.NamespaceDefault, Name: "web-lb", Labels: map[string]string{"exposure": "public"}},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeLoadBalancer,
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	if _, err := c.Client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctl := lbipam.NewController(cs, dyn, lbipam.Options{
		LeaseNamespace: namespace, Identity: "deploy-test",
		LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond,
		Logger: testLogger(t).With("component", "lbipam"),
	})
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ctl.Run(rctx) }()
	halt := sync.OnceValue(func() error {
		stop()
		return <-done
	})
	defer halt()

	eventually(t, 60*time.Second, "address assigned as the ServiceAccount", func() error {
		s, err := c.Client.CoreV1().Services(svc.Namespace).Get(ctx, svc.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if in := s.Status.LoadBalancer.Ingress; len(in) != 1 || in[0].IP != "203.0.113.0" {
			return fmt.Errorf("leading %v, ingress %+v, conditions %+v; want 203.0.113.0, the pool's first", ctl.Leading(), in, s.Status.Conditions)
		}
		return nil
	})
	if !ctl.Synced() || !ctl.Leading() {
		t.Errorf("synced %v leading %v", ctl.Synced(), ctl.Leading())
	}
	lease, err := c.Client.CoordinationV1().Leases(namespace).Get(ctx, lbipam.DefaultLeaseName, metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "deploy-test" {
		t.Errorf("Lease %s/%s: %+v %v, want held by deploy-test", namespace, lbipam.DefaultLeaseName, lease, err)
	}
	eventually(t, 30*time.Second, "pool status and Event written as the ServiceAccount", func() error {
		u, err := admin.Resource(lbipam.PoolGVR).Get(ctx, "public", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if used, _, _ := unstructured.NestedInt64(u.Object, "status", "ipv4", "allocated"); used != 1 {
			return fmt.Errorf("pool status %v", u.Object["status"])
		}
		evs, err := c.Client.CoreV1().Events(svc.Namespace).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + svc.Name})
		if err != nil {
			return err
		}
		if len(evs.Items) == 0 {
			return fmt.Errorf("no Event about %s", svc.Name)
		}
		return nil
	})

	s, err := cs.CoreV1().Services(svc.Namespace).Get(ctx, svc.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Spec.Ports[0].Port = 8080
	if _, err := cs.CoreV1().Services(svc.Namespace).Update(ctx, s, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("update a Service's spec as the allocator: %v, want Forbidden", err)
	}
	if _, err := cs.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets as the allocator: %v, want Forbidden", err)
	}

	// Stopped (SIGTERM in the pod), the leader gives the Lease up at once for the standby.
	if err := halt(); !errors.Is(err, context.Canceled) {
		t.Errorf("Run after cancel: %v", err)
	}
	lease, err = c.Client.CoordinationV1().Leases(namespace).Get(ctx, lbipam.DefaultLeaseName, metav1.GetOptions{})
	if err != nil || (lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "") {
		t.Errorf("Lease after stop: %+v %v, want released", lease.Spec, err)
	}
}

type access struct {
	verb, group, resource, sub, namespace, name string
}

func (a access) String() string {
	r := a.resource
	if a.sub != "" {
		r += "/" + a.sub
	}
	if a.group != "" {
		r += "." + a.group
	}
	s := a.verb + " " + r
	if a.name != "" {
		s += " " + a.name
	}
	if a.namespace != "" {
		s += " in " + a.namespace
	} else {
		s += " cluster-wide"
	}
	return s
}

const (
	pr    = "podroute.io"
	netv1 = "networking.k8s.io"
	coord = "coordination.k8s.io"
	disc  = "discovery.k8s.io"
)

// agentAccess is what the agent's ServiceAccount may and may not do.
func agentAccess() (allowed, denied []access) {
	allowed = []access{
		{verb: "list", resource: "nodes"},
		{verb: "watch", resource: "nodes"},
		{verb: "list", group: pr, resource: "bgppeers"},
		{verb: "watch", group: pr, resource: "bgppeers"},
		{verb: "patch", group: pr, resource: "bgppeers", sub: "status", name: "tor-rack1"},
		{verb: "list", group: pr, resource: "bgpconfigurations", name: "default"},
		{verb: "watch", group: pr, resource: "bgpconfigurations", name: "default"},
		{verb: "patch", group: pr, resource: "bgpconfigurations", sub: "status", name: "default"},
		{verb: "list", resource: "secrets", namespace: namespace},
		{verb: "watch", resource: "secrets", namespace: namespace},
		{verb: "create", resource: "events", namespace: "default"},
		{verb: "patch", resource: "events", namespace: "default"},
		{verb: "create", resource: "events", namespace: "shop"},
		{verb: "list", resource: "pods"},
		{verb: "watch", resource: "pods"},
		{verb: "list", resource: "namespaces"},
		{verb: "watch", resource: "namespaces"},
		{verb: "list", group: netv1, resource: "networkpolicies"},
		{verb: "watch", group: netv1, resource: "networkpolicies"},
		{verb: "get", group: coord, resource: "leases", namespace: namespace, name: "podroute-agent"},
		{verb: "update", group: coord, resource: "leases", namespace: namespace, name: "podroute-agent"},
		{verb: "create", group: coord, resource: "leases", namespace: namespace},
		{verb: "list", resource: "services"},
		{verb: "watch", resource: "services"},
		{verb: "list", group: disc, resource: "endpointslices"},
		{verb: "watch", group: disc, resource: "endpointslices"},
		{verb: "list", group: pr, resource: "loadbalancerippools"},
	}
	denied = []access{
		{verb: "get", group: coord, resource: "leases", namespace: namespace, name: "other"},
		{verb: "update", group: coord, resource: "leases", namespace: namespace, name: "other"},
		{verb: "delete", group: coord, resource: "leases", namespace: namespace, name: "podroute-agent"},
		{verb: "list", group: coord, resource: "leases", namespace: namespace},
		{verb: "get", group: coord, resource: "leases", namespace: "kube-system", name: "podroute-agent"},
		{verb: "create", group: coord, resource: "leases", namespace: "kube-system"},
		{verb: "get", resource: "nodes", name: "node-1"},
		{verb: "update", resource: "nodes", name: "node-1"},
		{verb: "patch", resource: "nodes", name: "node-1"},
		{verb: "patch", resource: "nodes", sub: "status", name: "node-1"},
		{verb: "delete", resource: "nodes", name: "node-1"},
		{verb: "create", resource: "nodes"},
		{verb: "get", group: pr, resource: "bgppeers", name: "tor-rack1"},
		{verb: "create", group: pr, resource: "bgppeers"},
		{verb: "update", group: pr, resource: "bgppeers", name: "tor-rack1"},
		{verb: "patch", group: pr, resource: "bgppeers", name: "tor-rack1"},
		{verb: "delete", group: pr, resource: "bgppeers", name: "tor-rack1"},
		{verb: "update", group: pr, resource: "bgppeers", sub: "status", name: "tor-rack1"},
		{verb: "list", group: pr, resource: "bgpconfigurations"},
		{verb: "list", group: pr, resource: "bgpconfigurations", name: "other"},
		{verb: "patch", group: pr, resource: "bgpconfigurations", name: "default"},
		{verb: "delete", group: pr, resource: "bgpconfigurations", name: "default"},
		{verb: "patch", group: pr, resource: "bgpconfigurations", sub: "status", name: "other"},
		{verb: "list", resource: "secrets"},
		{verb: "watch", resource: "secrets"},
		{verb: "list", resource: "secrets", namespace: "kube-system"},
		{verb: "get", resource: "secrets", namespace: namespace, name: "tor-rack1"},
		{verb: "create", resource: "secrets", namespace: namespace},
		{verb: "delete", resource: "secrets", namespace: namespace, name: "tor-rack1"},
		{verb: "delete", resource: "events", namespace: "default", name: "x"},
		{verb: "get", resource: "pods", namespace: "default", name: "web"},
		{verb: "create", resource: "pods", namespace: "default"},
		{verb: "update", resource: "pods", namespace: "default", name: "web"},
		{verb: "patch", resource: "pods", namespace: "default", name: "web"},
		{verb: "delete", resource: "pods", namespace: "default", name: "web"},
		{verb: "update", resource: "pods", sub: "status", namespace: "default", name: "web"},
		{verb: "create", resource: "pods", sub: "exec", namespace: "default", name: "web"},
		{verb: "create", resource: "pods", sub: "eviction", namespace: "default", name: "web"},
		{verb: "get", resource: "namespaces", name: "default"},
		{verb: "create", resource: "namespaces"},
		{verb: "update", resource: "namespaces", name: "default"},
		{verb: "patch", resource: "namespaces", name: "default"},
		{verb: "delete", resource: "namespaces", name: "default"},
		{verb: "get", group: netv1, resource: "networkpolicies", namespace: "default", name: "deny"},
		{verb: "create", group: netv1, resource: "networkpolicies", namespace: "default"},
		{verb: "update", group: netv1, resource: "networkpolicies", namespace: "default", name: "deny"},
		{verb: "patch", group: netv1, resource: "networkpolicies", namespace: "default", name: "deny"},
		{verb: "delete", group: netv1, resource: "networkpolicies", namespace: "default", name: "deny"},
		{verb: "list", group: "policy.networking.k8s.io", resource: "adminnetworkpolicies"},
		{verb: "get", resource: "configmaps", namespace: namespace, name: "podroute-config"},
		{verb: "delete", group: "apps", resource: "daemonsets", namespace: namespace, name: "podroute-agent"},
		{verb: "escalate", group: "rbac.authorization.k8s.io", resource: "clusterroles"},
		{verb: "impersonate", resource: "serviceaccounts"},
		// Services are read to advertise them; their addresses are the allocator's to write.
		{verb: "get", resource: "services", namespace: "default", name: "web"},
		{verb: "update", resource: "services", namespace: "default", name: "web"},
		{verb: "patch", resource: "services", namespace: "default", name: "web"},
		{verb: "update", resource: "services", sub: "status", namespace: "default", name: "web"},
		{verb: "delete", resource: "services", namespace: "default", name: "web"},
		{verb: "get", group: disc, resource: "endpointslices", namespace: "default", name: "web-1"},
		{verb: "update", group: disc, resource: "endpointslices", namespace: "default", name: "web-1"},
		{verb: "list", resource: "endpoints"},
		// Pools are listed for podroutectl status; their spec and status are the allocator's.
		{verb: "watch", group: pr, resource: "loadbalancerippools"},
		{verb: "get", group: pr, resource: "loadbalancerippools", name: "public"},
		{verb: "update", group: pr, resource: "loadbalancerippools", sub: "status", name: "public"},
		{verb: "create", group: pr, resource: "loadbalancerippools"},
	}
	return allowed, denied
}

// lbipamAccess is what the allocator's ServiceAccount may and may not do: lbipam's rules.
func lbipamAccess() (allowed, denied []access) {
	allowed = []access{
		{verb: "get", resource: "services", namespace: "default", name: "web"},
		{verb: "list", resource: "services"},
		{verb: "watch", resource: "services"},
		{verb: "update", resource: "services", sub: "status", namespace: "default", name: "web"},
		{verb: "list", group: pr, resource: "loadbalancerippools"},
		{verb: "watch", group: pr, resource: "loadbalancerippools"},
		{verb: "update", group: pr, resource: "loadbalancerippools", sub: "status", name: "public"},
		{verb: "list", resource: "nodes"},
		{verb: "watch", resource: "nodes"},
		{verb: "create", resource: "events", namespace: "default"},
		{verb: "patch", resource: "events", namespace: "web"},
		{verb: "get", group: coord, resource: "leases", namespace: namespace, name: lbipam.DefaultLeaseName},
		{verb: "update", group: coord, resource: "leases", namespace: namespace, name: lbipam.DefaultLeaseName},
		{verb: "create", group: coord, resource: "leases", namespace: namespace},
	}
	denied = []access{
		// A Service's spec is its owner's: the allocator writes status only.
		{verb: "update", resource: "services", namespace: "default", name: "web"},
		{verb: "patch", resource: "services", namespace: "default", name: "web"},
		{verb: "create", resource: "services", namespace: "default"},
		{verb: "delete", resource: "services", namespace: "default", name: "web"},
		{verb: "patch", resource: "services", sub: "status", namespace: "default", name: "web"},
		{verb: "get", group: pr, resource: "loadbalancerippools", name: "public"},
		{verb: "create", group: pr, resource: "loadbalancerippools"},
		{verb: "update", group: pr, resource: "loadbalancerippools", name: "public"},
		{verb: "delete", group: pr, resource: "loadbalancerippools", name: "public"},
		{verb: "list", group: pr, resource: "bgppeers"},
		{verb: "list", resource: "secrets"},
		{verb: "list", resource: "secrets", namespace: namespace},
		{verb: "get", resource: "secrets", namespace: namespace, name: "tor-rack1"},
		{verb: "list", resource: "pods"},
		{verb: "get", resource: "nodes", name: "node-1"},
		{verb: "update", resource: "nodes", sub: "status", name: "node-1"},
		{verb: "list", group: disc, resource: "endpointslices"},
		{verb: "delete", resource: "events", namespace: "default", name: "x"},
		{verb: "delete", group: coord, resource: "leases", namespace: namespace, name: lbipam.DefaultLeaseName},
		{verb: "list", group: coord, resource: "leases", namespace: namespace},
		{verb: "get", group: coord, resource: "leases", namespace: "kube-system", name: lbipam.DefaultLeaseName},
		{verb: "create", group: coord, resource: "leases", namespace: "kube-system"},
		{verb: "get", resource: "configmaps", namespace: namespace, name: "podroute-config"},
		{verb: "escalate", group: "rbac.authorization.k8s.io", resource: "clusterroles"},
		{verb: "impersonate", resource: "serviceaccounts"},
	}
	return allowed, denied
}

// testAccess asks the API server, as a ServiceAccount (who), what it may do.
func testAccess(ctx context.Context, t *testing.T, cs kubernetes.Interface, who string, allowed, denied []access) {
	check := func(a access) bool {
		t.Helper()
		r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{
			Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{
				Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.sub, Namespace: a.namespace, Name: a.name,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("access review %s: %v", a, err)
		}
		return r.Status.Allowed
	}
	for _, a := range allowed {
		if !check(a) {
			t.Errorf("%s cannot %s", who, a)
		}
	}
	for _, a := range denied {
		if check(a) {
			t.Errorf("%s can %s", who, a)
		}
	}
	// Nothing but those rules: the ServiceAccount's rules review lists exactly them in each
	// namespace the manifests touch (plus what every authenticated user gets).
	r, err := cs.AuthorizationV1().SelfSubjectRulesReviews().Create(ctx, &authzv1.SelfSubjectRulesReview{Spec: authzv1.SelfSubjectRulesReviewSpec{Namespace: namespace}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, rule := range r.Status.ResourceRules {
		if slices.Contains(rule.Verbs, "*") || slices.Contains(rule.Resources, "*") {
			t.Errorf("wildcard rule %+v", rule)
		}
	}
}

// testAgentAsSA runs the agent's Kubernetes side (the Node watcher, the NetworkPolicy
// informers, the BGPPeer and BGPConfiguration watcher with the peers' Secrets, the status
// writer and its Events) as the ServiceAccount: it syncs without a single permission problem.
func testAgentAsSA(ctx context.Context, t *testing.T, c *kube.Cluster, admin dynamic.Interface, cs kubernetes.Interface, dyn dynamic.Interface) {
	for i, ip := range []string{"192.0.2.1", "192.0.2.2"} {
		if _, err := c.CreateNode(ctx, fmt.Sprintf("node-%d", i+1), []string{fmt.Sprintf("10.244.%d.0/24", i+1)}, []string{ip}, map[string]string{"rack": "rack1"}); err != nil {
			t.Fatal(err)
		}
	}
	log := testLogger(t)
	wctx, stop := context.WithCancel(ctx)
	defer stop()

	nodes := cluster.NewWatcher(cs, log.With("component", "nodes"))
	go nodes.Run(wctx)
	sync, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if !nodes.WaitForSync(sync) {
		ok, last, _ := nodes.Health()
		t.Fatalf("Node watcher did not sync as the ServiceAccount: ok %v, %s", ok, last)
	}
	if ok, last, _ := nodes.Health(); !ok || len(nodes.Nodes()) != 2 {
		t.Fatalf("Node watcher: ok %v (%s), %d nodes", ok, last, len(nodes.Nodes()))
	}

	// The NetworkPolicy informers: a pod bound to node-1 and a policy, read as the
	// ServiceAccount.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: metav1.NamespaceDefault, Name: "web", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "web", Image: "registry.example/web:1"}}},
	}
	if _, err := c.Client.CoreV1().Pods(metav1.NamespaceDefault).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deny := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: metav1.NamespaceDefault, Name: "deny"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}
	if _, err := c.Client.NetworkingV1().NetworkPolicies(metav1.NamespaceDefault).Create(ctx, deny, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	policies := cluster.NewPolicyWatcher(cs, "node-1", log.With("component", "policy"))
	go policies.Run(wctx)
	if !policies.WaitForSync(sync) {
		t.Fatal("NetworkPolicy informers (pods, namespaces, networkpolicies) did not sync as the ServiceAccount")
	}
	in := policies.Input()
	if !policies.Active() || len(in.Policies) != 1 || len(in.Local) != 1 || in.Local[0].Name != "web" || in.Namespaces[namespace] == nil {
		t.Fatalf("policy input as the ServiceAccount: active %v, %d policies, local %+v, namespaces %v",
			policies.Active(), len(in.Policies), in.Local, slices.Collect(maps.Keys(in.Namespaces)))
	}

	defaults := config.DefaultConfiguration()
	settings := config.NewWatcher(dyn, config.Options{Defaults: &defaults, Nodes: nodes.Nodes, Logger: log.With("component", "config")})
	go settings.Run(wctx)
	if !settings.WaitForSync(sync) {
		t.Fatalf("config watcher did not sync as the ServiceAccount: %q", settings.Snapshot().Problems)
	}
	var s config.Settings
	eventually(t, 30*time.Second, "peers and configuration read as the ServiceAccount", func() error {
		s = settings.Snapshot()
		if !s.Synced || len(s.Problems) != 0 || !s.PeersInstalled || !s.ConfigurationInstalled || s.ConfigurationObject == nil {
			return fmt.Errorf("synced %v, problems %q, installed %v/%v", s.Synced, s.Problems, s.PeersInstalled, s.ConfigurationInstalled)
		}
		if len(s.Peers) != 1 || s.Peers[0].Name != "tor-rack1" || s.Peers[0].Password != "change-me" {
			return fmt.Errorf("peers %+v, invalid %+v: want tor-rack1 with its password from podroute-system", s.Peers, s.InvalidPeers)
		}
		return nil
	})

	// Service advertisement: Services and EndpointSlices, read as the ServiceAccount.
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: metav1.NamespaceDefault, Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}, NodeName: ptr("node-1")}},
	}
	if _, err := c.Client.DiscoveryV1().EndpointSlices(slice.Namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svcs := services.NewWatcher(cs, log.With("component", "services"))
	go svcs.Run(wctx)
	if !svcs.WaitForSync(sync) {
		t.Fatal("Service and EndpointSlice informers did not sync as the ServiceAccount")
	}
	snap := svcs.Snapshot()
	if !slices.ContainsFunc(snap.Services, func(s services.Service) bool { return s.Key() == "default/kubernetes" }) ||
		!slices.ContainsFunc(snap.Endpoints, func(e services.Endpoints) bool { return e.Key() == "default/web" }) {
		t.Errorf("Services and endpoints as the ServiceAccount: %+v", snap)
	}

	sw := config.NewStatusWriter(dyn, cs.CoreV1(), "node-1", log.With("component", "status"))
	defer sw.Shutdown()
	if err := sw.Sync(ctx, s); err != nil {
		t.Fatalf("status as the ServiceAccount: %v", err)
	}
	for _, o := range []struct {
		gvr  schema.GroupVersionResource
		name string
	}{{config.BGPConfigurationGVR, "default"}, {config.BGPPeerGVR, "tor-rack1"}} {
		u, err := admin.Resource(o.gvr).Get(ctx, o.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		if len(conds) == 0 {
			t.Errorf("%s %s: no status written", o.gvr.Resource, o.name)
		}
	}

	// A peer whose Secret lies outside podroute-system: reported invalid (the agent may not
	// read it), with an Event in namespace default, written by the ServiceAccount.
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "x", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("get namespace as the ServiceAccount: %v, want Forbidden", err)
	}
	peer := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": config.APIVersion, "kind": config.KindBGPPeer,
		"metadata": map[string]any{"name": "elsewhere"},
		"spec": map[string]any{
			"peerAddress": "192.0.2.253", "peerASN": int64(65001),
			"passwordSecretRef": map[string]any{"namespace": "kube-system", "name": "tor", "key": "password"},
		},
	}}
	if _, err := admin.Resource(config.BGPPeerGVR).Create(ctx, peer, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "peer with an unreadable Secret reported", func() error {
		s = settings.Snapshot()
		if !s.Synced {
			return fmt.Errorf("not synced")
		}
		for _, p := range s.InvalidPeers {
			if p.Name == "elsewhere" {
				return nil
			}
		}
		return fmt.Errorf("invalid peers %+v", s.InvalidPeers)
	})
	if err := sw.Sync(ctx, s); err != nil {
		t.Fatalf("status as the ServiceAccount: %v", err)
	}
	eventually(t, 30*time.Second, "Event recorded by the ServiceAccount", func() error {
		evs, err := c.Client.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Name == "elsewhere" && e.Reason == config.ReasonInvalidSpec {
				t.Logf("event: %s %s: %s", e.Type, e.Reason, e.Message)
				return nil
			}
		}
		return fmt.Errorf("%d events, none InvalidSpec about elsewhere", len(evs.Items))
	})
}
