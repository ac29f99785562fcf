package lab

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// EndpointSliceManager is the endpointslice.kubernetes.io/managed-by of the slices the lab
// writes.
const EndpointSliceManager = "lab.podroute.io"

// CreateServiceFor creates svc, which must have no selector, and, standing in for the
// controller manager the lab does not run, one EndpointSlice per address family listing the
// pods as ready endpoints on their nodes, for every port of svc with its target port
// (a number). The Service and its slices are deleted in t.Cleanup.
func (l *Lab) CreateServiceFor(t testing.TB, svc *corev1.Service, pods []*Pod) *corev1.Service {
	t.Helper()
	if svc.Namespace == "" {
		svc.Namespace = metav1.NamespaceDefault
	}
	if len(svc.Spec.Selector) != 0 {
		t.Fatalf("lab: Service %s has a selector: the lab writes its EndpointSlices itself", svc.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	services := l.Kube.Client.CoreV1().Services(svc.Namespace)
	created, err := services.Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("lab: create Service %s/%s: %v", svc.Namespace, svc.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := services.Delete(ctx, svc.Name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("lab: delete Service %s/%s: %v", svc.Namespace, svc.Name, err)
		}
	})

	var ports []discoveryv1.EndpointPort
	for _, sp := range created.Spec.Ports {
		if sp.TargetPort.IntValue() == 0 {
			t.Fatalf("lab: Service %s port %s: target port %q is not a number", svc.Name, sp.Name, sp.TargetPort.String())
		}
		ports = append(ports, discoveryv1.EndpointPort{
			Name: ptr(sp.Name), Protocol: ptr(sp.Protocol), Port: ptr(int32(sp.TargetPort.IntValue())),
		})
	}
	for _, fam := range created.Spec.IPFamilies {
		v6 := fam == corev1.IPv6Protocol
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Name:      fmt.Sprintf("%s-%s", svc.Name, map[bool]string{false: "ipv4", true: "ipv6"}[v6]),
				Namespace: svc.Namespace,
				Labels: map[string]string{
					discoveryv1.LabelServiceName: svc.Name,
					discoveryv1.LabelManagedBy:   EndpointSliceManager,
				},
			},
			AddressType: discoveryv1.AddressType(fam),
			Ports:       ports,
		}
		for _, p := range pods {
			a := p.Addr(v6)
			if !a.IsValid() {
				continue
			}
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{a.String()},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
				NodeName:   ptr(p.Node.Name),
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: svc.Namespace, Name: p.Name},
			})
		}
		// The slices go with the Service, as the controller's would (garbage collection is the
		// controller manager's too: delete them here).
		slices := l.Kube.Client.DiscoveryV1().EndpointSlices(svc.Namespace)
		if _, err := slices.Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			t.Fatalf("lab: create EndpointSlice %s: %v", slice.Name, err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := slices.Delete(ctx, slice.Name, metav1.DeleteOptions{}); err != nil {
				t.Errorf("lab: delete EndpointSlice %s: %v", slice.Name, err)
			}
		})
	}
	return created
}

// LoadBalancerIPs waits until the Service has LoadBalancer ingress addresses in
// status.loadBalancer.ingress and returns them.
func (l *Lab) LoadBalancerIPs(t testing.TB, namespace, name string, timeout time.Duration) []netip.Addr {
	t.Helper()
	var ips []netip.Addr
	Eventually(t, timeout, fmt.Sprintf("Service %s/%s: LoadBalancer address", namespace, name), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := l.Kube.Client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ips = nil
		for _, in := range s.Status.LoadBalancer.Ingress {
			a, err := netip.ParseAddr(in.IP)
			if err != nil {
				return fmt.Errorf("status.loadBalancer.ingress %+v: %w", in, err)
			}
			ips = append(ips, a)
		}
		if len(ips) == 0 {
			return fmt.Errorf("no status.loadBalancer.ingress yet (conditions %+v)", s.Status.Conditions)
		}
		return nil
	})
	return ips
}

func ptr[T any](v T) *T { return &v }
