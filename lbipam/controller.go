package lbipam

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"

	"github.com/podroute/podroute/cluster"
)

// DefaultLoadBalancerClass is the spec.loadBalancerClass the controller serves besides
// Services without one.
const DefaultLoadBalancerClass = "podroute.io/lbipam"

// ConditionAllocated is the Service condition the controller writes: True with the
// addresses, or False with the reason (PoolExhausted, RequestedIPOutsidePools,
// IPAlreadyInUse, NoMatchingPool, InvalidRequest). Its presence also marks the Services
// whose status.loadBalancer the controller owns.
const ConditionAllocated = "podroute.io/LoadBalancerIPAllocated"

// ConditionValid is the pool condition: False names the fields podroute rejects.
const ConditionValid = "Valid"

// Reasons of pool conditions and Events.
const (
	ReasonValid       = "Valid"
	ReasonInvalidSpec = "InvalidSpec"
	ReasonReleased    = "IPReleased"
)

// DefaultLeaseName is the Lease the controllers elect a leader with.
const DefaultLeaseName = "podroute-lbipam"

// Reserved is a range no pool may overlap, and what it is (for the condition).
type Reserved struct {
	Prefix netip.Prefix
	// What names it in the refusal: "the cluster's pod addresses (--cluster-cidrs)".
	What string
}

// Options configure a Controller.
type Options struct {
	// Reserved are the cluster's own ranges (pod CIDRs, the Service CIDR): a pool
	// overlapping one is refused, as is a pool holding a Node's address, which the
	// controller learns from the Nodes: a LoadBalancer address there would take that
	// node's or those pods' traffic at the rack.
	Reserved []Reserved
	// LoadBalancerClass is the class served besides Services without one (default
	// DefaultLoadBalancerClass).
	LoadBalancerClass string
	// LeaseNamespace turns on leader election with the Lease LeaseName there; empty
	// means this controller acts alone (one replica only).
	LeaseNamespace string
	LeaseName      string
	// Identity names this replica in the Lease (default host name and a random suffix).
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's leader election timings
	// (default 15s, 10s, 2s).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Logger                                    *slog.Logger
}

// Controller gives Services of type LoadBalancer addresses from the LoadBalancerIPPools.
type Controller struct {
	client   kubernetes.Interface
	dyn      dynamic.Interface
	opts     Options
	log      *slog.Logger
	services cache.SharedIndexInformer
	pools    cache.SharedIndexInformer
	nodes    cache.SharedIndexInformer
	dfactory dynamicinformer.DynamicSharedInformerFactory
	changed  chan struct{}
	recorder record.EventRecorder
	events   record.EventBroadcaster

	leadMu  sync.Mutex // held by lead: one term at a time
	mu      sync.Mutex
	leading bool
}

// NewController prepares the informers; Run starts them.
func NewController(client kubernetes.Interface, dyn dynamic.Interface, opts Options) *Controller {
	if opts.LoadBalancerClass == "" {
		opts.LoadBalancerClass = DefaultLoadBalancerClass
	}
	if opts.LeaseName == "" {
		opts.LeaseName = DefaultLeaseName
	}
	if opts.Identity == "" {
		host, _ := os.Hostname()
		opts.Identity = host + "_" + rand.String(8)
	}
	opts.LeaseDuration = cmp.Or(opts.LeaseDuration, 15*time.Second)
	opts.RenewDeadline = cmp.Or(opts.RenewDeadline, 10*time.Second)
	opts.RetryPeriod = cmp.Or(opts.RetryPeriod, 2*time.Second)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &Controller{client: client, dyn: dyn, opts: opts, log: opts.Logger.With("identity", opts.Identity), changed: make(chan struct{}, 1)}
	c.services = cluster.NewInformer(client.CoreV1().Services(metav1.NamespaceAll), &corev1.Service{}, nil)
	c.dfactory = dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	c.pools = c.dfactory.ForResource(PoolGVR).Informer()
	// Nodes only for their addresses: a cluster's Nodes are large, and nothing else of them
	// is read.
	c.nodes = cluster.NewInformer(client.CoreV1().Nodes(), &corev1.Node{}, nodeAddresses)
	for _, inf := range []cache.SharedIndexInformer{c.services, c.pools, c.nodes} {
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { c.poke() },
			UpdateFunc: func(any, any) { c.poke() },
			DeleteFunc: func(any) { c.poke() },
		})
	}
	c.events = record.NewBroadcaster()
	c.recorder = c.events.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "podroute-lbipam"})
	return c
}

