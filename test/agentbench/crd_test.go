package agentbench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/podroute/podroute/config"
	"github.com/podroute/podroute/test/lab"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// crdDir holds podroute's CustomResourceDefinitions, relative to this package.
const crdDir = "../../deploy/crds"

// installCRDs creates podroute's CustomResourceDefinitions (BGPPeer, BGPConfiguration) in the
// lab's API server and waits until both resources are served.
func installCRDs(b *testing.B, dyn dynamic.Interface) {
	b.Helper()
	files, err := filepath.Glob(filepath.Join(crdDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		b.Fatalf("CRD manifests in %s: %v %v", crdDir, files, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), converge)
	defer cancel()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		js, err := yaml.YAMLToJSON(data)
		if err != nil {
			b.Fatalf("%s: %v", f, err)
		}
		u := &unstructured.Unstructured{}
		if err := json.Unmarshal(js, &u.Object); err != nil {
			b.Fatalf("%s: %v", f, err)
		}
		if _, err := dyn.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			b.Fatalf("create CRD from %s: %v", f, err)
		}
	}
	// Established can precede the resource being served by a moment: list both.
	lab.Eventually(b, converge, "podroute CRDs served", func() error {
		for _, gvr := range []schema.GroupVersionResource{config.BGPPeerGVR, config.BGPConfigurationGVR} {
			if _, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
}

// createBGPPeer creates a BGPPeer object.
func createBGPPeer(dyn dynamic.Interface, name string, spec config.BGPPeerSpec) error {
	u, err := config.ToUnstructured(&config.BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := dyn.Resource(config.BGPPeerGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create BGPPeer %s: %w", name, err)
	}
	return nil
}

// deleteBGPPeer deletes a BGPPeer object.
func deleteBGPPeer(dyn dynamic.Interface, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dyn.Resource(config.BGPPeerGVR).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete BGPPeer %s: %w", name, err)
	}
	return nil
}
