package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/podroute/podroute/bgp"
)

// Limits shared with the CRDs and with bgp.Neighbor.
const (
	maxASN          = 4294967295
	asTrans         = 23456 // RFC 6793: stands in for a 4-byte AS towards old speakers, never a real AS
	maxPasswordLen  = 80    // TCP_MD5SIG_MAXKEYLEN
	defaultHoldTime = 90 * time.Second
)

// Peer is a valid BGPPeer in typed form.
type Peer struct {
	// Name is the BGPPeer's name.
	Name    string
	Address netip.Addr
	ASN     uint32
	// Port is the peer's TCP port (179 unless set).
	Port uint16
	// NodeSelector selects the nodes that peer with it; labels.Everything() when unset.
	NodeSelector labels.Selector
	// PasswordSecret names the TCP MD5 password; Password is its value once resolved.
	PasswordSecret *SecretKeyRef
	Password       string
	// Zero durations mean bgp's defaults (hold time 90s, keepalive a third of it,
	// restart time 120s).
	HoldTime            time.Duration
	KeepaliveTime       time.Duration
	GracefulRestartTime time.Duration
	EBGPMultihopTTL     uint8
	TTLSecurityHops     uint8
	// RouteReflectorClient makes the peer our route-reflector client, with
	// RouteReflectorClusterID (BGPConfiguration's; zero means the router ID).
	RouteReflectorClient    bool
	RouteReflectorClusterID netip.Addr
	// ExportPodCIDRs is whether the nodes advertise their pod CIDRs to this peer: the
	// peer's own setting, else the cluster's.
	ExportPodCIDRs bool
	// BFD is the BFD session's timers; nil runs no BFD, also when spec.bfd is invalid.
	BFD *bgp.BFDConfig
	// BFDErrors are why spec.bfd was dropped. They do not make the peer invalid: the
	// session runs without BFD, and the Valid condition names them.
	BFDErrors field.ErrorList
	// Nodes are the names of the nodes it selects, sorted; set when the Watcher knows the
	// Nodes (Options.Nodes).
	Nodes []string
	// Object is where the peer came from, for status writes.
	Object ObjectState
}

// ObjectState is what the status writer needs to know about an object it read.
type ObjectState struct {
	Name            string
	UID             types.UID
	Generation      int64
	ResourceVersion string
	Status          Status
}

func objectState(m metav1.ObjectMeta, st Status) ObjectState {
	return ObjectState{Name: m.Name, UID: m.UID, Generation: m.Generation, ResourceVersion: m.ResourceVersion, Status: st}
}

// Configuration is the cluster-wide BGP configuration in typed form.
type Configuration struct {
	ASN            uint32
	NodeToNodeMesh bool
	// RouteReflectorNodeSelector selects the route-reflector nodes; labels.Nothing() when
	// unset (an empty selector selects every node).
	RouteReflectorNodeSelector labels.Selector
	// RouteReflectorClusterID is the reflectors' cluster ID; zero means each one's router ID.
	RouteReflectorClusterID netip.Addr
	// Communities are added to the pod CIDR advertisements.
	Communities []bgp.Community
	// ExportPodCIDRs is whether pod CIDRs are advertised to external peers.
	ExportPodCIDRs bool
	// ClusterCIDRs and ServiceCIDRs feed the import filter; empty means the agent's flags.
	ClusterCIDRs []netip.Prefix
	ServiceCIDRs []netip.Prefix
	// ServiceClusterIPs are advertised as a whole; ServiceExternalIPs and
	// ServiceLoadBalancerIPs are the allow-lists of per-Service addresses. Empty means none.
	ServiceClusterIPs      []netip.Prefix
	ServiceExternalIPs     []netip.Prefix
	ServiceLoadBalancerIPs []netip.Prefix
	// Advertisements are the path attributes per class. PodCIDRs.Communities always equals
	// Communities, whichever field set them.
	Advertisements Advertisements
	// MeshBFD is the BFD timers of the sessions between nodes; nil runs no BFD.
	MeshBFD *bgp.BFDConfig
}

