package config

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/dynamic"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// EventComponent is the source component of podroute's Events.
const EventComponent = "podroute-agent"

// maxMessage keeps condition messages well inside the CRD's limit.
const maxMessage = 4096

// StatusWriter reports podroute's verdict on each object: status.conditions (Valid, and
// Accepted for BGPPeers) with status.observedGeneration through the status subresource,
// and an Event (reason InvalidSpec) when an object turns invalid.
//
// Every agent runs one: there is no designated writer whose absence would leave statuses
// stale. The verdict depends only on cluster-wide state (the objects, Secrets, Nodes), so
// agents agree once their caches agree, and writes are idempotent: nothing is written when
// the stored conditions already say the same (type, status, reason, message,
// observedGeneration). When they differ, each agent patches with the resourceVersion it
// read as a precondition, so of all agents reacting to one change exactly one write wins
// and the others get a Conflict, which is dropped (their informers then show the new
// status, equal to theirs). Only the winner records the Event, so a change produces one
// Event cluster-wide, not one per node.
type StatusWriter struct {
	client      dynamic.Interface
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
	log         *slog.Logger
	now         func() time.Time

	mu        sync.Mutex
	attempted map[types.UID]string // resourceVersion+verdict last written or tried, to skip repeats
}

// NewStatusWriter starts an event broadcaster to the core/v1 Events API; events is e.g.
// clientset.CoreV1(). node names the reporting agent (the Events' source host). Call
// Shutdown when done.
func NewStatusWriter(client dynamic.Interface, events typedcorev1.EventsGetter, node string, log *slog.Logger) *StatusWriter {
	if log == nil {
		log = slog.Default()
	}
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: events.Events("")})
	return &StatusWriter{
		client:      client,
		broadcaster: b,
		recorder:    b.NewRecorder(runtime.NewScheme(), corev1.EventSource{Component: EventComponent, Host: node}),
		log:         log,
		now:         time.Now,
		attempted:   map[types.UID]string{},
	}
}

// Recorder records Events through the writer's broadcaster, as the agent: for Events about
// other objects the status writer also speaks for (the Services whose addresses the agent
// does not advertise).
func (sw *StatusWriter) Recorder() record.EventRecorder { return sw.recorder }

// Shutdown stops the event broadcaster.
func (sw *StatusWriter) Shutdown() { sw.broadcaster.Shutdown() }

// Sync brings every object's status in line with s. It does nothing until s.Synced, so a
// partial view (a Secret not read yet) never flips a status. Write errors other than
// conflicts are returned, joined; the other objects are still written.
func (sw *StatusWriter) Sync(ctx context.Context, s Settings) error {
	if !s.Synced {
		return nil
	}
	var errs []error
	seen := map[types.UID]bool{}
	if o := s.ConfigurationObject; o != nil && s.ConfigurationInstalled {
		seen[o.UID] = true
		valid := verdict(s.ConfigurationErrors, "the defaults apply to these fields")
		if err := sw.write(ctx, BGPConfigurationGVR, KindBGPConfiguration, *o, []metav1.Condition{valid}); err != nil {
			errs = append(errs, err)
		}
	}
	if s.PeersInstalled {
		for _, p := range s.Peers {
			seen[p.Object.UID] = true
			// A bad spec.bfd only turns BFD off: Valid names it, the peer is still accepted.
			conds := []metav1.Condition{verdict(p.BFDErrors, "the peer is configured without BFD")}
			if s.NodesChecked {
				acc := metav1.Condition{Type: ConditionAccepted, Status: metav1.ConditionTrue, Reason: ReasonNodesSelected, Message: "selected by at least one node"}
				if len(p.Nodes) == 0 {
					acc = metav1.Condition{Type: ConditionAccepted, Status: metav1.ConditionFalse, Reason: ReasonNoNodesSelected, Message: "spec.nodeSelector selects no node"}
				}
				conds = append(conds, acc)
			}
			if err := sw.write(ctx, BGPPeerGVR, KindBGPPeer, p.Object, conds); err != nil {
				errs = append(errs, err)
			}
		}
		for _, p := range s.InvalidPeers {
			seen[p.Object.UID] = true
			conds := []metav1.Condition{verdict(p.Errors, "the peer is not configured")}
			if s.NodesChecked {
				conds = append(conds, metav1.Condition{Type: ConditionAccepted, Status: metav1.ConditionFalse, Reason: ReasonInvalidSpec, Message: "not configured on any node: the spec is invalid"})
			}
			if err := sw.write(ctx, BGPPeerGVR, KindBGPPeer, p.Object, conds); err != nil {
				errs = append(errs, err)
			}
		}
	}
	sw.mu.Lock()
	for uid := range sw.attempted {
		if !seen[uid] {
			delete(sw.attempted, uid)
		}
	}
	sw.mu.Unlock()
	return errors.Join(errs...)
}

