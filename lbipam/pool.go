package lbipam

import (
	"fmt"
	"math/big"
	"net/netip"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/podroute/podroute/config"
)

// KindPool is the kind of the pool resource, in podroute's group and version.
const KindPool = "LoadBalancerIPPool"

// PoolGVR addresses LoadBalancerIPPools.
var PoolGVR = schema.GroupVersionResource{Group: config.Group, Version: config.Version, Resource: "loadbalancerippools"}

// LoadBalancerIPPool is a cluster-scoped set of addresses for Services of type
// LoadBalancer.
type LoadBalancerIPPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   PoolSpec   `json:"spec"`
	Status PoolStatus `json:"status,omitempty"`
}

// PoolSpec mirrors the CRD's spec.
type PoolSpec struct {
	// Addresses are CIDRs ("203.0.113.0/28") or inclusive ranges
	// ("203.0.113.10-203.0.113.20"), IPv4 and IPv6 alike.
	Addresses []string `json:"addresses"`
	// ServiceSelector selects the Services the pool serves; nil selects every Service.
	ServiceSelector *metav1.LabelSelector `json:"serviceSelector,omitempty"`
	// LoadBalancerClass, when set, restricts the pool to Services of that
	// spec.loadBalancerClass.
	LoadBalancerClass string `json:"loadBalancerClass,omitempty"`
}

// PoolStatus is the pool's usage and podroute's verdict on its spec.
type PoolStatus struct {
	ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	IPv4               *FamilyUsage       `json:"ipv4,omitempty"`
	IPv6               *FamilyUsage       `json:"ipv6,omitempty"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
}

// FamilyUsage counts one family's addresses; Total saturates at the int64 maximum (an IPv6
// /64 holds more).
type FamilyUsage struct {
	Allocated int64 `json:"allocated"`
	Total     int64 `json:"total"`
}

// Range is an inclusive range of addresses of one family.
type Range struct{ First, Last netip.Addr }

// Contains reports whether a is in r.
func (r Range) Contains(a netip.Addr) bool {
	return a.Is4() == r.First.Is4() && r.First.Compare(a) <= 0 && a.Compare(r.Last) <= 0
}

// Size is the number of addresses in r.
func (r Range) Size() *big.Int {
	f, l := new(big.Int).SetBytes(r.First.AsSlice()), new(big.Int).SetBytes(r.Last.AsSlice())
	return l.Sub(l, f).Add(l, big.NewInt(1))
}

func (r Range) overlaps(o Range) bool {
	return r.First.Is4() == o.First.Is4() && r.First.Compare(o.Last) <= 0 && o.First.Compare(r.Last) <= 0
}

// Pool is a valid LoadBalancerIPPool in typed form.
type Pool struct {
	Name   string
	Ranges []Range
	// Selector selects the Services served; labels.Everything() when unset.
	Selector labels.Selector
	// Class is the only spec.loadBalancerClass served; "" serves every class the
	// controller handles.
	Class string
}

// Serves reports whether the pool may give addresses to r.
func (p Pool) Serves(r Request) bool {
	return (p.Class == "" || p.Class == r.Class) && p.Selector.Matches(labels.Set(r.Labels))
}

// Contains reports whether a is one of the pool's addresses.
func (p Pool) Contains(a netip.Addr) bool {
	for _, r := range p.Ranges {
		if r.Contains(a) {
			return true
		}
	}
	return false
}

// Parse validates the pool, naming the fields ("spec.addresses[1]: Invalid value: ...").
func (o *LoadBalancerIPPool) Parse() (Pool, field.ErrorList) {
	p := Pool{Name: o.Name, Selector: labels.Everything(), Class: o.Spec.LoadBalancerClass}
	var errs field.ErrorList
	path := field.NewPath("spec")
	ap := path.Child("addresses")
	if len(o.Spec.Addresses) == 0 {
		errs = append(errs, field.Required(ap, "at least one CIDR or range"))
	}
	var from []string // the entry of each range, for messages
	for i, s := range o.Spec.Addresses {
		r, err := ParseRange(s)
		if err != nil {
			errs = append(errs, field.Invalid(ap.Index(i), s, err.Error()))
			continue
		}
		for j, prev := range p.Ranges {
			if r.overlaps(prev) {
				errs = append(errs, field.Invalid(ap.Index(i), s, fmt.Sprintf("overlaps %s", from[j])))
			}
		}
		p.Ranges = append(p.Ranges, r)
		from = append(from, s)
	}
	if o.Spec.ServiceSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(o.Spec.ServiceSelector)
		if err != nil {
			errs = append(errs, field.Invalid(path.Child("serviceSelector"), o.Spec.ServiceSelector.String(), err.Error()))
		} else {
			p.Selector = sel
		}
	}
	return p, errs
}

// ParseRange parses a CIDR or an inclusive "first-last" range of one family.
func ParseRange(s string) (Range, error) {
	s = strings.TrimSpace(s)
	if lo, hi, ok := strings.Cut(s, "-"); ok {
		f, err1 := netip.ParseAddr(strings.TrimSpace(lo))
		l, err2 := netip.ParseAddr(strings.TrimSpace(hi))
		switch {
		case err1 != nil || err2 != nil || f.Zone() != "" || l.Zone() != "":
			return Range{}, fmt.Errorf("must be a CIDR or a range first-last of two IP addresses")
		case f.Is4In6() || l.Is4In6():
			return Range{}, fmt.Errorf("must not use IPv4-mapped IPv6 addresses; write the IPv4 addresses")
		case f.Is4() != l.Is4():
			return Range{}, fmt.Errorf("both ends of a range must be of the same family")
		case l.Less(f):
			return Range{}, fmt.Errorf("the first address must not be after the last")
		}
		return Range{First: f, Last: l}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return Range{}, fmt.Errorf("must be a CIDR or a range first-last of two IP addresses")
	}
	if p != p.Masked() {
		return Range{}, fmt.Errorf("has host bits set (did you mean %s?)", p.Masked())
	}
	if p.Addr().Is4In6() {
		return Range{}, fmt.Errorf("must not be an IPv4-mapped IPv6 prefix; write the IPv4 prefix")
	}
	return Range{First: p.Addr(), Last: lastAddr(p)}, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// PoolFromUnstructured decodes a pool read through the dynamic client.
func PoolFromUnstructured(u *unstructured.Unstructured) (*LoadBalancerIPPool, error) {
	var p LoadBalancerIPPool
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.UnstructuredContent(), &p); err != nil {
		return nil, fmt.Errorf("decode %s %s: %w", KindPool, u.GetName(), err)
	}
	return &p, nil
}

// ToUnstructured encodes a pool for the dynamic client, with apiVersion and kind set.
func (o *LoadBalancerIPPool) ToUnstructured() (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil {
		return nil, fmt.Errorf("encode %s %s: %w", KindPool, o.Name, err)
	}
	u := &unstructured.Unstructured{Object: m}
	unstructured.RemoveNestedField(m, "metadata", "creationTimestamp")
	if st, ok := m["status"].(map[string]any); ok && len(st) == 0 {
		delete(m, "status")
	}
	u.SetAPIVersion(config.APIVersion)
	u.SetKind(KindPool)
	return u, nil
}