// Class is a class of advertised prefix; each has its own communities and prepending.
type Class string

// The classes, named as the fields of spec.advertisements.
const (
	ClassPodCIDR        Class = "podCIDRs"
	ClassClusterIP      Class = "clusterIPs"
	ClassExternalIP     Class = "externalIPs"
	ClassLoadBalancerIP Class = "loadBalancerIPs"
)

// MaxASPathPrepend bounds spec.advertisements.*.asPathPrepend: more only lengthens paths
// past what any router's policy distinguishes.
const MaxASPathPrepend = 10

// Attributes are the path attributes attached to one class of prefixes.
type Attributes struct {
	Communities   []bgp.Community
	ASPathPrepend uint8
}

// Advertisements are the Attributes of each class.
type Advertisements struct {
	PodCIDRs, ClusterIPs, ExternalIPs, LoadBalancerIPs Attributes
}

// For returns the attributes of class c (zero for an unknown class).
func (a Advertisements) For(c Class) Attributes {
	switch c {
	case ClassPodCIDR:
		return a.PodCIDRs
	case ClassClusterIP:
		return a.ClusterIPs
	case ClassExternalIP:
		return a.ExternalIPs
	case ClassLoadBalancerIP:
		return a.LoadBalancerIPs
	}
	return Attributes{}
}

// DefaultConfiguration is the configuration without a BGPConfiguration and without flags.
func DefaultConfiguration() Configuration {
	return Configuration{
		ASN:                        DefaultASN,
		NodeToNodeMesh:             DefaultNodeToNodeMesh,
		RouteReflectorNodeSelector: labels.Nothing(),
		ExportPodCIDRs:             DefaultExportPodCIDRs,
	}
}

// IsRouteReflector reports whether node is one of the cluster's route reflectors.
func (c Configuration) IsRouteReflector(nodeLabels map[string]string) bool {
	return c.RouteReflectorNodeSelector != nil && c.RouteReflectorNodeSelector.Matches(labels.Set(nodeLabels))
}

// BGPPeerFromUnstructured decodes an object read through the dynamic client.
func BGPPeerFromUnstructured(u *unstructured.Unstructured) (*BGPPeer, error) {
	var p BGPPeer
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.UnstructuredContent(), &p); err != nil {
		return nil, fmt.Errorf("decode BGPPeer %s: %w", u.GetName(), err)
	}
	return &p, nil
}

// BGPConfigurationFromUnstructured decodes an object read through the dynamic client.
func BGPConfigurationFromUnstructured(u *unstructured.Unstructured) (*BGPConfiguration, error) {
	var c BGPConfiguration
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.UnstructuredContent(), &c); err != nil {
		return nil, fmt.Errorf("decode BGPConfiguration %s: %w", u.GetName(), err)
	}
	return &c, nil
}

// ToUnstructured encodes a BGPPeer or BGPConfiguration for the dynamic client, setting
// apiVersion and kind; an empty status and a zero creationTimestamp are left out.
func ToUnstructured(obj any) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", obj, err)
	}
	u := &unstructured.Unstructured{Object: m}
	// Drop what the API server owns, so the result can be created as is.
	if st, ok := m["status"].(map[string]any); ok && len(st) == 0 {
		delete(m, "status")
	}
	unstructured.RemoveNestedField(m, "metadata", "creationTimestamp")
	u.SetAPIVersion(APIVersion)
	switch obj.(type) {
	case *BGPPeer, BGPPeer:
		u.SetKind(KindBGPPeer)
	case *BGPConfiguration, BGPConfiguration:
		u.SetKind(KindBGPConfiguration)
	}
	return u, nil
}

