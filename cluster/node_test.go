package cluster

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func node(name string, cidrs []string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.NodeSpec{PodCIDRs: cidrs},
		Status:     corev1.NodeStatus{Addresses: addrs},
	}
}

func internal(ip string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip}
}

func TestFromObjectDualStack(t *testing.T) {
	n := FromObject(node("a", []string{"fd00:1::/64", "10.244.1.0/24"}, internal("2001:db8::1"), internal("192.0.2.1"),
		corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "198.51.100.1"}))
	if n.Problem != "" {
		t.Fatalf("problem: %s", n.Problem)
	}
	if len(n.PodCIDRs) != 2 || n.Addresses[0] != netip.MustParseAddr("192.0.2.1") || len(n.Addresses) != 2 {
		t.Fatalf("got %+v: want both CIDRs and the InternalIPs only, IPv4 first", n)
	}
	if a, ok := n.Address(true); !ok || a.String() != "2001:db8::1" {
		t.Fatalf("IPv6 address %v %v", a, ok)
	}
}

func TestFromObjectProblems(t *testing.T) {
	cases := []struct {
		name string
		obj  *corev1.Node
		want string
	}{
		{"no cidr", node("a", nil, internal("192.0.2.1")), "spec.podCIDRs is empty"},
		{"bad cidr", node("a", []string{"10.0.0.0/33"}, internal("192.0.2.1")), `spec.podCIDRs[0] "10.0.0.0/33" is not a CIDR`},
		{"host bits", node("a", []string{"10.0.0.1/24"}, internal("192.0.2.1")), "host bits"},
		{"two v4", node("a", []string{"10.0.0.0/24", "10.0.1.0/24"}, internal("192.0.2.1")), "same family"},
		{"no address", node("a", []string{"10.0.0.0/24"}), "no InternalIP"},
		{"bad address", node("a", []string{"10.0.0.0/24"}, internal("nope")), `"nope" is not an IP`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := FromObject(tc.obj)
			if !strings.Contains(n.Problem, tc.want) {
				t.Fatalf("problem %q does not say %q", n.Problem, tc.want)
			}
		})
	}
	// The legacy single podCIDR field still counts.
	legacy := node("a", nil, internal("192.0.2.1"))
	legacy.Spec.PodCIDR = "10.9.0.0/24"
	if n := FromObject(legacy); n.Problem != "" || len(n.PodCIDRs) != 1 {
		t.Fatalf("legacy spec.podCIDR: %+v", n)
	}
}

func TestASNAnnotation(t *testing.T) {
	n := FromObject(node("a", []string{"10.0.0.0/24"}, internal("192.0.2.1")))
	if asn, err := n.ASN(64512); asn != 64512 || err != nil {
		t.Fatalf("default: %d %v", asn, err)
	}
	n.Annotations = map[string]string{AnnotationASN: "65001"}
	if asn, err := n.ASN(64512); asn != 65001 || err != nil {
		t.Fatalf("override: %d %v", asn, err)
	}
	for _, bad := range []string{"x", "0", "23456", "4294967296"} {
		n.Annotations[AnnotationASN] = bad
		asn, err := n.ASN(64512)
		if err == nil || asn != 64512 || !strings.Contains(err.Error(), AnnotationASN) {
			t.Errorf("%q: got %d %v; want the default and an error naming the annotation", bad, asn, err)
		}
	}
}