// Leading reports whether this replica is the one allocating.
func (c *Controller) Leading() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leading
}

// Synced reports whether the Service and pool caches have their first full lists: the
// replica can then lead, or take over, at once.
func (c *Controller) Synced() bool {
	return c.services.HasSynced() && c.pools.HasSynced() && c.nodes.HasSynced()
}

func (c *Controller) setLeading(v bool) {
	c.mu.Lock()
	c.leading = v
	c.mu.Unlock()
}

// Run allocates until ctx ends: at once without leader election, else whenever this
// replica holds the Lease. It returns ctx's error, or why it could not start.
func (c *Controller) Run(ctx context.Context) error {
	c.events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.client.CoreV1().Events("")})
	defer c.events.Shutdown()
	c.dfactory.Start(ctx.Done())
	defer c.dfactory.Shutdown()
	infCtx, stopInformers := context.WithCancel(ctx)
	informersDone := make(chan struct{})
	go func() {
		cluster.RunInformers(infCtx, c.services, c.nodes)
		close(informersDone)
	}()
	defer func() {
		stopInformers()
		<-informersDone
	}()
	c.log.Info("waiting for Services, LoadBalancerIPPools and Nodes")
	if !cache.WaitForCacheSync(ctx.Done(), c.services.HasSynced, c.pools.HasSynced, c.nodes.HasSynced) {
		return fmt.Errorf("lbipam: caches not synced: %w", ctx.Err())
	}
	if c.opts.LeaseNamespace == "" {
		c.lead(ctx)
		return ctx.Err()
	}
	cfg := leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: c.opts.LeaseNamespace, Name: c.opts.LeaseName},
			Client:     c.client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: c.opts.Identity},
		},
		LeaseDuration:   c.opts.LeaseDuration,
		RenewDeadline:   c.opts.RenewDeadline,
		RetryPeriod:     c.opts.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            c.opts.LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: c.lead,
			OnStoppedLeading: func() { c.log.Info("not leading") },
			OnNewLeader: func(id string) {
				c.log.Info("leader", "lease", c.opts.LeaseNamespace+"/"+c.opts.LeaseName, "holder", id)
			},
		},
	}
	// Run returns when leadership is lost; contend again, with a fresh elector, until ctx
	// ends.
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(cfg)
		if err != nil {
			return fmt.Errorf("lbipam: leader election: %w", err)
		}
		le.Run(ctx)
	}
	return ctx.Err()
}

func (c *Controller) poke() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// lead allocates while ctx lasts. Its state starts from a fresh, consistent list of the
// Services' status (not the informer's cache, which may lag behind what a previous
// leader wrote last).
func (c *Controller) lead(ctx context.Context) {
	// The elector starts lead in a goroutine: a term that just ended may still be
	// returning when the next begins.
	c.leadMu.Lock()
	defer c.leadMu.Unlock()
	c.setLeading(true)
	defer c.setLeading(false)
	c.log.Info("allocating LoadBalancer IPs")
	var alloc *Allocator
	for alloc == nil {
		a, livePools, err := c.restore(ctx)
		if err != nil {
			c.log.Error("rebuild allocations from the Services' status", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		alloc = a
		c.waitForPools(ctx, livePools)
	}
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.changed:
		case <-retry.C:
		}
		if again := c.sync(ctx, alloc); again {
			retry.Reset(500 * time.Millisecond)
		}
	}
}

// waitForPools waits (up to 10s) until the pool cache shows each pool as the List at the
// start of the term did: a cache that lags would otherwise make sync move Services off a
// pool it has not seen yet. A pool changed since the List never matches; the wait then
// ends at the timeout and the cache, newer by then, is right.
func (c *Controller) waitForPools(ctx context.Context, live map[string]string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(context.Context) (bool, error) {
		for name, rv := range live {
			o, ok, _ := c.pools.GetStore().GetByKey(name)
			u, isU := o.(*unstructured.Unstructured)
			if !ok || !isU || u.GetResourceVersion() != rv {
				return false, nil
			}
		}
		return true, nil
	})
}