// Validate checks the BGPPeer on its own (what the CRD schema checks and more), naming
// the fields: "spec.peerASN: Invalid value: 0: must be 1..4294967295". Checks that need
// the cluster configuration, Secrets or Nodes happen in Parse and in the Watcher. The
// errors of spec.bfd are included (Parse keeps them apart, in Peer.BFDErrors).
func (p *BGPPeer) Validate() field.ErrorList {
	peer, errs := p.Spec.parse(field.NewPath("spec"))
	return append(errs, peer.BFDErrors...)
}

// Parse validates the BGPPeer against the cluster configuration cfg and returns it in
// typed form. The password is not resolved (the Watcher does that). The errors returned
// make the peer invalid; those of spec.bfd only turn BFD off and are in Peer.BFDErrors.
func (p *BGPPeer) Parse(cfg Configuration) (Peer, field.ErrorList) {
	path := field.NewPath("spec")
	peer, errs := p.Spec.parse(path)
	peer.Name = p.Name
	peer.Object = objectState(p.ObjectMeta, p.Status)
	peer.RouteReflectorClusterID = cfg.RouteReflectorClusterID
	peer.ExportPodCIDRs = cfg.ExportPodCIDRs
	if p.Spec.ExportPodCIDRs != nil {
		peer.ExportPodCIDRs = *p.Spec.ExportPodCIDRs
	}
	ibgp := p.Spec.PeerASN == int64(cfg.ASN)
	if p.Spec.RouteReflectorClient && !ibgp {
		errs = append(errs, field.Invalid(path.Child("routeReflectorClient"), true,
			fmt.Sprintf("only iBGP peers can be route-reflector clients (peerASN %d, cluster asNumber %d)", p.Spec.PeerASN, cfg.ASN)))
	}
	if p.Spec.EBGPMultihop != nil && ibgp {
		errs = append(errs, field.Invalid(path.Child("ebgpMultihop"), *p.Spec.EBGPMultihop,
			fmt.Sprintf("only applies to eBGP peers (peerASN equals the cluster asNumber %d)", cfg.ASN)))
	}
	return peer, errs
}

