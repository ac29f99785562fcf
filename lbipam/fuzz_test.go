package lbipam

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// FuzzParseRange: what a pool's spec.addresses may hold never panics, and what parses is a
// non-empty range of one family holding both its ends.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"203.0.113.0/28", "10.0.0.1-10.0.0.9", "2001:db8::/120", "::1-::2", "1.2.3.4/33", "a-b", "-", "10.0.0.9-10.0.0.1", "::ffff:1.2.3.4/128", "0.0.0.0/0", "::/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRange(s)
		if err != nil {
			return
		}
		if r.First.Is4() != r.Last.Is4() || r.Last.Less(r.First) || !r.Contains(r.First) || !r.Contains(r.Last) || r.Size().Sign() <= 0 {
			t.Fatalf("ParseRange(%q) = %+v", s, r)
		}
		p := Pool{Ranges: []Range{r}}
		a := NewAllocator()
		if u := a.Usage(p, r.First.Is6()); u.Total <= 0 || u.Allocated != 0 {
			t.Fatalf("usage of %q: %+v", s, u)
		}
	})
}

// FuzzRequestFor: a Service's annotations and spec.loadBalancerIP never panic, and what is
// accepted asks for at most one address per family.
func FuzzRequestFor(f *testing.F) {
	f.Add("203.0.113.1,2001:db8::1", "", "key")
	f.Add("", "203.0.113.1", "")
	f.Add("1.2.3.4,1.2.3.5", "", "a b")
	f.Fuzz(func(t *testing.T, ips, lbIP, key string) {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s", Annotations: map[string]string{}}}
		s.Spec.LoadBalancerIP = lbIP
		if ips != "" {
			s.Annotations[AnnotationIPs] = ips
		}
		if key != "" {
			s.Annotations[AnnotationSharingKey] = key
		}
		r, err := RequestFor(s)
		if err != nil {
			if reason(err) != ReasonInvalidRequest {
				t.Fatalf("reason %q", reason(err))
			}
			return
		}
		v4, v6 := 0, 0
		for _, a := range r.Requested {
			if a.Is6() {
				v6++
			} else {
				v4++
			}
		}
		if v4 > 1 || v6 > 1 {
			t.Fatalf("RequestFor accepted %v", r.Requested)
		}
	})
}
