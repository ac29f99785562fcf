package lbipam

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
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
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/podroute/podroute/test/kube"
)

var eventually = kube.Eventually

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

func installPoolCRD(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	data, err := os.ReadFile("../deploy/crds/podroute.io_loadbalancerippools.yaml")
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := json.Unmarshal(js, &u.Object); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CRD: %v", err)
	}
	eventually(t, 30*time.Second, "LoadBalancerIPPool served", func() error {
		_, err := dyn.Resource(PoolGVR).List(ctx, metav1.ListOptions{})
		return err
	})
}

func createPool(ctx context.Context, t *testing.T, dyn dynamic.Interface, name string, spec PoolSpec) error {
	t.Helper()
	u, err := (&LoadBalancerIPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}).ToUnstructured()
	if err != nil {
		t.Fatal(err)
	}
	_, err = dyn.Resource(PoolGVR).Create(ctx, u, metav1.CreateOptions{})
	return err
}

type harness struct {
	t   *testing.T
	ctx context.Context
	cs  kubernetes.Interface
	dyn dynamic.Interface
	// ctlCS and ctlDyn act as the controller's service account, bound to exactly
	// ClusterRoleRules and LeaseRoleRules.
	ctlCS  kubernetes.Interface
	ctlDyn dynamic.Interface
}

const controllerSA = "system:serviceaccount:podroute-system:podroute-lbipam"

// restrict binds the controller's identity to the rules the package documents and returns
// clients acting as it.
func (h *harness) restrict(admin *rest.Config) {
	h.t.Helper()
	rbac := h.cs.RbacV1()
	subj := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: controllerSA}}
	if _, err := rbac.ClusterRoles().Create(h.ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "podroute-lbipam"}, Rules: ClusterRoleRules}, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(h.ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "podroute-lbipam"}, Subjects: subj,
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "podroute-lbipam"}}, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	if _, err := rbac.Roles("default").Create(h.ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "podroute-lbipam"}, Rules: LeaseRoleRules}, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	if _, err := rbac.RoleBindings("default").Create(h.ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "podroute-lbipam"}, Subjects: subj,
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "podroute-lbipam"}}, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	cfg := rest.CopyConfig(admin)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: controllerSA, Groups: []string{"system:serviceaccounts", "system:authenticated"}}
	h.ctlCS = kubernetes.NewForConfigOrDie(cfg)
	h.ctlDyn = dynamic.NewForConfigOrDie(cfg)
	// Nothing beyond the rules: no Service spec writes.
	if _, err := h.ctlCS.CoreV1().Services("default").Create(h.ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "x"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 1}}}}, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		h.t.Fatalf("controller identity may create Services: %v", err)
	}
}

func (h *harness) start(name string, leaderElection bool) (*Controller, context.CancelFunc, <-chan error) {
	opts := Options{Identity: name, Logger: kube.TestLogger(h.t, slog.LevelInfo, name),
		Reserved: []Reserved{{Prefix: netip.MustParsePrefix("10.244.0.0/16"), What: "the cluster's pod addresses (--cluster-cidrs)"}}}
	if leaderElection {
		opts.LeaseNamespace = "default"
		opts.LeaseDuration, opts.RenewDeadline, opts.RetryPeriod = 4*time.Second, 3*time.Second, 200*time.Millisecond
	}
	c := NewController(h.ctlCS, h.ctlDyn, opts)
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return c, cancel, done
}

func stop(t *testing.T, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	cancel()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("controller did not stop")
	}
}

func (h *harness) service(name string, mutate ...func(*corev1.Service)) {
	h.t.Helper()
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeLoadBalancer,
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	if _, err := h.cs.CoreV1().Services("default").Create(h.ctx, s, metav1.CreateOptions{}); err != nil {
		h.t.Fatalf("create Service %s: %v", name, err)
	}
}