func (s *BGPPeerSpec) parse(path *field.Path) (Peer, field.ErrorList) {
	var p Peer
	var errs field.ErrorList

	addrPath := path.Child("peerAddress")
	if s.PeerAddress == "" {
		errs = append(errs, field.Required(addrPath, "the peer's IPv4 or IPv6 address"))
	} else if a, err := netip.ParseAddr(s.PeerAddress); err != nil {
		errs = append(errs, field.Invalid(addrPath, s.PeerAddress, "must be an IPv4 or IPv6 address"))
	} else if reason := unicastProblem(a); reason != "" {
		errs = append(errs, field.Invalid(addrPath, s.PeerAddress, reason))
	} else {
		p.Address = a
	}

	if asn, err := parseASN(s.PeerASN); err != nil {
		errs = append(errs, field.Invalid(path.Child("peerASN"), s.PeerASN, err.Error()))
	} else {
		p.ASN = asn
	}

	p.NodeSelector = labels.Everything()
	if s.NodeSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(s.NodeSelector)
		if err != nil {
			errs = append(errs, field.Invalid(path.Child("nodeSelector"), s.NodeSelector.String(), err.Error()))
		} else {
			p.NodeSelector = sel
		}
	}

	if r := s.PasswordSecretRef; r != nil {
		rp := path.Child("passwordSecretRef")
		for _, f := range []struct{ name, value string }{{"namespace", r.Namespace}, {"name", r.Name}, {"key", r.Key}} {
			if f.value == "" {
				errs = append(errs, field.Required(rp.Child(f.name), ""))
			}
		}
		ref := *r
		p.PasswordSecret = &ref
	}

	var err error
	var hold time.Duration
	if hold, err = parseSeconds(s.HoldTime, 3*time.Second, 65535*time.Second); err != nil {
		errs = append(errs, field.Invalid(path.Child("holdTime"), s.HoldTime, err.Error()))
	}
	p.HoldTime = hold
	if p.KeepaliveTime, err = parseSeconds(s.KeepaliveTime, time.Second, 65535*time.Second); err != nil {
		errs = append(errs, field.Invalid(path.Child("keepaliveTime"), s.KeepaliveTime, err.Error()))
	} else if effHold := cmpOr(hold, defaultHoldTime); p.KeepaliveTime != 0 && p.KeepaliveTime >= effHold {
		errs = append(errs, field.Invalid(path.Child("keepaliveTime"), s.KeepaliveTime,
			fmt.Sprintf("must be shorter than the hold time %s", effHold)))
	}
	if p.GracefulRestartTime, err = parseSeconds(s.GracefulRestartTime, time.Second, 4095*time.Second); err != nil {
		errs = append(errs, field.Invalid(path.Child("gracefulRestartTime"), s.GracefulRestartTime, err.Error()))
	}

	if s.EBGPMultihop != nil {
		if v := *s.EBGPMultihop; v < 1 || v > 255 {
			errs = append(errs, field.Invalid(path.Child("ebgpMultihop"), v, "must be 1..255"))
		} else {
			p.EBGPMultihopTTL = uint8(v)
		}
	}
	if s.TTLSecurity != nil {
		if v := *s.TTLSecurity; v < 1 || v > 255 {
			errs = append(errs, field.Invalid(path.Child("ttlSecurity"), v, "must be 1..255"))
		} else {
			p.TTLSecurityHops = uint8(v)
		}
	}
	if s.EBGPMultihop != nil && s.TTLSecurity != nil {
		errs = append(errs, field.Forbidden(path.Child("ttlSecurity"), "ebgpMultihop and ttlSecurity are mutually exclusive"))
	}

	p.RouteReflectorClient = s.RouteReflectorClient
	p.Port = DefaultPort
	if s.Port != nil {
		if v := *s.Port; v < 1 || v > 65535 {
			errs = append(errs, field.Invalid(path.Child("port"), v, "must be 1..65535"))
		} else {
			p.Port = uint16(v)
		}
	}
	p.ExportPodCIDRs = DefaultExportPodCIDRs
	if s.ExportPodCIDRs != nil {
		p.ExportPodCIDRs = *s.ExportPodCIDRs
	}
	if s.BFD != nil {
		p.BFD, p.BFDErrors = parseBFD(path.Child("bfd"), s.BFD)
		// podroute's BFD is single hop (RFC 5881), for directly connected peers.
		bp := path.Child("bfd")
		if s.EBGPMultihop != nil {
			p.BFDErrors = append(p.BFDErrors, field.Forbidden(bp, "BFD is single-hop only (RFC 5881): not with spec.ebgpMultihop"))
		}
		if s.TTLSecurity != nil && *s.TTLSecurity > 1 {
			p.BFDErrors = append(p.BFDErrors, field.Forbidden(bp, "BFD is single-hop only (RFC 5881): not with spec.ttlSecurity above 1"))
		}
		if len(p.BFDErrors) > 0 {
			p.BFD = nil
		}
	}
	return p, errs
}