// restore rebuilds the allocations from a List of the pools and Services; it returns the
// pools' resourceVersions by name.
func (c *Controller) restore(ctx context.Context) (*Allocator, map[string]string, error) {
	a := NewAllocator()
	pl, err := c.dyn.Resource(PoolGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("list LoadBalancerIPPools: %w", err)
	}
	objs := make([]*unstructured.Unstructured, len(pl.Items))
	live := map[string]string{}
	for i := range pl.Items {
		objs[i] = &pl.Items[i]
		live[pl.Items[i].GetName()] = pl.Items[i].GetResourceVersion()
	}
	pools, _ := parsePools(objs, c.reserved())
	a.SetPools(pools)
	sl, err := c.client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("list Services: %w", err)
	}
	svcs := make([]*corev1.Service, len(sl.Items))
	for i := range sl.Items {
		svcs[i] = &sl.Items[i]
	}
	sortOldestFirst(svcs)
	n := 0
	for _, s := range svcs {
		if !c.handles(s) || !owned(s) {
			continue
		}
		// A request with a bad field still restores what the Service holds (sync reports
		// the field): its addresses must not go to another Service.
		r, _ := RequestFor(s)
		if err := a.Restore(r, ingressIPs(s)); err != nil {
			c.log.Warn("address of a Service not restored; it gets another", "service", r.Key, "err", err)
		}
		n += len(a.Assigned(r.Key))
	}
	c.log.Info("allocations restored", "addresses", n, "pools", len(pools))
	return a, live, nil
}

// handles reports whether s is a LoadBalancer Service of a class this controller serves.
func (c *Controller) handles(s *corev1.Service) bool {
	return s.Spec.Type == corev1.ServiceTypeLoadBalancer &&
		(s.Spec.LoadBalancerClass == nil || *s.Spec.LoadBalancerClass == c.opts.LoadBalancerClass)
}

// owned reports whether the controller wrote s's status.loadBalancer.
func owned(s *corev1.Service) bool {
	return meta.FindStatusCondition(s.Status.Conditions, ConditionAllocated) != nil
}

func ingressIPs(s *corev1.Service) []netip.Addr {
	var out []netip.Addr
	for _, in := range s.Status.LoadBalancer.Ingress {
		if a, err := netip.ParseAddr(in.IP); err == nil {
			out = append(out, a)
		}
	}
	return out
}

