package config

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	"github.com/podroute/podroute/cluster"
)

// Settings is podroute's configuration at one instant, as the Watcher read it.
type Settings struct {
	// Synced is true once every list (BGPPeers, the BGPConfiguration, each referenced
	// Secret) has completed or failed for good; before that the lists may be partial.
	Synced bool
	// PeersInstalled and ConfigurationInstalled say whether the CRDs are served. Without
	// them there are no peers and the configuration is the defaults.
	PeersInstalled         bool
	ConfigurationInstalled bool
	// Problems are reasons the view may be incomplete ("CRD ... not installed", API
	// errors), for logs and readiness.
	Problems []string

	// Configuration is the BGPConfiguration "default" in effect: the defaults (flags)
	// where it is absent, or a field is absent or invalid.
	Configuration Configuration
	// ConfigurationObject is the BGPConfiguration "default"; nil when there is none.
	ConfigurationObject *ObjectState
	// ConfigurationErrors are its invalid fields; each is ignored in favour of its default.
	ConfigurationErrors field.ErrorList

	// Peers are the valid BGPPeers with their passwords, sorted by name.
	Peers []Peer
	// InvalidPeers are the BGPPeers podroute rejects, sorted by name. A peer whose
	// password Secret has not been read yet is in neither list (and Synced is false).
	InvalidPeers []InvalidPeer
	// NodesChecked is true when Peers were checked against the Nodes (Options.Nodes):
	// addresses, duplicates, and Peer.Nodes.
	NodesChecked bool
}

// InvalidPeer is a BGPPeer podroute rejects, with the reasons.
type InvalidPeer struct {
	Name   string
	Object ObjectState
	Errors field.ErrorList
}

// PeersForNode returns the valid peers whose nodeSelector matches the node's labels.
func (s Settings) PeersForNode(node cluster.Node) []Peer {
	var out []Peer
	set := labels.Set(node.Labels)
	for _, p := range s.Peers {
		if p.NodeSelector.Matches(set) {
			out = append(out, p)
		}
	}
	return out
}

// IsRouteReflector reports whether node is a route reflector under the configuration.
func (s Settings) IsRouteReflector(node cluster.Node) bool {
	return s.Configuration.IsRouteReflector(node.Labels)
}

// Options configures a Watcher.
type Options struct {
	// Defaults is the configuration without a BGPConfiguration (e.g. from the agent's
	// flags); nil means DefaultConfiguration().
	Defaults *Configuration
	// Nodes, when set, lets Snapshot check peers against the Nodes: a peer address that is
	// a node's address is rejected, as is a second peer with the same address on a node.
	Nodes func() []cluster.Node
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Watcher keeps podroute's custom resources, and the Secrets they reference, current.
//
// It lists and watches bgppeers.podroute.io, bgpconfigurations.podroute.io (only
// metadata.name=default) and, per referenced Secret, that one Secret (fieldSelector
// metadata.name=NAME in its namespace), so RBAC can grant exactly those names. A missing
// CRD is reported, not fatal: the watcher keeps retrying and picks it up once installed.
type Watcher struct {
	client   dynamic.Interface
	defaults Configuration
	nodes    func() []cluster.Node
	log      *slog.Logger
	changed  chan struct{}

	peers   *resource
	configs *resource

	mu      sync.Mutex
	ctx     context.Context // Run's; nil before Run
	secrets map[secretKey]*resource
	logged  map[string]string // object -> last problem logged, to log each once
}

type secretKey struct{ namespace, name string }

// NewWatcher prepares the informers; Run starts them.
func NewWatcher(client dynamic.Interface, opts Options) *Watcher {
	w := &Watcher{
		client:   client,
		defaults: DefaultConfiguration(),
		nodes:    opts.Nodes,
		log:      opts.Logger,
		changed:  make(chan struct{}, 1),
		secrets:  map[secretKey]*resource{},
		logged:   map[string]string{},
	}
	if opts.Defaults != nil {
		w.defaults = *opts.Defaults
		// Flags set Communities only; the pod CIDR class carries the same ones.
		if w.defaults.Advertisements.PodCIDRs.Communities == nil {
			w.defaults.Advertisements.PodCIDRs.Communities = w.defaults.Communities
		}
	}
	if w.defaults.RouteReflectorNodeSelector == nil {
		w.defaults.RouteReflectorNodeSelector = labels.Nothing()
	}
	if w.log == nil {
		w.log = slog.Default()
	}
	w.peers = newResource(client, BGPPeerGVR, "", "", "bgppeers.podroute.io", w.log, w.poke)
	w.configs = newResource(client, BGPConfigurationGVR, "", ConfigurationName, "bgpconfigurations.podroute.io", w.log, w.poke)
	w.peers.onChange = func() { w.syncSecrets(); w.poke() }
	return w
}

// Run runs the informers until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	w.mu.Lock()
	w.ctx = ctx
	w.mu.Unlock()
	go w.configs.run(ctx)
	go w.peers.run(ctx)
	w.syncSecrets()
	<-ctx.Done()
	w.mu.Lock()
	w.secrets = map[secretKey]*resource{}
	w.mu.Unlock()
}