// parseBFD returns the BFD timers, or nil with the errors naming the fields under path.
// Absent fields take DefaultBFDInterval and DefaultBFDMultiplier.
func parseBFD(path *field.Path, s *BFDSpec) (*bgp.BFDConfig, field.ErrorList) {
	var errs field.ErrorList
	interval := func(name, v string) time.Duration {
		if v == "" {
			return DefaultBFDInterval
		}
		d, err := time.ParseDuration(v)
		switch {
		case err != nil:
			errs = append(errs, field.Invalid(path.Child(name), v, "must be a duration such as \"300ms\""))
		case d%time.Microsecond != 0:
			errs = append(errs, field.Invalid(path.Child(name), v, "must be a whole number of microseconds"))
		case d < MinBFDInterval:
			errs = append(errs, field.Invalid(path.Child(name), v,
				fmt.Sprintf("must be at least %s: BFD runs in the agent's process, and shorter intervals declare live peers down when the node is busy", MinBFDInterval)))
		case d > MaxBFDInterval:
			errs = append(errs, field.Invalid(path.Child(name), v, fmt.Sprintf("must be at most %s", MaxBFDInterval)))
		}
		return d
	}
	c := &bgp.BFDConfig{MinTx: interval("minTx", s.MinTx), MinRx: interval("minRx", s.MinRx), Multiplier: DefaultBFDMultiplier}
	if m := s.Multiplier; m != nil {
		if *m < 1 || *m > MaxBFDMultiplier {
			errs = append(errs, field.Invalid(path.Child("multiplier"), *m, fmt.Sprintf("must be 1..%d", MaxBFDMultiplier)))
		} else {
			c.Multiplier = uint32(*m)
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return c, nil
}

// Validate checks the BGPConfiguration on its own, naming the fields.
func (c *BGPConfiguration) Validate() field.ErrorList {
	_, errs := c.Parse(DefaultConfiguration())
	return errs
}

// Parse returns the configuration in typed form: defaults (the agent's flags, or
// DefaultConfiguration) overridden by each field the spec sets. An invalid field is
// reported and leaves its default in place, so one typo never takes the whole cluster
// configuration away.
func (c *BGPConfiguration) Parse(defaults Configuration) (Configuration, field.ErrorList) {
	cfg := defaults
	cfg.Communities = append([]bgp.Community(nil), defaults.Communities...)
	if defaults.MeshBFD != nil {
		bfd := *defaults.MeshBFD
		cfg.MeshBFD = &bfd
	}
	cfg.ClusterCIDRs = append([]netip.Prefix(nil), defaults.ClusterCIDRs...)
	cfg.ServiceCIDRs = append([]netip.Prefix(nil), defaults.ServiceCIDRs...)
	cfg.ServiceClusterIPs = append([]netip.Prefix(nil), defaults.ServiceClusterIPs...)
	cfg.ServiceExternalIPs = append([]netip.Prefix(nil), defaults.ServiceExternalIPs...)
	cfg.ServiceLoadBalancerIPs = append([]netip.Prefix(nil), defaults.ServiceLoadBalancerIPs...)
	if cfg.RouteReflectorNodeSelector == nil {
		cfg.RouteReflectorNodeSelector = labels.Nothing()
	}
	var errs field.ErrorList
	path := field.NewPath("spec")
	s := &c.Spec

	if c.Name != "" && c.Name != ConfigurationName {
		errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), c.Name,
			fmt.Sprintf("must be %q: BGPConfiguration is a singleton", ConfigurationName)))
	}
	if s.ASNumber != nil {
		if asn, err := parseASN(*s.ASNumber); err != nil {
			errs = append(errs, field.Invalid(path.Child("asNumber"), *s.ASNumber, err.Error()))
		} else {
			cfg.ASN = asn
		}
	}
	if s.NodeToNodeMesh != nil {
		cfg.NodeToNodeMesh = *s.NodeToNodeMesh
	}
	if s.RouteReflectorNodeSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(s.RouteReflectorNodeSelector)
		if err != nil {
			errs = append(errs, field.Invalid(path.Child("routeReflectorNodeSelector"), s.RouteReflectorNodeSelector.String(), err.Error()))
		} else {
			cfg.RouteReflectorNodeSelector = sel
		}
	}
	if s.RouteReflectorClusterID != "" {
		a, err := netip.ParseAddr(s.RouteReflectorClusterID)
		if err != nil || !a.Is4() || a.IsUnspecified() {
			errs = append(errs, field.Invalid(path.Child("routeReflectorClusterID"), s.RouteReflectorClusterID, "must be an IPv4 address other than 0.0.0.0"))
		} else {
			cfg.RouteReflectorClusterID = a
		}
	}
	if s.Communities != nil {
		if comms, ok := parseCommunities(path.Child("communities"), s.Communities, &errs); ok {
			cfg.Communities = comms
		}
	}
	if s.ExportPodCIDRs != nil {
		cfg.ExportPodCIDRs = *s.ExportPodCIDRs
	}
	if s.ClusterCIDRs != nil {
		if ps, ok := parsePrefixes(path.Child("clusterCIDRs"), s.ClusterCIDRs, &errs); ok {
			cfg.ClusterCIDRs = ps
		}
	}
	if s.ServiceCIDRs != nil {
		if ps, ok := parsePrefixes(path.Child("serviceCIDRs"), s.ServiceCIDRs, &errs); ok {
			cfg.ServiceCIDRs = ps
		}
	}
	for _, f := range []struct {
		name string
		in   []string
		out  *[]netip.Prefix
	}{
		{"serviceClusterIPs", s.ServiceClusterIPs, &cfg.ServiceClusterIPs},
		{"serviceExternalIPs", s.ServiceExternalIPs, &cfg.ServiceExternalIPs},
		{"serviceLoadBalancerIPs", s.ServiceLoadBalancerIPs, &cfg.ServiceLoadBalancerIPs},
	} {
		if f.in == nil {
			continue
		}
		// A bad entry drops the whole list to the default (nothing advertised) rather than
		// advertising a partial list the operator did not write.
		ps, ok := parsePrefixes(path.Child(f.name), f.in, &errs)
		// A Service route over pod addresses would draw those pods' traffic from the
		// rack to whichever nodes advertise it. (Only a list that parsed whole lines up
		// with the spec's indices.)
		whole := ok
		for i, p := range ps {
			if !whole {
				break
			}
			for _, c := range cfg.ClusterCIDRs {
				if p.Overlaps(c) {
					errs = append(errs, field.Invalid(path.Child(f.name).Index(i), f.in[i],
						fmt.Sprintf("overlaps the cluster's pod addresses %s (clusterCIDRs): a Service route there would take pods' traffic", c)))
					ok = false
				}
			}
		}
		if ok {
			*f.out = ps
		} else {
			*f.out = nil
		}
	}
	cfg.parseAdvertisements(path, s, &errs)
	if s.MeshBFD != nil {
		// Invalid timers leave the default in place (no BFD between nodes).
		if bfd, berrs := parseBFD(path.Child("meshBFD"), s.MeshBFD); len(berrs) > 0 {
			errs = append(errs, berrs...)
		} else {
			cfg.MeshBFD = bfd
		}
	}
	return cfg, errs
}

