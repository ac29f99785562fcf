package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/lbipam"
	"github.com/podroute/podroute/test/cniutil"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// SecretNamespace holds the peer passwords the lab creates.
const SecretNamespace = "podroute-secrets"

// CRDs is the lab's API server with podroute's CustomResourceDefinitions installed.
type CRDs struct {
	t   testing.TB
	l   *Lab
	Dyn dynamic.Interface
}

// InstallCRDs applies deploy/crds and waits until the resources are served.
func InstallCRDs(t testing.TB, l *Lab) *CRDs {
	t.Helper()
	dyn := dynamic.NewForConfigOrDie(l.Kube.RestConfig)
	root, err := cniutil.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(root, "deploy", "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("CRD manifests: %v %v", files, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		js, err := yaml.YAMLToJSON(data)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		u := &unstructured.Unstructured{}
		if err := json.Unmarshal(js, &u.Object); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if _, err := dyn.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create CRD from %s: %v", f, err)
		}
	}
	Eventually(t, 30*time.Second, "custom resources served", func() error {
		for _, gvr := range []schema.GroupVersionResource{config.BGPPeerGVR, config.BGPConfigurationGVR, lbipam.PoolGVR} {
			if _, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
	return &CRDs{t: t, l: l, Dyn: dyn}
}

// Create creates a podroute object (a *config.BGPPeer or *config.BGPConfiguration).
func (c *CRDs) Create(gvr schema.GroupVersionResource, obj any) {
	c.t.Helper()
	u, err := config.ToUnstructured(obj)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Dyn.Resource(gvr).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
	}
}

// Configuration creates the BGPConfiguration "default".
func (c *CRDs) Configuration(spec config.BGPConfigurationSpec) {
	c.t.Helper()
	c.Create(config.BGPConfigurationGVR, &config.BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: config.ConfigurationName}, Spec: spec})
}

// PatchConfiguration merge-patches the spec of the BGPConfiguration "default".
func (c *CRDs) PatchConfiguration(spec map[string]any) {
	c.t.Helper()
	b, _ := json.Marshal(map[string]any{"spec": spec})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Dyn.Resource(config.BGPConfigurationGVR).Patch(ctx, config.ConfigurationName, types.MergePatchType, b, metav1.PatchOptions{}); err != nil {
		c.t.Fatalf("patch BGPConfiguration %s: %v", config.ConfigurationName, err)
	}
}

// Pool creates a LoadBalancerIPPool (cluster-scoped), for podroute-lbipam.
func (c *CRDs) Pool(name string, spec lbipam.PoolSpec) {
	c.t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&spec)
	if err != nil {
		c.t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": config.APIVersion,
		"kind":       "LoadBalancerIPPool",
		"metadata":   map[string]any{"name": name},
		"spec":       m,
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Dyn.Resource(lbipam.PoolGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("create LoadBalancerIPPool %s: %v", name, err)
	}
}

// Peer creates a BGPPeer, failing the test if it cannot.
func (c *CRDs) Peer(name string, spec config.BGPPeerSpec) {
	c.t.Helper()
	if err := c.CreatePeer(name, spec); err != nil {
		c.t.Fatal(err)
	}
}

// CreatePeer creates a BGPPeer and returns the error, for callers timing the call or
// running it off the test's goroutine.
func (c *CRDs) CreatePeer(name string, spec config.BGPPeerSpec) error {
	u, err := config.ToUnstructured(&config.BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Dyn.Resource(config.BGPPeerGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create BGPPeer %s: %w", name, err)
	}
	return nil
}

// PatchPeer merge-patches a BGPPeer's spec.
func (c *CRDs) PatchPeer(name string, spec map[string]any) {
	c.t.Helper()
	b, _ := json.Marshal(map[string]any{"spec": spec})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Dyn.Resource(config.BGPPeerGVR).Patch(ctx, name, types.MergePatchType, b, metav1.PatchOptions{}); err != nil {
		c.t.Fatalf("patch BGPPeer %s: %v", name, err)
	}
}

// DeletePeer deletes a BGPPeer.
func (c *CRDs) DeletePeer(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Dyn.Resource(config.BGPPeerGVR).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete BGPPeer %s: %w", name, err)
	}
	return nil
}

// PeerConditions returns a BGPPeer's status conditions.
func (c *CRDs) PeerConditions(name string) ([]metav1.Condition, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u, err := c.Dyn.Resource(config.BGPPeerGVR).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var p config.BGPPeer
	b, _ := json.Marshal(u.Object)
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	return p.Status.Conditions, nil
}

// Secret creates or updates a Secret in SecretNamespace holding a password under "password".
func (c *CRDs) Secret(name, password string) *config.SecretKeyRef {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	core := c.l.Kube.Client.CoreV1()
	if _, err := core.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: SecretNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		c.t.Fatal(err)
	}
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: SecretNamespace}, StringData: map[string]string{"password": password}}
	if _, err := core.Secrets(SecretNamespace).Create(ctx, s, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		if _, err = core.Secrets(SecretNamespace).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			c.t.Fatal(err)
		}
	} else if err != nil {
		c.t.Fatal(err)
	}
	return &config.SecretKeyRef{Namespace: SecretNamespace, Name: name, Key: "password"}
}