func sortOldestFirst(svcs []*corev1.Service) {
	slices.SortFunc(svcs, func(a, b *corev1.Service) int {
		return cmp.Or(a.CreationTimestamp.Time.Compare(b.CreationTimestamp.Time),
			cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
}

// reserved is Options.Reserved and every Node's address.
func (c *Controller) reserved() []Reserved {
	out := slices.Clone(c.opts.Reserved)
	for _, o := range c.nodes.GetStore().List() {
		n, ok := o.(*corev1.Node)
		if !ok {
			continue
		}
		for _, na := range n.Status.Addresses {
			if a, err := netip.ParseAddr(na.Address); err == nil {
				a = a.Unmap()
				out = append(out, Reserved{Prefix: netip.PrefixFrom(a, a.BitLen()), What: fmt.Sprintf("Node %s's address", n.Name)})
			}
		}
	}
	return out
}

// nodeAddresses keeps a Node's name and addresses.
func nodeAddresses(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	t := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion}}
	for _, a := range n.Status.Addresses {
		t.Status.Addresses = append(t.Status.Addresses, corev1.NodeAddress{Type: a.Type, Address: a.Address})
	}
	return t, nil
}

// parsePools returns the valid pools and each pool's problems (nil when valid). Of two
// pools that overlap, the one whose name sorts later is refused; so is a pool overlapping a
// reserved range.
func parsePools(objs []*unstructured.Unstructured, reserved []Reserved) ([]Pool, map[string]string) {
	slices.SortFunc(objs, func(a, b *unstructured.Unstructured) int { return cmp.Compare(a.GetName(), b.GetName()) })
	var pools []Pool
	problems := map[string]string{}
	for _, u := range objs {
		o, err := PoolFromUnstructured(u)
		if err != nil {
			problems[u.GetName()] = err.Error()
			continue
		}
		p, errs := o.Parse()
		if len(errs) > 0 {
			problems[o.Name] = errs.ToAggregate().Error()
			continue
		}
		if bad := overlapsReserved(o, reserved); bad != "" {
			problems[o.Name] = bad
			continue
		}
		if other := overlapping(pools, p); other != "" {
			problems[o.Name] = fmt.Sprintf("spec.addresses: Invalid value: overlaps LoadBalancerIPPool %s", other)
			continue
		}
		pools = append(pools, p)
	}
	return pools, problems
}

// overlapsReserved names the first entry of spec.addresses overlapping a reserved range, and
// the range.
func overlapsReserved(o *LoadBalancerIPPool, reserved []Reserved) string {
	for i, s := range o.Spec.Addresses {
		r, err := ParseRange(s)
		if err != nil {
			continue // Parse accepted the pool, so every entry parses
		}
		for _, res := range reserved {
			if r.overlaps(Range{First: res.Prefix.Masked().Addr(), Last: lastAddr(res.Prefix)}) {
				return fmt.Sprintf("spec.addresses[%d]: Invalid value: %q: overlaps %s %s", i, s, res.What, res.Prefix)
			}
		}
	}
	return ""
}

func overlapping(pools []Pool, p Pool) string {
	for _, q := range pools {
		for _, r := range p.Ranges {
			if slices.ContainsFunc(q.Ranges, r.overlaps) {
				return q.Name
			}
		}
	}
	return ""
}

// sync brings every Service's and pool's status in line with the allocator; it reports
// whether something must be retried.
func (c *Controller) sync(ctx context.Context, alloc *Allocator) (again bool) {
	var poolObjs []*unstructured.Unstructured
	for _, o := range c.pools.GetStore().List() {
		if u, ok := o.(*unstructured.Unstructured); ok {
			poolObjs = append(poolObjs, u)
		}
	}
	pools, problems := parsePools(poolObjs, c.reserved())
	alloc.SetPools(pools)

	var svcs []*corev1.Service
	for _, o := range c.services.GetStore().List() {
		if s, ok := o.(*corev1.Service); ok {
			svcs = append(svcs, s)
		}
	}
	sortOldestFirst(svcs)
	present := map[string]bool{}
	for _, s := range svcs {
		if ctx.Err() != nil {
			return false // leadership lost or shutting down: the next leader starts over
		}
		key := s.Namespace + "/" + s.Name
		present[key] = true
		if !c.handles(s) {
			if held := alloc.Assigned(key); len(held) > 0 || owned(s) {
				alloc.Release(key)
				if err := c.clear(ctx, s, held); err != nil {
					again = true
				}
			}
			continue
		}
		if err := c.syncService(ctx, alloc, s); err != nil {
			again = true
		}
	}
	// A Service the cache does not show may be one it has not seen yet: release only
	// what the API server confirms is gone.
	for _, key := range alloc.Keys() {
		if present[key] {
			continue
		}
		ns, name, _ := strings.Cut(key, "/")
		_, err := c.client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			c.log.Info("released the addresses of a deleted Service", "service", key, "addresses", alloc.Assigned(key))
			alloc.Release(key)
		case err != nil:
			again = true
		}
	}
	for _, u := range poolObjs {
		if err := c.syncPool(ctx, alloc, pools, problems, u); err != nil {
			again = true
		}
	}
	return again
}

func (c *Controller) syncService(ctx context.Context, alloc *Allocator, s *corev1.Service) error {
	key := s.Namespace + "/" + s.Name
	r, err := RequestFor(s)
	var ips []netip.Addr
	if err == nil {
		ips, err = alloc.Assign(r)
	} else {
		// A typo in an annotation loses nothing: the Service keeps its addresses and the
		// condition names the field.
		ips = alloc.Assigned(key)
	}
	cond := metav1.Condition{Type: ConditionAllocated, ObservedGeneration: s.Generation}
	if err != nil {
		var e *Error
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, ReasonInvalidRequest, err.Error()
		if errors.As(err, &e) {
			cond.Reason = e.Reason
		}
	} else {
		strs := make([]string, len(ips))
		for i, ip := range ips {
			strs[i] = ip.String()
		}
		cond.Status, cond.Reason, cond.Message = metav1.ConditionTrue, ReasonAllocated, "assigned "+strings.Join(strs, ", ")
	}
	ingress := make([]corev1.LoadBalancerIngress, 0, len(ips))
	vip := corev1.LoadBalancerIPModeVIP
	for _, ip := range ips {
		ingress = append(ingress, corev1.LoadBalancerIngress{IP: ip.String(), IPMode: &vip})
	}
	prev := meta.FindStatusCondition(s.Status.Conditions, ConditionAllocated)
	if prev != nil && prev.Status == cond.Status && prev.Reason == cond.Reason && prev.Message == cond.Message &&
		prev.ObservedGeneration == cond.ObservedGeneration && sameIngress(s.Status.LoadBalancer.Ingress, ingress) {
		return nil
	}
	upd := s.DeepCopy()
	upd.Status.LoadBalancer.Ingress = ingress
	meta.SetStatusCondition(&upd.Status.Conditions, cond)
	if _, err := c.client.CoreV1().Services(s.Namespace).UpdateStatus(ctx, upd, metav1.UpdateOptions{}); err != nil {
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) && ctx.Err() == nil {
			c.log.Error("write Service status", "service", key, "err", err)
		}
		return fmt.Errorf("update status of Service %s: %w", key, err)
	}
	if prev == nil || prev.Reason != cond.Reason || prev.Message != cond.Message {
		if cond.Status == metav1.ConditionTrue {
			c.log.Info("LoadBalancer IPs assigned", "service", key, "addresses", ips)
			c.recorder.Event(s, corev1.EventTypeNormal, cond.Reason, cond.Message)
		} else {
			c.log.Warn("no LoadBalancer IP", "service", key, "reason", cond.Reason, "err", cond.Message)
			c.recorder.Event(s, corev1.EventTypeWarning, cond.Reason, cond.Message)
		}
	}
	return nil
}