// status waits until the Service's allocation condition has the given reason and returns
// its addresses.
func (h *harness) status(name, reason string) []string {
	h.t.Helper()
	var ips []string
	eventually(h.t, 30*time.Second, "Service "+name+" "+reason, func() error {
		s, err := h.cs.CoreV1().Services("default").Get(h.ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := meta.FindStatusCondition(s.Status.Conditions, ConditionAllocated)
		if c == nil || c.Reason != reason {
			return fmt.Errorf("condition %+v, ingress %+v", c, s.Status.LoadBalancer.Ingress)
		}
		ips = nil
		for _, in := range s.Status.LoadBalancer.Ingress {
			ips = append(ips, in.IP)
		}
		return nil
	})
	return ips
}

func (h *harness) event(name, reason, msg string) {
	h.t.Helper()
	eventually(h.t, 30*time.Second, "Event "+reason+" on "+name, func() error {
		l, err := h.cs.CoreV1().Events("default").List(h.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name + ",reason=" + reason})
		if err != nil {
			return err
		}
		for _, e := range l.Items {
			if strings.Contains(e.Message, msg) {
				return nil
			}
		}
		return fmt.Errorf("events %v", l.Items)
	})
}

// allAssigned maps every address in any Service's status to the Services showing it.
func (h *harness) allAssigned() map[string][]string {
	h.t.Helper()
	l, err := h.cs.CoreV1().Services("").List(h.ctx, metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string][]string{}
	for _, s := range l.Items {
		for _, in := range s.Status.LoadBalancer.Ingress {
			out[in.IP] = append(out[in.IP], s.Namespace+"/"+s.Name)
		}
	}
	return out
}

func (h *harness) noDuplicates() {
	h.t.Helper()
	for ip, holders := range h.allAssigned() {
		if len(holders) > 1 {
			h.t.Errorf("%s handed to %v", ip, holders)
		}
	}
}