// Changed receives a value (coalesced) whenever a BGPPeer's or the BGPConfiguration's
// spec, a referenced Secret, or whether the CRDs are installed changed; read Snapshot then.
// Status-only changes do not signal.
func (w *Watcher) Changed() <-chan struct{} { return w.changed }

// Synced reports whether every list has completed (see Settings.Synced).
func (w *Watcher) Synced() bool {
	if !w.peers.decided() || !w.configs.decided() {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.secrets {
		if !r.decided() {
			return false
		}
	}
	return true
}

// WaitForSync waits until Synced or ctx ends, and reports Synced.
func (w *Watcher) WaitForSync(ctx context.Context) bool {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !w.Synced() {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// Snapshot reads the current settings. It never fails: what is wrong with an object is in
// its errors, what is wrong with the API in Problems.
func (w *Watcher) Snapshot() Settings {
	s := Settings{Configuration: w.defaults, Synced: w.Synced()}

	// The configuration first: peers are checked against it.
	cst := w.configs.state()
	s.ConfigurationInstalled = !cst.missing
	if p := cst.problem("BGPConfiguration", "using the defaults and the agent's flags"); p != "" {
		s.Problems = append(s.Problems, p)
	}
	if !cst.missing {
		if obj, ok := w.configs.get(ConfigurationName); ok {
			c, err := BGPConfigurationFromUnstructured(obj)
			if err != nil {
				st := ObjectState{Name: obj.GetName(), UID: obj.GetUID(), Generation: obj.GetGeneration(), ResourceVersion: obj.GetResourceVersion()}
				s.ConfigurationObject = &st
				s.ConfigurationErrors = field.ErrorList{field.Invalid(field.NewPath("spec"), "", err.Error())}
			} else {
				st := objectState(c.ObjectMeta, c.Status)
				s.ConfigurationObject = &st
				s.Configuration, s.ConfigurationErrors = c.Parse(w.defaults)
			}
		}
	}

	pst := w.peers.state()
	s.PeersInstalled = !pst.missing
	if p := pst.problem("BGPPeer", "no external peers"); p != "" {
		s.Problems = append(s.Problems, p)
	}
	if !pst.missing {
		for _, obj := range w.peers.list() {
			bp, err := BGPPeerFromUnstructured(obj)
			if err != nil {
				s.InvalidPeers = append(s.InvalidPeers, InvalidPeer{
					Name:   obj.GetName(),
					Object: ObjectState{Name: obj.GetName(), UID: obj.GetUID(), Generation: obj.GetGeneration(), ResourceVersion: obj.GetResourceVersion()},
					Errors: field.ErrorList{field.Invalid(field.NewPath("spec"), "", err.Error())},
				})
				continue
			}
			peer, errs := bp.Parse(s.Configuration)
			if peer.PasswordSecret != nil && len(errs) == 0 {
				pw, ferr, pending := w.password(*peer.PasswordSecret)
				switch {
				case pending:
					s.Synced = false
					continue
				case ferr != nil:
					errs = append(errs, ferr)
				default:
					peer.Password = pw
				}
			}
			if len(errs) > 0 {
				s.InvalidPeers = append(s.InvalidPeers, InvalidPeer{Name: peer.Name, Object: peer.Object, Errors: errs})
				continue
			}
			s.Peers = append(s.Peers, peer)
		}
	}
	sort.Slice(s.Peers, func(i, j int) bool { return s.Peers[i].Name < s.Peers[j].Name })
	if w.nodes != nil {
		checkNodes(&s, w.nodes())
	}
	sort.Slice(s.InvalidPeers, func(i, j int) bool { return s.InvalidPeers[i].Name < s.InvalidPeers[j].Name })
	w.logProblems(s)
	return s
}

// checkNodes rejects peers that are nodes, and a second peer of the same address on a
// node (by name order), and records which nodes each remaining peer selects.
func checkNodes(s *Settings, nodes []cluster.Node) {
	s.NodesChecked = true
	nodes = slices.Clone(nodes) // the caller's slice stays as it was
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	nodeOf := map[netip.Addr]string{}
	for _, n := range nodes {
		for _, a := range n.Addresses {
			if _, dup := nodeOf[a]; !dup {
				nodeOf[a] = n.Name
			}
		}
	}
	addrPath := field.NewPath("spec", "peerAddress")
	reject := map[string]*field.Error{}
	for _, p := range s.Peers {
		if n, ok := nodeOf[p.Address]; ok {
			reject[p.Name] = field.Invalid(addrPath, p.Address.String(),
				fmt.Sprintf("is the address of node %s: nodes peer with each other through the mesh or route reflectors, not BGPPeers", n))
		}
	}
	for _, n := range nodes {
		set := labels.Set(n.Labels)
		owner := map[netip.Addr]string{}
		for _, p := range s.Peers { // sorted by name: the first one keeps the address
			if reject[p.Name] != nil || !p.NodeSelector.Matches(set) {
				continue
			}
			if first, dup := owner[p.Address]; dup {
				reject[p.Name] = field.Invalid(addrPath, p.Address.String(),
					fmt.Sprintf("BGPPeer %s already peers with this address from node %s", first, n.Name))
				continue
			}
			owner[p.Address] = p.Name
		}
	}
	kept := s.Peers[:0]
	for _, p := range s.Peers {
		if e := reject[p.Name]; e != nil {
			s.InvalidPeers = append(s.InvalidPeers, InvalidPeer{Name: p.Name, Object: p.Object, Errors: field.ErrorList{e}})
			continue
		}
		p.Nodes = nil
		for _, n := range nodes {
			if p.NodeSelector.Matches(labels.Set(n.Labels)) {
				p.Nodes = append(p.Nodes, n.Name)
			}
		}
		kept = append(kept, p)
	}
	s.Peers = kept
}

// logProblems logs each invalid object once per distinct problem, and its recovery.
func (w *Watcher) logProblems(s Settings) {
	current := map[string]string{}
	if s.ConfigurationObject != nil && len(s.ConfigurationErrors) > 0 {
		current["BGPConfiguration/"+s.ConfigurationObject.Name] = s.ConfigurationErrors.ToAggregate().Error()
	}
	for _, p := range s.InvalidPeers {
		current["BGPPeer/"+p.Name] = p.Errors.ToAggregate().Error()
	}
	for _, p := range s.Problems {
		current["api/"+p] = p
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, msg := range current {
		if w.logged[k] == msg {
			continue
		}
		kind, name, _ := strings.Cut(k, "/")
		switch kind {
		case "api":
			w.log.Warn("podroute configuration incomplete", "problem", msg)
		case KindBGPConfiguration:
			w.log.Error("invalid BGPConfiguration: the defaults apply to the invalid fields", "name", name, "errors", msg)
		default:
			w.log.Error("invalid BGPPeer ignored", "name", name, "errors", msg)
		}
		w.logged[k] = msg
	}
	for k := range w.logged {
		if _, still := current[k]; !still {
			if kind, name, _ := strings.Cut(k, "/"); kind != "api" {
				w.log.Info("podroute object valid again or gone", "kind", kind, "name", name)
			}
			delete(w.logged, k)
		}
	}
}

// password resolves a Secret reference: the value, or a field error, or pending while the
// Secret has not been read yet.
func (w *Watcher) password(ref SecretKeyRef) (string, *field.Error, bool) {
	path := field.NewPath("spec", "passwordSecretRef")
	w.mu.Lock()
	r := w.secrets[secretKey{ref.Namespace, ref.Name}]
	w.mu.Unlock()
	if r == nil {
		return "", nil, true // syncSecrets has not caught up with this peer yet
	}
	st := r.state()
	if obj, ok := r.get(ref.Namespace + "/" + ref.Name); ok {
		data, _, _ := unstructured.NestedStringMap(obj.Object, "data")
		enc, ok := data[ref.Key]
		if !ok {
			return "", field.Invalid(path.Child("key"), ref.Key, fmt.Sprintf("Secret %s/%s has no such key", ref.Namespace, ref.Name)), false
		}
		pw, err := base64.StdEncoding.DecodeString(enc)
		switch {
		case err != nil:
			return "", field.Invalid(path.Child("key"), ref.Key, fmt.Sprintf("Secret %s/%s: value is not base64", ref.Namespace, ref.Name)), false
		case len(pw) == 0:
			return "", field.Invalid(path.Child("key"), ref.Key, fmt.Sprintf("Secret %s/%s: the password is empty", ref.Namespace, ref.Name)), false
		case len(pw) > maxPasswordLen:
			return "", field.Invalid(path.Child("key"), ref.Key, fmt.Sprintf("Secret %s/%s: the password is longer than %d bytes (TCP MD5 limit)", ref.Namespace, ref.Name, maxPasswordLen)), false
		}
		return string(pw), nil, false
	}
	if st.err != nil && !r.informer.HasSynced() {
		return "", field.Invalid(path.Child("name"), ref.Name, fmt.Sprintf("cannot read Secret %s/%s: %v", ref.Namespace, ref.Name, st.err)), false
	}
	if !r.informer.HasSynced() {
		return "", nil, true
	}
	return "", field.Invalid(path.Child("name"), ref.Name, fmt.Sprintf("Secret %s/%s not found", ref.Namespace, ref.Name)), false
}

// syncSecrets starts an informer for each Secret the peers reference and stops the others.
func (w *Watcher) syncSecrets() {
	want := map[secretKey]bool{}
	if !w.peers.state().missing {
		for _, obj := range w.peers.list() {
			ns, _, _ := unstructured.NestedString(obj.Object, "spec", "passwordSecretRef", "namespace")
			name, _, _ := unstructured.NestedString(obj.Object, "spec", "passwordSecretRef", "name")
			if ns != "" && name != "" {
				want[secretKey{ns, name}] = true
			}
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ctx == nil {
		return // Run starts them
	}
	for k, r := range w.secrets {
		if !want[k] {
			r.cancel()
			delete(w.secrets, k)
		}
	}
	for k := range want {
		if _, ok := w.secrets[k]; ok {
			continue
		}
		r := newResource(w.client, SecretGVR, k.namespace, k.name, "Secret "+k.namespace+"/"+k.name, w.log, w.poke)
		ctx, cancel := context.WithCancel(w.ctx)
		r.cancel = cancel
		w.secrets[k] = r
		go r.run(ctx)
	}
}

func (w *Watcher) poke() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// resource is one informer over the dynamic client, with what its lists and watches
// last reported, so the watcher can tell "not installed" and "not allowed" from "empty".
type resource struct {
	desc     string
	informer cache.SharedIndexInformer
	log      *slog.Logger
	onChange func()
	cancel   context.CancelFunc

	mu      sync.Mutex
	missing bool  // the last list or watch said 404: the CRD is not installed
	err     error // the last list or watch error, nil after a success
}

type resourceState struct {
	missing bool
	err     error
}

func (st resourceState) problem(kind, consequence string) string {
	switch {
	case st.missing:
		return fmt.Sprintf("CRDs not installed: the %s resource is not served (%s)", kind, consequence)
	case st.err != nil:
		return fmt.Sprintf("cannot read %s objects: %v", kind, st.err)
	}
	return ""
}

func newResource(client dynamic.Interface, gvr schema.GroupVersionResource, namespace, name, desc string, log *slog.Logger, onChange func()) *resource {
	r := &resource{desc: desc, log: log, onChange: onChange}
	ri := client.Resource(gvr).Namespace(namespace)
	tweak := func(o *metav1.ListOptions) {
		if name != "" {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}
	}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			tweak(&o)
			l, err := ri.List(ctx, o)
			r.observe("list", err)
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			tweak(&o)
			i, err := ri.Watch(ctx, o)
			r.observe("watch", err)
			return i, err
		},
	}
	r.informer = cache.NewSharedIndexInformer(lw, &unstructured.Unstructured{}, 0, cache.Indexers{})
	_ = r.informer.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		// The reflector wraps the API's error ("failed to list ..."): report the API's own.
		var status apierrors.APIStatus
		if errors.As(err, &status) {
			if e, ok := status.(error); ok {
				err = e
			}
		}
		r.observe("watch", err)
	})
	_, _ = r.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { r.onChange() },
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*unstructured.Unstructured)
			c, ok2 := cur.(*unstructured.Unstructured)
			if ok1 && ok2 && sameSpec(o, c) {
				return // a status write: nothing podroute reads changed
			}
			r.onChange()
		},
		DeleteFunc: func(any) { r.onChange() },
	})
	return r
}