// verdict is the Valid condition for a list of field errors.
func verdict(errs field.ErrorList, consequence string) metav1.Condition {
	if len(errs) == 0 {
		return metav1.Condition{Type: ConditionValid, Status: metav1.ConditionTrue, Reason: ReasonValid, Message: "the spec is valid"}
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	msg := strings.Join(msgs, "; ")
	if consequence != "" {
		msg += " (" + consequence + ")"
	}
	if len(msg) > maxMessage {
		msg = msg[:maxMessage-3] + "..."
	}
	return metav1.Condition{Type: ConditionValid, Status: metav1.ConditionFalse, Reason: ReasonInvalidSpec, Message: msg}
}

// write patches the object's status when want differs from what is stored.
func (sw *StatusWriter) write(ctx context.Context, gvr schema.GroupVersionResource, kind string, o ObjectState, want []metav1.Condition) error {
	conds := append([]metav1.Condition(nil), o.Status.Conditions...)
	now := metav1.NewTime(sw.now().Truncate(time.Second))
	for _, c := range want {
		c.ObservedGeneration = o.Generation
		c.LastTransitionTime = now
		meta.SetStatusCondition(&conds, c) // keeps lastTransitionTime when the status stays
	}
	if o.Status.ObservedGeneration == o.Generation && sameConditions(o.Status.Conditions, conds) {
		return nil
	}
	key := o.ResourceVersion + "|" + digest(conds)
	sw.mu.Lock()
	if sw.attempted[o.UID] == key {
		sw.mu.Unlock()
		return nil // already written (or lost the race) from this very version
	}
	sw.attempted[o.UID] = key
	sw.mu.Unlock()

	patch, err := json.Marshal(map[string]any{
		// The resourceVersion makes the patch conditional: another agent that wrote first wins.
		"metadata": map[string]any{"resourceVersion": o.ResourceVersion},
		"status":   Status{ObservedGeneration: o.Generation, Conditions: conds},
	})
	if err != nil {
		return fmt.Errorf("encode status of %s %s: %w", kind, o.Name, err)
	}
	_, err = sw.client.Resource(gvr).Patch(ctx, o.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: EventComponent}, "status")
	switch {
	case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
		sw.log.Debug("status write superseded", "kind", kind, "name", o.Name, "err", err)
		return nil
	case err != nil:
		sw.mu.Lock()
		delete(sw.attempted, o.UID) // retry on the next Sync
		sw.mu.Unlock()
		return fmt.Errorf("write status of %s %s: %w", kind, o.Name, err)
	}

	ref := &corev1.ObjectReference{APIVersion: APIVersion, Kind: kind, Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion}
	valid := meta.FindStatusCondition(conds, ConditionValid)
	before := meta.FindStatusCondition(o.Status.Conditions, ConditionValid)
	switch {
	case valid == nil:
	case valid.Status == metav1.ConditionFalse && (before == nil || before.Status != metav1.ConditionFalse || before.Message != valid.Message || before.ObservedGeneration != valid.ObservedGeneration):
		sw.recorder.Event(ref, corev1.EventTypeWarning, ReasonInvalidSpec, valid.Message)
	case valid.Status == metav1.ConditionTrue && before != nil && before.Status == metav1.ConditionFalse:
		sw.recorder.Event(ref, corev1.EventTypeNormal, ReasonValid, "the spec is valid now")
	}
	sw.log.Info("status written", "kind", kind, "name", o.Name, "generation", o.Generation, "valid", valid != nil && valid.Status == metav1.ConditionTrue)
	return nil
}

func sameConditions(a, b []metav1.Condition) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		y := meta.FindStatusCondition(b, x.Type)
		if y == nil || x.Status != y.Status || x.Reason != y.Reason || x.Message != y.Message || x.ObservedGeneration != y.ObservedGeneration {
			return false
		}
	}
	return true
}

func digest(conds []metav1.Condition) string {
	var b strings.Builder
	for _, c := range conds {
		fmt.Fprintf(&b, "%s=%s/%s/%d/%s;", c.Type, c.Status, c.Reason, c.ObservedGeneration, c.Message)
	}
	return b.String()
}