func TestController(t *testing.T) {
	c := kube.Start(t, kube.Options{ServiceCIDR: "10.96.0.0/16,fd00:10:96::/108"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h := &harness{t: t, ctx: ctx, cs: c.Client, dyn: dynamic.NewForConfigOrDie(c.RestConfig)}
	installPoolCRD(ctx, t, h.dyn)
	h.restrict(c.RestConfig)

	t.Run("Schema", func(t *testing.T) {
		for _, tc := range []struct {
			addr, want string
		}{
			{"nope", "must be a CIDR or a range"},
			{"203.0.113.1/28", "must not have host bits set"},
			{"203.0.113.1-203.0.113.x", "must be a CIDR or a range"},
		} {
			err := createPool(ctx, t, h.dyn, "bad", PoolSpec{Addresses: []string{tc.addr}})
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.addresses[0]") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want Invalid naming spec.addresses[0]: %s", tc.addr, err, tc.want)
			}
		}
		if err := createPool(ctx, t, h.dyn, "bad", PoolSpec{}); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.addresses") {
			t.Errorf("pool without addresses: %v", err)
		}
	})

	if err := createPool(ctx, t, h.dyn, "main", PoolSpec{Addresses: []string{"203.0.113.0/29", "2001:db8:1b::/125"}}); err != nil {
		t.Fatal(err)
	}
	// Overlaps main: refused by the controller with a condition naming main.
	if err := createPool(ctx, t, h.dyn, "overlap", PoolSpec{Addresses: []string{"203.0.113.4-203.0.113.9"}}); err != nil {
		t.Fatal(err)
	}
	// Over the pod addresses, and over a Node's address: refused, naming the entry and what
	// it would take over.
	if err := createPool(ctx, t, h.dyn, "in-pods", PoolSpec{Addresses: []string{"198.18.0.0/30", "10.244.3.0/28"}}); err != nil {
		t.Fatal(err)
	}
	if err := createPool(ctx, t, h.dyn, "on-node", PoolSpec{Addresses: []string{"198.51.100.8/29"}}); err != nil {
		t.Fatal(err)
	}
	node, err := h.cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker-9"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "198.51.100.10"}}
	if _, err := h.cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	c1, cancel1, done1 := h.start("c1", true)
	eventually(t, 30*time.Second, "c1 leads", func() error {
		if !c1.Leading() {
			return fmt.Errorf("not leading")
		}
		return nil
	})

	t.Run("Allocate", func(t *testing.T) {
		h.t = t
		h.service("web")
		if ips := h.status("web", ReasonAllocated); len(ips) != 1 || ips[0] != "203.0.113.0" {
			t.Errorf("web got %v", ips)
		}
		h.event("web", ReasonAllocated, "assigned 203.0.113.0")

		dual := corev1.IPFamilyPolicyRequireDualStack
		h.service("dual", func(s *corev1.Service) { s.Spec.IPFamilyPolicy = &dual })
		if ips := h.status("dual", ReasonAllocated); len(ips) != 2 || ips[0] != "203.0.113.1" || ips[1] != "2001:db8:1b::" {
			t.Errorf("dual got %v", ips)
		}

		h.service("want", func(s *corev1.Service) { s.Annotations = map[string]string{AnnotationIPs: "203.0.113.7"} })
		if ips := h.status("want", ReasonAllocated); len(ips) != 1 || ips[0] != "203.0.113.7" {
			t.Errorf("want got %v", ips)
		}

		// Other classes are left alone.
		other := "example.com/other"
		h.service("other-class", func(s *corev1.Service) { s.Spec.LoadBalancerClass = &other })
	})

	t.Run("Refusals", func(t *testing.T) {
		h.t = t
		h.service("outside", func(s *corev1.Service) { s.Annotations = map[string]string{AnnotationIPs: "198.51.100.1"} })
		h.status("outside", ReasonOutsidePools)
		h.event("outside", ReasonOutsidePools, "198.51.100.1 is in no LoadBalancerIPPool that serves this Service")

		h.service("taken", func(s *corev1.Service) { s.Spec.LoadBalancerIP = "203.0.113.0" })
		h.status("taken", ReasonAlreadyInUse)
		h.event("taken", ReasonAlreadyInUse, "203.0.113.0 is already used by Service default/web")

		h.service("typo", func(s *corev1.Service) { s.Annotations = map[string]string{AnnotationIPs: "203.0.113.300"} })
		h.status("typo", ReasonInvalidRequest)
		h.event("typo", ReasonInvalidRequest, "metadata.annotations[podroute.io/loadbalancer-ips]")

		// A Service holding addresses keeps them through a typo, and after it.
		annotate := func(v string) {
			s, err := h.cs.CoreV1().Services("default").Get(ctx, "dual", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			s.Annotations = map[string]string{AnnotationSharingKey: v}
			if _, err := h.cs.CoreV1().Services("default").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		annotate("not a key!")
		if ips := h.status("dual", ReasonInvalidRequest); len(ips) != 2 || ips[0] != "203.0.113.1" {
			t.Errorf("dual with a bad annotation shows %v", ips)
		}
		h.event("dual", ReasonInvalidRequest, "metadata.annotations[podroute.io/sharing-key]")
		annotate("dual")
		if ips := h.status("dual", ReasonAllocated); len(ips) != 2 || ips[0] != "203.0.113.1" || ips[1] != "2001:db8:1b::" {
			t.Errorf("dual after the fix got %v", ips)
		}
		h.noDuplicates()
	})

	t.Run("Sharing", func(t *testing.T) {
		h.t = t
		shared := func(name string, port int32) func(*corev1.Service) {
			return func(s *corev1.Service) {
				s.Annotations = map[string]string{AnnotationSharingKey: "dns", AnnotationIPs: "2001:db8:1b::7"}
				s.Spec.Ports = []corev1.ServicePort{{Name: "p", Port: port, Protocol: corev1.ProtocolUDP}}
				s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
				s.Spec.Selector = map[string]string{"app": "dns"}
			}
		}
		h.service("dns-udp", shared("dns-udp", 53))
		h.service("dns-alt", shared("dns-alt", 5353))
		h.service("dns-clash", shared("dns-clash", 53))
		for _, n := range []string{"dns-udp", "dns-alt"} {
			if ips := h.status(n, ReasonAllocated); len(ips) != 1 || ips[0] != "2001:db8:1b::7" {
				t.Errorf("%s got %v", n, ips)
			}
		}
		h.status("dns-clash", ReasonAlreadyInUse)
		h.event("dns-clash", ReasonAlreadyInUse, "(a port clashes)")
		for _, n := range []string{"dns-udp", "dns-alt", "dns-clash"} {
			if err := h.cs.CoreV1().Services("default").Delete(ctx, n, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("PoolStatus", func(t *testing.T) {
		h.t = t
		eventually(t, 30*time.Second, "pool usage", func() error {
			u, err := h.dyn.Resource(PoolGVR).Get(ctx, "main", metav1.GetOptions{})
			if err != nil {
				return err
			}
			p, err := PoolFromUnstructured(u)
			if err != nil {
				return err
			}
			v4, v6 := p.Status.IPv4, p.Status.IPv6
			if v4 == nil || v6 == nil || *v4 != (FamilyUsage{Allocated: 3, Total: 8}) || *v6 != (FamilyUsage{Allocated: 1, Total: 8}) ||
				!meta.IsStatusConditionTrue(p.Status.Conditions, ConditionValid) {
				return fmt.Errorf("status %+v %+v %+v", v4, v6, p.Status.Conditions)
			}
			return nil
		})
		for name, want := range map[string]string{
			"in-pods": `spec.addresses[1]: Invalid value: "10.244.3.0/28": overlaps the cluster's pod addresses (--cluster-cidrs) 10.244.0.0/16`,
			"on-node": `spec.addresses[0]: Invalid value: "198.51.100.8/29": overlaps Node worker-9's address 198.51.100.10/32`,
		} {
			eventually(t, 30*time.Second, name+" refused", func() error {
				u, err := h.dyn.Resource(PoolGVR).Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				p, _ := PoolFromUnstructured(u)
				cond := meta.FindStatusCondition(p.Status.Conditions, ConditionValid)
				if cond == nil || cond.Status != metav1.ConditionFalse || !strings.Contains(cond.Message, want) {
					return fmt.Errorf("conditions %+v, want False with %q", p.Status.Conditions, want)
				}
				return nil
			})
		}
		eventually(t, 30*time.Second, "overlapping pool refused", func() error {
			u, err := h.dyn.Resource(PoolGVR).Get(ctx, "overlap", metav1.GetOptions{})
			if err != nil {
				return err
			}
			p, _ := PoolFromUnstructured(u)
			cond := meta.FindStatusCondition(p.Status.Conditions, ConditionValid)
			if cond == nil || cond.Status != metav1.ConditionFalse || !strings.Contains(cond.Message, "overlaps LoadBalancerIPPool main") {
				return fmt.Errorf("conditions %+v", p.Status.Conditions)
			}
			return nil
		})
		if s, err := h.cs.CoreV1().Services("default").Get(ctx, "other-class", metav1.GetOptions{}); err != nil || len(s.Status.LoadBalancer.Ingress) != 0 || len(s.Status.Conditions) != 0 {
			t.Errorf("Service of another class touched: %+v %v", s.Status, err)
		}
	})

	t.Run("Release", func(t *testing.T) {
		h.t = t
		// Type change: the address goes back to the pool and the status is cleared.
		s, err := h.cs.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Spec.Type = corev1.ServiceTypeClusterIP
		s.Spec.ExternalTrafficPolicy = ""
		for i := range s.Spec.Ports {
			s.Spec.Ports[i].NodePort = 0
		}
		s.Spec.AllocateLoadBalancerNodePorts = nil
		if _, err := h.cs.CoreV1().Services("default").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "web's status cleared", func() error {
			s, err := h.cs.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(s.Status.LoadBalancer.Ingress) != 0 || meta.FindStatusCondition(s.Status.Conditions, ConditionAllocated) != nil {
				return fmt.Errorf("status %+v", s.Status)
			}
			return nil
		})
		// "taken" asked for web's old address: it gets it now.
		if ips := h.status("taken", ReasonAllocated); len(ips) != 1 || ips[0] != "203.0.113.0" {
			t.Errorf("taken got %v", ips)
		}
		// Deletion frees "want"'s address for the next Service asking for it.
		if err := h.cs.CoreV1().Services("default").Delete(ctx, "want", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		h.service("want2", func(s *corev1.Service) { s.Annotations = map[string]string{AnnotationIPs: "203.0.113.7"} })
		if ips := h.status("want2", ReasonAllocated); len(ips) != 1 || ips[0] != "203.0.113.7" {
			t.Errorf("want2 got %v", ips)
		}
		h.noDuplicates()
	})

	t.Run("RestartKeepsAssignments", func(t *testing.T) {
		h.t = t
		before := h.allAssigned()
		stop(t, cancel1, done1)
		c2, cancel2, done2 := h.start("c2", true)
		defer stop(t, cancel2, done2)
		eventually(t, 30*time.Second, "c2 leads", func() error {
			if !c2.Leading() {
				return fmt.Errorf("not leading")
			}
			return nil
		})
		h.service("after-restart")
		ips := h.status("after-restart", ReasonAllocated)
		if len(ips) != 1 || before[ips[0]] != nil {
			t.Errorf("after-restart got %v, assigned before %v", ips, before)
		}
		after := h.allAssigned()
		for ip, holders := range before {
			if strings.Join(after[ip], ",") != strings.Join(holders, ",") {
				t.Errorf("%s held by %v before the restart, %v after", ip, holders, after[ip])
			}
		}
	})

	t.Run("TwoControllersRacing", func(t *testing.T) {
		h.t = t
		sel := &metav1.LabelSelector{MatchLabels: map[string]string{"race": "true"}}
		if err := createPool(ctx, t, h.dyn, "race", PoolSpec{Addresses: []string{"10.200.0.0/27"}, ServiceSelector: sel}); err != nil {
			t.Fatal(err)
		}
		a, cancelA, doneA := h.start("race-a", true)
		b, cancelB, doneB := h.start("race-b", true)
		stopped := map[string]bool{}
		defer func() {
			if !stopped["a"] {
				stop(t, cancelA, doneA)
			}
			if !stopped["b"] {
				stop(t, cancelB, doneB)
			}
		}()
		create := func(from, to int) {
			var wg sync.WaitGroup
			for i := from; i < to; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s := &corev1.Service{
						ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("race-%02d", i), Labels: map[string]string{"race": "true"}},
						Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Port: 80}}},
					}
					if _, err := h.cs.CoreV1().Services("default").Create(ctx, s, metav1.CreateOptions{}); err != nil {
						t.Errorf("create %s: %v", s.Name, err)
					}
				}()
			}
			wg.Wait()
		}
		create(0, 20)
		// Fail over while Services are still being allocated: the leader steps down.
		eventually(t, 30*time.Second, "a leader among the racers", func() error {
			if !a.Leading() && !b.Leading() {
				return fmt.Errorf("neither leads")
			}
			return nil
		})
		if a.Leading() {
			stop(t, cancelA, doneA)
			stopped["a"] = true
		} else {
			stop(t, cancelB, doneB)
			stopped["b"] = true
		}
		create(20, 40)
		// The "race" pool has 32 addresses, "main" what is left of its 8: every Service is
		// settled, and no address is shown by two.
		var got, exhausted int
		eventually(t, 60*time.Second, "every racer settled", func() error {
			got, exhausted = 0, 0
			for i := range 40 {
				s, err := h.cs.CoreV1().Services("default").Get(ctx, fmt.Sprintf("race-%02d", i), metav1.GetOptions{})
				if err != nil {
					return err
				}
				cond := meta.FindStatusCondition(s.Status.Conditions, ConditionAllocated)
				switch {
				case cond == nil:
					return fmt.Errorf("%s not settled", s.Name)
				case cond.Reason == ReasonAllocated:
					got++
				case cond.Reason == ReasonPoolExhausted:
					exhausted++
				default:
					return fmt.Errorf("%s: %+v", s.Name, cond)
				}
			}
			return nil
		})
		h.noDuplicates()
		free := 32 + 8 - 4 // main holds dual's, taken's, want2's and after-restart's IPv4 addresses
		if got != min(40, free) || exhausted != 40-got {
			t.Errorf("%d allocated, %d exhausted; want %d and %d", got, exhausted, min(40, free), 40-min(40, free))
		}
	})
}