// parseAdvertisements fills cfg.Advertisements. spec.communities stays the pod CIDRs'
// communities (it predates spec.advertisements); setting both is ambiguous and refused.
func (cfg *Configuration) parseAdvertisements(path *field.Path, s *BGPConfigurationSpec, errs *field.ErrorList) {
	cfg.Advertisements.PodCIDRs.Communities = cfg.Communities
	a := s.Advertisements
	if a == nil {
		return
	}
	ap := path.Child("advertisements")
	for _, f := range []struct {
		class Class
		in    *AdvertisementSpec
		out   *Attributes
	}{
		{ClassPodCIDR, a.PodCIDRs, &cfg.Advertisements.PodCIDRs},
		{ClassClusterIP, a.ClusterIPs, &cfg.Advertisements.ClusterIPs},
		{ClassExternalIP, a.ExternalIPs, &cfg.Advertisements.ExternalIPs},
		{ClassLoadBalancerIP, a.LoadBalancerIPs, &cfg.Advertisements.LoadBalancerIPs},
	} {
		if f.in == nil {
			continue
		}
		fp := ap.Child(string(f.class))
		if f.in.Communities != nil {
			if f.class == ClassPodCIDR && s.Communities != nil {
				*errs = append(*errs, field.Forbidden(fp.Child("communities"),
					"spec.communities already sets the pod CIDRs' communities; set one of the two"))
			} else if comms, ok := parseCommunities(fp.Child("communities"), f.in.Communities, errs); ok {
				f.out.Communities = comms
				if f.class == ClassPodCIDR {
					cfg.Communities = comms
				}
			}
		}
		if v := f.in.ASPathPrepend; v != nil {
			if *v < 0 || *v > MaxASPathPrepend {
				*errs = append(*errs, field.Invalid(fp.Child("asPathPrepend"), *v, fmt.Sprintf("must be 0..%d", MaxASPathPrepend)))
			} else {
				f.out.ASPathPrepend = uint8(*v)
			}
		}
	}
}