func (r *resource) run(ctx context.Context) {
	go func() {
		// An empty list adds nothing: signal the end of the first list explicitly.
		if cache.WaitForCacheSync(ctx.Done(), r.informer.HasSynced) {
			r.onChange()
		}
	}()
	r.informer.RunWithContext(ctx)
}

func (r *resource) observe(op string, err error) {
	if err != nil && (apierrors.IsResourceExpired(err) || apierrors.IsGone(err)) {
		return // a routine relist, not a problem
	}
	r.mu.Lock()
	missing := err != nil && apierrors.IsNotFound(err)
	wasMissing, hadErr := r.missing, r.err != nil
	if err == nil {
		r.missing, r.err = false, nil
	} else {
		r.missing, r.err = missing, err
	}
	r.mu.Unlock()

	switch {
	case missing && !wasMissing:
		r.log.Warn("podroute CRD not installed; falling back to defaults", "resource", r.desc)
		r.onChange()
	case err == nil && wasMissing:
		r.log.Info("podroute CRD installed", "resource", r.desc)
		r.onChange()
	case err != nil && !missing && !hadErr:
		r.log.Error("cannot read podroute configuration", "resource", r.desc, "op", op, "err", err)
		r.onChange()
	case err == nil && hadErr:
		r.log.Info("podroute configuration readable again", "resource", r.desc, "op", op)
		r.onChange()
	}
}

func (r *resource) state() resourceState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return resourceState{missing: r.missing, err: r.err}
}

// decided: the first list completed, or failed in a way that will not fix itself soon.
func (r *resource) decided() bool {
	st := r.state()
	return r.informer.HasSynced() || st.missing || st.err != nil
}

func (r *resource) get(key string) (*unstructured.Unstructured, bool) {
	o, ok, err := r.informer.GetStore().GetByKey(key)
	if err != nil || !ok {
		return nil, false
	}
	u, ok := o.(*unstructured.Unstructured)
	return u, ok
}

func (r *resource) list() []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range r.informer.GetStore().List() {
		if u, ok := o.(*unstructured.Unstructured); ok {
			out = append(out, u)
		}
	}
	slices.SortFunc(out, func(a, b *unstructured.Unstructured) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

// sameSpec reports whether nothing podroute reads changed: spec (tracked by generation
// for custom resources) and a Secret's data.
func sameSpec(a, b *unstructured.Unstructured) bool {
	if a.GetGeneration() != b.GetGeneration() {
		return false
	}
	if !equality.Semantic.DeepEqual(a.Object["spec"], b.Object["spec"]) {
		return false
	}
	return equality.Semantic.DeepEqual(a.Object["data"], b.Object["data"])
}