// clear removes what the controller wrote on a Service it no longer serves.
func (c *Controller) clear(ctx context.Context, s *corev1.Service, held []netip.Addr) error {
	if !owned(s) {
		return nil
	}
	upd := s.DeepCopy()
	upd.Status.LoadBalancer.Ingress = nil
	meta.RemoveStatusCondition(&upd.Status.Conditions, ConditionAllocated)
	if _, err := c.client.CoreV1().Services(s.Namespace).UpdateStatus(ctx, upd, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("clear status of Service %s/%s: %w", s.Namespace, s.Name, err)
	}
	c.log.Info("released LoadBalancer IPs", "service", s.Namespace+"/"+s.Name, "addresses", held)
	c.recorder.Event(s, corev1.EventTypeNormal, ReasonReleased, fmt.Sprintf("released %v: no longer a LoadBalancer Service of class %s", held, c.opts.LoadBalancerClass))
	return nil
}

func sameIngress(a, b []corev1.LoadBalancerIngress) bool {
	if len(a) != len(b) {
		return false
	}
	mode := func(in corev1.LoadBalancerIngress) corev1.LoadBalancerIPMode {
		if in.IPMode == nil {
			return corev1.LoadBalancerIPModeVIP
		}
		return *in.IPMode
	}
	for i := range a {
		if a[i].IP != b[i].IP || a[i].Hostname != b[i].Hostname || len(a[i].Ports) != len(b[i].Ports) || mode(a[i]) != mode(b[i]) {
			return false
		}
	}
	return true
}

func (c *Controller) syncPool(ctx context.Context, alloc *Allocator, pools []Pool, problems map[string]string, u *unstructured.Unstructured) error {
	o, err := PoolFromUnstructured(u)
	if err != nil {
		return nil // reported through problems; nothing typed to write
	}
	st := PoolStatus{ObservedGeneration: o.Generation, Conditions: slices.Clone(o.Status.Conditions)}
	cond := metav1.Condition{Type: ConditionValid, Status: metav1.ConditionTrue, Reason: ReasonValid, Message: "the pool is in use", ObservedGeneration: o.Generation}
	if msg, bad := problems[o.Name]; bad {
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, ReasonInvalidSpec, msg
	}
	if i := slices.IndexFunc(pools, func(p Pool) bool { return p.Name == o.Name }); i >= 0 {
		for _, v6 := range []bool{false, true} {
			if !slices.ContainsFunc(pools[i].Ranges, func(r Range) bool { return r.First.Is6() == v6 }) {
				continue
			}
			u := alloc.Usage(pools[i], v6)
			if v6 {
				st.IPv6 = &u
			} else {
				st.IPv4 = &u
			}
		}
	}
	prev := meta.FindStatusCondition(o.Status.Conditions, ConditionValid)
	meta.SetStatusCondition(&st.Conditions, cond)
	if equality.Semantic.DeepEqual(st, o.Status) {
		return nil
	}
	o.Status = st
	nu, err := o.ToUnstructured()
	if err != nil {
		return err
	}
	if _, err := c.dyn.Resource(PoolGVR).UpdateStatus(ctx, nu, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of %s %s: %w", KindPool, o.Name, err)
	}
	if cond.Status == metav1.ConditionFalse && (prev == nil || prev.Message != cond.Message) {
		c.log.Error("invalid LoadBalancerIPPool", "pool", o.Name, "err", cond.Message)
		c.recorder.Event(u, corev1.EventTypeWarning, cond.Reason, cond.Message)
	}
	return nil
}