func parseCommunities(path *field.Path, in []string, errs *field.ErrorList) ([]bgp.Community, bool) {
	comms := make([]bgp.Community, 0, len(in))
	ok := true
	for i, v := range in {
		cm, err := ParseCommunity(v)
		if err != nil {
			*errs = append(*errs, field.Invalid(path.Index(i), v, err.Error()))
			ok = false
			continue
		}
		comms = append(comms, cm)
	}
	return comms, ok
}

// ParseCommunity parses a standard community "asn:value" (each half 0..65535).
func ParseCommunity(s string) (bgp.Community, error) {
	hi, lo, ok := strings.Cut(s, ":")
	if !ok {
		return 0, fmt.Errorf("must be asn:value")
	}
	a, err1 := strconv.ParseUint(hi, 10, 16)
	v, err2 := strconv.ParseUint(lo, 10, 16)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("must be asn:value with both halves in 0..65535")
	}
	return bgp.NewCommunity(uint16(a), uint16(v)), nil
}

func parsePrefixes(path *field.Path, in []string, errs *field.ErrorList) ([]netip.Prefix, bool) {
	out := make([]netip.Prefix, 0, len(in))
	ok := true
	for i, s := range in {
		p, err := netip.ParsePrefix(s)
		switch {
		case err != nil:
			*errs = append(*errs, field.Invalid(path.Index(i), s, "must be a CIDR"))
			ok = false
		case p != p.Masked():
			*errs = append(*errs, field.Invalid(path.Index(i), s, fmt.Sprintf("has host bits set (did you mean %s?)", p.Masked())))
			ok = false
		default:
			out = append(out, p)
		}
	}
	return out, ok
}

func parseASN(v int64) (uint32, error) {
	if v < 1 || v > maxASN {
		return 0, fmt.Errorf("must be 1..%d", int64(maxASN))
	}
	if v == asTrans {
		return 0, fmt.Errorf("23456 (AS_TRANS) is reserved")
	}
	return uint32(v), nil
}

// parseSeconds parses an optional duration of whole seconds within lo..hi; "" is 0.
func parseSeconds(s string, lo, hi time.Duration) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("must be a duration such as \"9s\" or \"1m30s\"")
	}
	if d%time.Second != 0 {
		return 0, fmt.Errorf("must be a whole number of seconds")
	}
	if d < lo || d > hi {
		return 0, fmt.Errorf("must be between %s and %s", fmtSeconds(lo), fmtSeconds(hi))
	}
	return d, nil
}

func fmtSeconds(d time.Duration) string { return strconv.FormatInt(int64(d/time.Second), 10) + "s" }

// unicastProblem says why a is no usable peer address, or "".
func unicastProblem(a netip.Addr) string {
	switch {
	case a.Zone() != "":
		return "must not have a zone"
	case a.Is4In6():
		return "must not be an IPv4-mapped IPv6 address; write the IPv4 address"
	case a.IsUnspecified():
		return "must not be the unspecified address"
	case a.IsMulticast():
		return "must be a unicast address"
	case a.IsLinkLocalUnicast():
		return "link-local peers are not supported"
	}
	return ""
}

func cmpOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}
