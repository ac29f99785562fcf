package config

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/podroute/podroute/bgp"
	"github.com/podroute/podroute/cluster"
	"github.com/podroute/podroute/test/kube"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

const (
	agentUser       = "podroute-agent-test"
	secretNamespace = "podroute-secrets"
)

func testLogger(t *testing.T) *slog.Logger { return kube.TestLogger(t, slog.LevelDebug, "") }

var eventually = kube.Eventually

func TestKube(t *testing.T) {
	c := kube.Start(t, kube.Options{Users: []kube.User{{Name: agentUser, Groups: []string{"podroute:agents"}}}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	admin := dynamic.NewForConfigOrDie(c.RestConfig)
	flags := DefaultConfiguration()
	flags.ASN = 65000

	// A watcher started before the CRDs exist must fall back, then pick them up.
	early := NewWatcher(admin, Options{Defaults: &flags, Logger: testLogger(t)})
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go early.Run(wctx)

	t.Run("CRDsNotInstalled", func(t *testing.T) {
		wait, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if !early.WaitForSync(wait) {
			t.Fatal("watcher not synced without CRDs")
		}
		s := early.Snapshot()
		if s.PeersInstalled || s.ConfigurationInstalled || len(s.Peers) != 0 || s.ConfigurationObject != nil {
			t.Fatalf("settings without CRDs: %+v", s)
		}
		if len(s.Problems) != 2 || !strings.Contains(s.Problems[0], "CRDs not installed") {
			t.Errorf("problems %q", s.Problems)
		}
		if s.Configuration.ASN != 65000 || !s.Configuration.NodeToNodeMesh || !s.Configuration.ExportPodCIDRs {
			t.Errorf("configuration without CRDs %+v, want the flags' defaults", s.Configuration)
		}
		sw := NewStatusWriter(admin, c.Client.CoreV1(), "n0", testLogger(t))
		defer sw.Shutdown()
		if err := sw.Sync(ctx, s); err != nil {
			t.Errorf("status sync without CRDs: %v", err)
		}
	})

	t.Run("InstallCRDs", func(t *testing.T) { installCRDs(ctx, t, admin) })
	if t.Failed() {
		t.FailNow()
	}
	t.Run("DiscoveryAndPrinting", func(t *testing.T) { testDiscovery(ctx, t, c.Client, admin) })

	t.Run("Schema", func(t *testing.T) { testSchema(ctx, t, admin) })
	t.Run("Watcher", func(t *testing.T) { testWatcher(ctx, t, c, admin) })

	t.Run("CRDsInstalledLater", func(t *testing.T) {
		if _, err := admin.Resource(BGPPeerGVR).Create(ctx, peerObject(t, "late", BGPPeerSpec{PeerAddress: "203.0.113.9", PeerASN: 65009}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The reflector retries a missing resource with a backoff of up to 30s.
		eventually(t, 90*time.Second, "watcher started before the CRDs sees them", func() error {
			s := early.Snapshot()
			if !s.PeersInstalled || !s.ConfigurationInstalled || len(s.Problems) != 0 {
				return fmt.Errorf("installed %v/%v, problems %q", s.PeersInstalled, s.ConfigurationInstalled, s.Problems)
			}
			if !slices.ContainsFunc(s.Peers, func(p Peer) bool { return p.Name == "late" }) {
				return fmt.Errorf("peers %v", peerNames(s.Peers))
			}
			return nil
		})
	})

	t.Run("CRDRemoved", func(t *testing.T) {
		if err := admin.Resource(crdGVR).Delete(ctx, "bgppeers.podroute.io", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 60*time.Second, "watcher falls back once the BGPPeer CRD is gone", func() error {
			s := early.Snapshot()
			if s.PeersInstalled || len(s.Peers) != 0 || len(s.Problems) != 1 || !strings.Contains(s.Problems[0], "CRDs not installed") {
				return fmt.Errorf("installed %v, peers %v, problems %q", s.PeersInstalled, peerNames(s.Peers), s.Problems)
			}
			return nil
		})
	})
}

func installCRDs(ctx context.Context, t *testing.T, client dynamic.Interface) {
	files, err := filepath.Glob("../deploy/crds/*.yaml")
	if err != nil || len(files) < 2 {
		t.Fatalf("CRD manifests: %v %v", files, err)
	}
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
		if _, err := client.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create CRD from %s: %v", f, err)
		}
		eventually(t, 30*time.Second, "CRD "+u.GetName()+" established", func() error {
			got, err := client.Resource(crdGVR).Get(ctx, u.GetName(), metav1.GetOptions{})
			if err != nil {
				return err
			}
			conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
				if m["type"] == "NonStructuralSchema" || (m["type"] == "NamesAccepted" && m["status"] == "False") {
					t.Fatalf("CRD %s rejected: %v", u.GetName(), m)
				}
			}
			return fmt.Errorf("conditions %v", conds)
		})
	}
	// Established can precede the resource being served by a moment.
	eventually(t, 30*time.Second, "custom resources served", func() error {
		if _, err := client.Resource(BGPPeerGVR).List(ctx, metav1.ListOptions{}); err != nil {
			return err
		}
		_, err := client.Resource(BGPConfigurationGVR).List(ctx, metav1.ListOptions{})
		return err
	})
}

func peerObject(t *testing.T, name string, spec BGPPeerSpec) *unstructured.Unstructured {
	t.Helper()
	u, err := ToUnstructured(&BGPPeer{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func configObject(t *testing.T, name string, spec BGPConfigurationSpec) *unstructured.Unstructured {
	t.Helper()
	u, err := ToUnstructured(&BGPConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func testSchema(ctx context.Context, t *testing.T, client dynamic.Interface) {
	peers := client.Resource(BGPPeerGVR)
	good := BGPPeerSpec{PeerAddress: "192.0.2.1", PeerASN: 65001, HoldTime: "9s", KeepaliveTime: "3s"}

	created, err := peers.Create(ctx, peerObject(t, "schema-ok", good), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("valid BGPPeer refused: %v", err)
	}
	if port, _, _ := unstructured.NestedInt64(created.Object, "spec", "port"); port != 179 {
		t.Errorf("spec.port defaulted to %d, want 179", port)
	}
	if err := peers.Delete(ctx, "schema-ok", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name   string
		mutate func(*BGPPeerSpec)
		want   []string
	}{
		{"asn-zero", func(s *BGPPeerSpec) { s.PeerASN = 0 }, []string{"spec.peerASN", "greater than or equal to 1"}},
		{"asn-big", func(s *BGPPeerSpec) { s.PeerASN = 1 << 32 }, []string{"spec.peerASN", "less than or equal to 4294967295"}},
		{"as-trans", func(s *BGPPeerSpec) { s.PeerASN = 23456 }, []string{"spec.peerASN", "AS_TRANS"}},
		{"bad-ip", func(s *BGPPeerSpec) { s.PeerAddress = "192.0.2.300" }, []string{"spec.peerAddress", "must be an IPv4 or IPv6 address"}},
		{"hostname", func(s *BGPPeerSpec) { s.PeerAddress = "tor1.example" }, []string{"spec.peerAddress", "must be an IPv4 or IPv6 address"}},
		{"link-local", func(s *BGPPeerSpec) { s.PeerAddress = "fe80::1" }, []string{"spec.peerAddress", "neither unspecified nor link-local"}},
		{"exclusive", func(s *BGPPeerSpec) { s.EBGPMultihop = ptr[int64](2); s.TTLSecurity = ptr[int64](1) }, []string{"spec.ttlSecurity", "mutually exclusive"}},
		{"ttl", func(s *BGPPeerSpec) { s.EBGPMultihop = ptr[int64](256) }, []string{"spec.ebgpMultihop", "less than or equal to 255"}},
		{"hold-short", func(s *BGPPeerSpec) { s.HoldTime = "2s"; s.KeepaliveTime = "" }, []string{"spec.holdTime", "between 3s and 65535s"}},
		{"hold-syntax", func(s *BGPPeerSpec) { s.HoldTime = "9.5s" }, []string{"spec.holdTime", "should match"}},
		{"keepalive", func(s *BGPPeerSpec) { s.KeepaliveTime = "10s" }, []string{"spec.keepaliveTime", "shorter than holdTime"}},
		{"restart", func(s *BGPPeerSpec) { s.GracefulRestartTime = "2h" }, []string{"spec.gracefulRestartTime", "between 1s and 4095s"}},
		{"port", func(s *BGPPeerSpec) { s.Port = ptr[int64](70000) }, []string{"spec.port", "less than or equal to 65535"}},
		{"secret-ref", func(s *BGPPeerSpec) { s.PasswordSecretRef = &SecretKeyRef{Namespace: "ns", Name: "Bad_Name", Key: "k"} }, []string{"spec.passwordSecretRef.name"}},
		{"selector-op", func(s *BGPPeerSpec) {
			s.NodeSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "rack", Operator: "Near"}}}
		}, []string{"spec.nodeSelector.matchExpressions[0].operator", "Unsupported value"}},
	} {
		t.Run("BGPPeer/"+tc.name, func(t *testing.T) {
			spec := good
			tc.mutate(&spec)
			_, err := peers.Create(ctx, peerObject(t, "schema-"+tc.name, spec), metav1.CreateOptions{})
			expectInvalid(t, err, tc.want...)
		})
	}

	configs := client.Resource(BGPConfigurationGVR)
	t.Run("BGPConfiguration/services", func(t *testing.T) {
		spec := BGPConfigurationSpec{
			ServiceClusterIPs: []string{"10.96.0.0/12", "fd00:10:96::/108"}, ServiceExternalIPs: []string{"198.51.100.0/24"},
			ServiceLoadBalancerIPs: []string{"203.0.113.0/24"}, Communities: []string{"64512:100"},
			Advertisements: &AdvertisementsSpec{
				ClusterIPs:      &AdvertisementSpec{Communities: []string{"64512:200"}},
				LoadBalancerIPs: &AdvertisementSpec{Communities: []string{"64512:400"}, ASPathPrepend: ptr[int64](2)},
				PodCIDRs:        &AdvertisementSpec{ASPathPrepend: ptr[int64](1)},
			},
			MeshBFD: &BFDSpec{MinTx: "200ms", Multiplier: ptr[int64](4)},
		}
		got, err := configs.Create(ctx, configObject(t, ConfigurationName, spec), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("BGPConfiguration with Service advertisement refused: %v", err)
		}
		defer func() { _ = configs.Delete(ctx, ConfigurationName, metav1.DeleteOptions{}) }()
		back, err := BGPConfigurationFromUnstructured(got)
		if err != nil {
			t.Fatal(err)
		}
		cfg, errs := back.Parse(DefaultConfiguration())
		if len(errs) != 0 || len(cfg.ServiceClusterIPs) != 2 || cfg.Advertisements.LoadBalancerIPs.ASPathPrepend != 2 ||
			cfg.Advertisements.PodCIDRs.Communities[0].String() != "64512:100" || cfg.Advertisements.PodCIDRs.ASPathPrepend != 1 ||
			cfg.MeshBFD == nil || cfg.MeshBFD.MinTx != 200*time.Millisecond || cfg.MeshBFD.Multiplier != 4 {
			t.Errorf("stored and parsed back: %+v %v", cfg, errs)
		}
	})
	t.Run("BGPConfiguration/defaults", func(t *testing.T) {
		u := configObject(t, ConfigurationName, BGPConfigurationSpec{})
		unstructured.RemoveNestedField(u.Object, "spec")
		got, err := configs.Create(ctx, u, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("empty BGPConfiguration refused: %v", err)
		}
		defer func() { _ = configs.Delete(ctx, ConfigurationName, metav1.DeleteOptions{}) }()
		asn, _, _ := unstructured.NestedInt64(got.Object, "spec", "asNumber")
		mesh, _, _ := unstructured.NestedBool(got.Object, "spec", "nodeToNodeMesh")
		export, _, _ := unstructured.NestedBool(got.Object, "spec", "exportPodCIDRs")
		if asn != DefaultASN || !mesh || !export {
			t.Errorf("defaults: asNumber=%d nodeToNodeMesh=%v exportPodCIDRs=%v (%v)", asn, mesh, export, got.Object["spec"])
		}
	})
	for _, tc := range []struct {
		name, objName string
		spec          BGPConfigurationSpec
		want          []string
	}{
		{"name", "cluster", BGPConfigurationSpec{}, []string{`metadata.name must be "default"`}},
		{"asn-zero", ConfigurationName, BGPConfigurationSpec{ASNumber: ptr[int64](0)}, []string{"spec.asNumber", "greater than or equal to 1"}},
		{"community", ConfigurationName, BGPConfigurationSpec{Communities: []string{"64512:100", "70000:1"}}, []string{"spec.communities[1]", "0..65535"}},
		{"community-syntax", ConfigurationName, BGPConfigurationSpec{Communities: []string{"no-export"}}, []string{"spec.communities[0]", "should match"}},
		{"cluster-id", ConfigurationName, BGPConfigurationSpec{RouteReflectorClusterID: "2001:db8::1"}, []string{"spec.routeReflectorClusterID"}},
		{"cidr", ConfigurationName, BGPConfigurationSpec{ClusterCIDRs: []string{"10.244.0.0/33"}}, []string{"spec.clusterCIDRs[0]", "must be a CIDR"}},
		{"cidr-host-bits", ConfigurationName, BGPConfigurationSpec{ServiceCIDRs: []string{"10.96.0.1/12"}}, []string{"spec.serviceCIDRs[0]", "host bits"}},
		{"service-cluster-ips", ConfigurationName, BGPConfigurationSpec{ServiceClusterIPs: []string{"10.96.0.0/33"}}, []string{"spec.serviceClusterIPs[0]", "must be a CIDR"}},
		{"service-external-ips", ConfigurationName, BGPConfigurationSpec{ServiceExternalIPs: []string{"198.51.100.1/24"}}, []string{"spec.serviceExternalIPs[0]", "host bits"}},
		{"service-lb-ips", ConfigurationName, BGPConfigurationSpec{ServiceLoadBalancerIPs: []string{"lb"}}, []string{"spec.serviceLoadBalancerIPs[0]", "must be a CIDR"}},
		{"prepend", ConfigurationName, BGPConfigurationSpec{Advertisements: &AdvertisementsSpec{LoadBalancerIPs: &AdvertisementSpec{ASPathPrepend: ptr[int64](11)}}},
			[]string{"spec.advertisements.loadBalancerIPs.asPathPrepend", "less than or equal to 10"}},
		{"class-community", ConfigurationName, BGPConfigurationSpec{Advertisements: &AdvertisementsSpec{ExternalIPs: &AdvertisementSpec{Communities: []string{"1:70000"}}}},
			[]string{"spec.advertisements.externalIPs.communities[0]", "0..65535"}},
		{"communities-twice", ConfigurationName, BGPConfigurationSpec{Communities: []string{"1:1"}, Advertisements: &AdvertisementsSpec{PodCIDRs: &AdvertisementSpec{Communities: []string{"1:2"}}}},
			[]string{"spec.communities or spec.advertisements.podCIDRs.communities"}},
	} {
		t.Run("BGPConfiguration/"+tc.name, func(t *testing.T) {
			_, err := configs.Create(ctx, configObject(t, tc.objName, tc.spec), metav1.CreateOptions{})
			expectInvalid(t, err, tc.want...)
		})
	}
}

func expectInvalid(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want a rejection naming %q", want)
	}
	if !apierrors.IsInvalid(err) {
		t.Fatalf("error %v is not Invalid", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
	t.Logf("refused: %v", err)
}

// grantAgent gives agentUser exactly the RBAC the package documents.
func grantAgent(ctx context.Context, t *testing.T, cs kubernetes.Interface, secretNames ...string) {
	subjects := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: agentUser}}
	_, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "podroute-config"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{Group}, Resources: []string{"bgppeers"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{Group}, Resources: []string{"bgpconfigurations"}, ResourceNames: []string{ConfigurationName}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{Group}, Resources: []string{"bgppeers/status", "bgpconfigurations/status"}, Verbs: []string{"patch"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "podroute-config"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "podroute-config"},
		Subjects:   subjects,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	roles := map[string]rbacv1.PolicyRule{
		secretNamespace:         {APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: secretNames, Verbs: []string{"list", "watch"}},
		metav1.NamespaceDefault: {APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}
	for ns, rule := range roles {
		if _, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "podroute-config"}, Rules: []rbacv1.PolicyRule{rule}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "podroute-config"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "podroute-config"},
			Subjects:   subjects,
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

func peerNames(ps []Peer) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

func invalidPeer(s Settings, name string) (InvalidPeer, bool) {
	for _, p := range s.InvalidPeers {
		if p.Name == name {
			return p, true
		}
	}
	return InvalidPeer{}, false
}

func testWatcher(ctx context.Context, t *testing.T, c *kube.Cluster, admin dynamic.Interface) {
	cs := c.Client
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: secretNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	grantAgent(ctx, t, cs, "tor-a")
	u, err := c.User(agentUser)
	if err != nil {
		t.Fatal(err)
	}
	agentCfg := c.RestConfigFor(u.Token)
	agentDyn := dynamic.NewForConfigOrDie(agentCfg)
	agentCS := kubernetes.NewForConfigOrDie(agentCfg)

	for _, n := range []struct{ name, cidr, ip, rack string }{
		{"a1", "10.244.1.0/24", "192.0.2.11", "a"},
		{"b1", "10.244.2.0/24", "192.0.2.21", "b"},
	} {
		if _, err := c.CreateNode(ctx, n.name, []string{n.cidr}, []string{n.ip}, map[string]string{"rack": n.rack}); err != nil {
			t.Fatal(err)
		}
	}
	nodes := func() []cluster.Node {
		l, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Errorf("list nodes: %v", err)
			return nil
		}
		var out []cluster.Node
		for i := range l.Items {
			out = append(out, cluster.FromObject(&l.Items[i]))
		}
		return out
	}
	nodeByName := func(name string) cluster.Node {
		for _, n := range nodes() {
			if n.Name == name {
				return n
			}
		}
		t.Fatalf("no node %s", name)
		return cluster.Node{}
	}

	flags := DefaultConfiguration()
	flags.ASN = 65000
	w := NewWatcher(agentDyn, Options{Defaults: &flags, Nodes: nodes, Logger: testLogger(t)})
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go w.Run(wctx)
	sync, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if !w.WaitForSync(sync) {
		t.Fatalf("watcher not synced: %+v", w.Snapshot())
	}
	// One status writer per agent; both run on every change, as every agent does.
	writers := []*StatusWriter{
		NewStatusWriter(agentDyn, agentCS.CoreV1(), "a1", testLogger(t)),
		NewStatusWriter(agentDyn, agentCS.CoreV1(), "b1", testLogger(t)),
	}
	defer func() {
		for _, sw := range writers {
			sw.Shutdown()
		}
	}()
	syncStatus := func() Settings {
		s := w.Snapshot()
		for _, sw := range writers {
			if err := sw.Sync(ctx, s); err != nil {
				t.Errorf("status sync: %v", err)
			}
		}
		return s
	}

	t.Run("DefaultsWithoutBGPConfiguration", func(t *testing.T) {
		s := w.Snapshot()
		if !s.Synced || !s.PeersInstalled || !s.ConfigurationInstalled || len(s.Problems) != 0 {
			t.Fatalf("settings %+v", s)
		}
		if s.ConfigurationObject != nil || s.Configuration.ASN != 65000 || !s.Configuration.NodeToNodeMesh || s.IsRouteReflector(nodeByName("a1")) {
			t.Errorf("configuration %+v, want the flags' defaults", s.Configuration)
		}
	})

	configs := admin.Resource(BGPConfigurationGVR)
	peers := admin.Resource(BGPPeerGVR)
	t.Run("BGPConfiguration", func(t *testing.T) {
		_, err := configs.Create(ctx, configObject(t, ConfigurationName, BGPConfigurationSpec{
			ASNumber:                   ptr[int64](64600),
			RouteReflectorNodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "b"}},
			Communities:                []string{"64600:1"},
			ClusterCIDRs:               []string{"10.244.0.0/16"},
		}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "BGPConfiguration in the snapshot", func() error {
			s := w.Snapshot()
			if s.ConfigurationObject == nil || s.Configuration.ASN != 64600 || len(s.Configuration.Communities) != 1 ||
				len(s.Configuration.ClusterCIDRs) != 1 || !s.IsRouteReflector(nodeByName("b1")) || s.IsRouteReflector(nodeByName("a1")) {
				return fmt.Errorf("configuration %+v", s.Configuration)
			}
			return nil
		})
		syncStatus()
		eventually(t, 10*time.Second, "BGPConfiguration Valid=True", func() error {
			got, err := configs.Get(ctx, ConfigurationName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			return expectCondition(got, ConditionValid, metav1.ConditionTrue, "")
		})
	})

	secretRef := &SecretKeyRef{Namespace: secretNamespace, Name: "tor-a", Key: "password"}
	t.Run("PeersAndStatus", func(t *testing.T) {
		for _, p := range []struct {
			name string
			spec BGPPeerSpec
		}{
			{"all", BGPPeerSpec{PeerAddress: "198.51.100.1", PeerASN: 65100}},
			{"tor-a", BGPPeerSpec{PeerAddress: "10.0.1.1", PeerASN: 65001, PasswordSecretRef: secretRef, HoldTime: "9s",
				NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "a"}}}},
			{"tor-b", BGPPeerSpec{PeerAddress: "10.0.2.1", PeerASN: 65002, TTLSecurity: ptr[int64](1),
				NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "b"}}}},
			{"is-node", BGPPeerSpec{PeerAddress: "192.0.2.21", PeerASN: 65003}},
		} {
			if _, err := peers.Create(ctx, peerObject(t, p.name, p.spec), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		var s Settings
		eventually(t, 10*time.Second, "peers in the snapshot", func() error {
			s = w.Snapshot()
			if !s.Synced || !slices.Equal(peerNames(s.Peers), []string{"all", "tor-b"}) || len(s.InvalidPeers) != 2 {
				return fmt.Errorf("synced %v, valid %v, invalid %+v", s.Synced, peerNames(s.Peers), s.InvalidPeers)
			}
			return nil
		})
		if ip, _ := invalidPeer(s, "tor-a"); !strings.Contains(ip.Errors.ToAggregate().Error(), `spec.passwordSecretRef.name: Invalid value: "tor-a": Secret podroute-secrets/tor-a not found`) {
			t.Errorf("tor-a: %v", ip.Errors)
		}
		if ip, _ := invalidPeer(s, "is-node"); !strings.Contains(ip.Errors.ToAggregate().Error(), "spec.peerAddress") {
			t.Errorf("is-node: %v", ip.Errors)
		}
		if got := peerNames(s.PeersForNode(nodeByName("b1"))); !slices.Equal(got, []string{"all", "tor-b"}) {
			t.Errorf("peers of b1 %v", got)
		}
		if got := peerNames(s.PeersForNode(nodeByName("a1"))); !slices.Equal(got, []string{"all"}) {
			t.Errorf("peers of a1 %v", got)
		}

		syncStatus()
		want := map[string]struct {
			status metav1.ConditionStatus
			msg    string
		}{
			"all":     {metav1.ConditionTrue, ""},
			"tor-b":   {metav1.ConditionTrue, ""},
			"tor-a":   {metav1.ConditionFalse, "spec.passwordSecretRef.name"},
			"is-node": {metav1.ConditionFalse, "spec.peerAddress: Invalid value: \"192.0.2.21\": is the address of node b1"},
		}
		for name, cw := range want {
			eventually(t, 10*time.Second, "status of "+name, func() error {
				got, err := peers.Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				if err := expectCondition(got, ConditionValid, cw.status, cw.msg); err != nil {
					return err
				}
				return expectCondition(got, ConditionAccepted, cw.status, "")
			})
		}
		for _, name := range []string{"tor-a", "is-node"} {
			eventually(t, 10*time.Second, "event for "+name, func() error { return expectEvents(ctx, cs, name, ReasonInvalidSpec, 1) })
		}

		// Idempotence: nothing changed, so no agent writes again.
		before := resourceVersions(ctx, t, peers)
		for range 3 {
			syncStatus()
		}
		time.Sleep(500 * time.Millisecond)
		if after := resourceVersions(ctx, t, peers); !maps.Equal(before, after) {
			t.Errorf("status rewritten without a change: %v -> %v", before, after)
		}
		for _, name := range []string{"tor-a", "is-node"} {
			if err := expectEvents(ctx, cs, name, ReasonInvalidSpec, 1); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("SecretFixesPeer", func(t *testing.T) {
		if _, err := cs.CoreV1().Secrets(secretNamespace).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "tor-a"},
			Data:       map[string][]byte{"password": []byte("s3cret")},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "tor-a valid with its password", func() error {
			s := w.Snapshot()
			for _, p := range s.PeersForNode(nodeByName("a1")) {
				if p.Name == "tor-a" && p.Password == "s3cret" && p.HoldTime == 9*time.Second {
					return nil
				}
			}
			return fmt.Errorf("peers of a1 %v, invalid %+v", peerNames(s.PeersForNode(nodeByName("a1"))), s.InvalidPeers)
		})
		syncStatus()
		eventually(t, 10*time.Second, "tor-a Valid=True", func() error {
			got, err := peers.Get(ctx, "tor-a", metav1.GetOptions{})
			if err != nil {
				return err
			}
			return expectCondition(got, ConditionValid, metav1.ConditionTrue, "")
		})
		eventually(t, 10*time.Second, "event Valid for tor-a", func() error { return expectEvents(ctx, cs, "tor-a", ReasonValid, 1) })

		// A password change reaches the snapshot.
		sec, err := cs.CoreV1().Secrets(secretNamespace).Get(ctx, "tor-a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sec.Data["password"] = []byte("n3w")
		if _, err := cs.CoreV1().Secrets(secretNamespace).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "new password", func() error {
			for _, p := range w.Snapshot().Peers {
				if p.Name == "tor-a" && p.Password == "n3w" {
					return nil
				}
			}
			return errors.New("old password")
		})
	})

	t.Run("UpdateAndDelete", func(t *testing.T) {
		// Move tor-b to rack a: a spec change, generation 2.
		got, err := peers.Get(ctx, "tor-b", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := unstructured.SetNestedField(got.Object, "a", "spec", "nodeSelector", "matchLabels", "rack"); err != nil {
			t.Fatal(err)
		}
		if _, err := peers.Update(ctx, got, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-w.Changed():
		case <-time.After(10 * time.Second):
			t.Fatal("no change signalled for a spec update")
		}
		eventually(t, 10*time.Second, "tor-b moved to rack a", func() error {
			s := w.Snapshot()
			if got := peerNames(s.PeersForNode(nodeByName("a1"))); !slices.Equal(got, []string{"all", "tor-a", "tor-b"}) {
				return fmt.Errorf("peers of a1 %v", got)
			}
			if got := peerNames(s.PeersForNode(nodeByName("b1"))); !slices.Equal(got, []string{"all"}) {
				return fmt.Errorf("peers of b1 %v", got)
			}
			return nil
		})
		syncStatus()
		eventually(t, 10*time.Second, "observedGeneration 2", func() error {
			got, err := peers.Get(ctx, "tor-b", metav1.GetOptions{})
			if err != nil {
				return err
			}
			og, _, _ := unstructured.NestedInt64(got.Object, "status", "observedGeneration")
			if got.GetGeneration() != 2 || og != 2 {
				return fmt.Errorf("generation %d, observedGeneration %d", got.GetGeneration(), og)
			}
			return expectCondition(got, ConditionValid, metav1.ConditionTrue, "")
		})

		// Invalid for podroute but valid for the schema: ebgpMultihop on an iBGP peer.
		got, err = peers.Get(ctx, "tor-b", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_ = unstructured.SetNestedField(got.Object, int64(64600), "spec", "peerASN")
		unstructured.RemoveNestedField(got.Object, "spec", "ttlSecurity")
		_ = unstructured.SetNestedField(got.Object, int64(2), "spec", "ebgpMultihop")
		if _, err := peers.Update(ctx, got, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "tor-b invalid", func() error {
			syncStatus()
			got, err := peers.Get(ctx, "tor-b", metav1.GetOptions{})
			if err != nil {
				return err
			}
			return expectCondition(got, ConditionValid, metav1.ConditionFalse, "spec.ebgpMultihop: Invalid value: 2: only applies to eBGP peers")
		})
		if s := w.Snapshot(); slices.Contains(peerNames(s.Peers), "tor-b") {
			t.Errorf("invalid tor-b still configured")
		}

		if err := peers.Delete(ctx, "tor-b", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := configs.Delete(ctx, ConfigurationName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "deletes in the snapshot", func() error {
			s := w.Snapshot()
			if _, ok := invalidPeer(s, "tor-b"); ok || slices.Contains(peerNames(s.Peers), "tor-b") {
				return fmt.Errorf("tor-b still there")
			}
			if s.ConfigurationObject != nil || s.Configuration.ASN != 65000 || len(s.Configuration.Communities) != 0 {
				return fmt.Errorf("configuration %+v, want the defaults back", s.Configuration)
			}
			return nil
		})
	})

	t.Run("BFDDroppedNotThePeer", func(t *testing.T) {
		// The schema takes any spec.bfd; the agent refuses this one (a 5ms interval, and
		// BFD on a multihop peer) and runs the session without BFD.
		spec := BGPPeerSpec{PeerAddress: "10.0.4.1", PeerASN: 65004, EBGPMultihop: ptr[int64](2),
			BFD: &BFDSpec{MinTx: "5ms", Multiplier: ptr[int64](3)}}
		if _, err := peers.Create(ctx, peerObject(t, "tor-bfd", spec), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = peers.Delete(ctx, "tor-bfd", metav1.DeleteOptions{}) }()
		peerOf := func(s Settings) (Peer, bool) {
			i := slices.IndexFunc(s.Peers, func(p Peer) bool { return p.Name == "tor-bfd" })
			if i < 0 {
				return Peer{}, false
			}
			return s.Peers[i], true
		}
		eventually(t, 10*time.Second, "tor-bfd configured without BFD", func() error {
			p, ok := peerOf(w.Snapshot())
			if !ok || p.BFD != nil || len(p.BFDErrors) != 2 {
				return fmt.Errorf("tor-bfd %+v (configured %v)", p, ok)
			}
			return nil
		})
		eventually(t, 10*time.Second, "tor-bfd Valid=False naming spec.bfd, Accepted=True", func() error {
			syncStatus()
			got, err := peers.Get(ctx, "tor-bfd", metav1.GetOptions{})
			if err != nil {
				return err
			}
			for _, want := range []string{`spec.bfd.minTx: Invalid value: "5ms": must be at least 100ms`, "spec.bfd: Forbidden: BFD is single-hop only (RFC 5881): not with spec.ebgpMultihop", "(the peer is configured without BFD)"} {
				if err := expectCondition(got, ConditionValid, metav1.ConditionFalse, want); err != nil {
					return err
				}
			}
			return expectCondition(got, ConditionAccepted, metav1.ConditionTrue, "")
		})

		// Fixed: BFD runs, with the default minRx.
		got, err := peers.Get(ctx, "tor-bfd", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		unstructured.RemoveNestedField(got.Object, "spec", "ebgpMultihop")
		_ = unstructured.SetNestedField(got.Object, "100ms", "spec", "bfd", "minTx")
		if _, err := peers.Update(ctx, got, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "tor-bfd with BFD, Valid=True", func() error {
			p, _ := peerOf(w.Snapshot())
			if want := (bgp.BFDConfig{MinTx: 100 * time.Millisecond, MinRx: DefaultBFDInterval, Multiplier: 3}); p.BFD == nil || *p.BFD != want {
				return fmt.Errorf("tor-bfd BFD %+v, want %+v", p.BFD, want)
			}
			syncStatus()
			got, err := peers.Get(ctx, "tor-bfd", metav1.GetOptions{})
			if err != nil {
				return err
			}
			return expectCondition(got, ConditionValid, metav1.ConditionTrue, "")
		})
	})

	t.Run("SecretNotReadable", func(t *testing.T) {
		// RBAC grants only the Secret tor-a: another one is reported, not fatal.
		if _, err := peers.Create(ctx, peerObject(t, "tor-x", BGPPeerSpec{PeerAddress: "10.0.9.1", PeerASN: 65009,
			PasswordSecretRef: &SecretKeyRef{Namespace: secretNamespace, Name: "other", Key: "password"}}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "tor-x invalid: forbidden", func() error {
			s := w.Snapshot()
			ip, ok := invalidPeer(s, "tor-x")
			if !ok || !strings.Contains(ip.Errors.ToAggregate().Error(), "spec.passwordSecretRef.name") || !strings.Contains(ip.Errors.ToAggregate().Error(), "forbidden") {
				return fmt.Errorf("tor-x: %+v (valid %v)", ip, peerNames(s.Peers))
			}
			if !slices.Contains(peerNames(s.Peers), "tor-a") {
				return fmt.Errorf("tor-a lost: %v", peerNames(s.Peers))
			}
			return nil
		})
		if err := peers.Delete(ctx, "tor-x", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})
}

func expectCondition(u *unstructured.Unstructured, typ string, status metav1.ConditionStatus, msg string) error {
	var st Status
	if m, ok := u.Object["status"].(map[string]any); ok {
		js, _ := json.Marshal(m)
		if err := json.Unmarshal(js, &st); err != nil {
			return err
		}
	}
	c := meta.FindStatusCondition(st.Conditions, typ)
	switch {
	case c == nil:
		return fmt.Errorf("%s: no %s condition in %+v", u.GetName(), typ, st)
	case c.Status != status || !strings.Contains(c.Message, msg):
		return fmt.Errorf("%s: %s=%s %q, want %s containing %q", u.GetName(), typ, c.Status, c.Message, status, msg)
	case c.ObservedGeneration != u.GetGeneration() || st.ObservedGeneration != u.GetGeneration():
		return fmt.Errorf("%s: observedGeneration %d/%d, generation %d", u.GetName(), c.ObservedGeneration, st.ObservedGeneration, u.GetGeneration())
	}
	return nil
}

func expectEvents(ctx context.Context, cs kubernetes.Interface, name, reason string, n int) error {
	l, err := cs.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	count := 0
	var seen []string
	for _, e := range l.Items {
		if e.InvolvedObject.Kind != KindBGPPeer || e.InvolvedObject.Name != name {
			continue
		}
		seen = append(seen, fmt.Sprintf("%s/%s x%d from %s: %s", e.Type, e.Reason, e.Count, e.Source.Host, e.Message))
		if e.Reason == reason {
			count += int(max(e.Count, 1))
		}
	}
	if count != n {
		return fmt.Errorf("%d %s events for %s, want %d: %q", count, reason, name, n, seen)
	}
	return nil
}

func resourceVersions(ctx context.Context, t *testing.T, ri dynamic.NamespaceableResourceInterface) map[string]string {
	l, err := ri.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, o := range l.Items {
		out[o.GetName()] = o.GetResourceVersion()
	}
	return out
}

func testDiscovery(ctx context.Context, t *testing.T, cs kubernetes.Interface, client dynamic.Interface) {
	rl, err := cs.Discovery().ServerResourcesForGroupVersion(APIVersion)
	if err != nil {
		t.Fatal(err)
	}
	short := map[string][]string{}
	for _, r := range rl.APIResources {
		if r.Namespaced {
			t.Errorf("%s is namespaced, want cluster-scoped", r.Name)
		}
		short[r.Name] = r.ShortNames
	}
	if !slices.Equal(short["bgppeers"], []string{"bgpp"}) || !slices.Equal(short["bgpconfigurations"], []string{"bgpconfig"}) {
		t.Errorf("short names %v", short)
	}
	for _, sub := range []string{"bgppeers/status", "bgpconfigurations/status"} {
		if _, ok := short[sub]; !ok {
			t.Errorf("no status subresource %s", sub)
		}
	}

	// kubectl get bgpp: the printer columns, as the API server renders them.
	if _, err := client.Resource(BGPPeerGVR).Create(ctx, peerObject(t, "printed", BGPPeerSpec{PeerAddress: "2001:db8::1", PeerASN: 65001}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Resource(BGPPeerGVR).Delete(ctx, "printed", metav1.DeleteOptions{}) }()
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/apis", Group, Version, "bgppeers").
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var table metav1.Table
	if err := json.Unmarshal(raw, &table); err != nil {
		t.Fatal(err)
	}
	var cols []string
	for _, c := range table.ColumnDefinitions {
		cols = append(cols, c.Name)
	}
	if want := []string{"Name", "Peer Address", "ASN", "Valid", "Age"}; !slices.Equal(cols, want) {
		t.Errorf("columns %v, want %v", cols, want)
	}
	if len(table.Rows) != 1 || fmt.Sprint(table.Rows[0].Cells[1]) != "2001:db8::1" || fmt.Sprint(table.Rows[0].Cells[2]) != "65001" {
		t.Errorf("rows %+v", table.Rows)
	}
}
