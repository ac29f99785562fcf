package agent

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaseName is the Lease whose holder writes the status of the cluster-wide podroute
// objects.
const LeaseName = "podroute-agent"

// The timings of kube-controller-manager's election: a dead holder is replaced within
// leaseDuration; a holder that stops on purpose releases the Lease at once.
const (
	leaseDuration = 15 * time.Second
	renewDeadline = 10 * time.Second
	retryPeriod   = 2 * time.Second
)

// election elects one agent of the cluster for the work that must be done once, not once per
// node: the status of BGPPeers and of the BGPConfiguration is the same verdict on every node,
// and N agents writing it made N-1 conflicting writes per change.
type election struct {
	elector *leaderelection.LeaderElector
	leading atomic.Bool
	// changed receives a value when leadership is gained (capacity 1).
	changed chan struct{}
}

func newElection(client kubernetes.Interface, namespace, identity string) (*election, error) {
	e := &election{changed: make(chan struct{}, 1)}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: LeaseName},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}
	el, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   leaseDuration,
		RenewDeadline:   renewDeadline,
		RetryPeriod:     retryPeriod,
		ReleaseOnCancel: true,
		Name:            LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) {
				e.leading.Store(true)
				select {
				case e.changed <- struct{}{}:
				default:
				}
			},
			OnStoppedLeading: func() { e.leading.Store(false) },
		},
	})
	if err != nil {
		return nil, fmt.Errorf("lease %s/%s: %w", namespace, LeaseName, err)
	}
	e.elector = el
	return e, nil
}

// run takes part in the election until ctx ends; a lost leadership is sought again.
func (e *election) run(ctx context.Context) {
	for ctx.Err() == nil {
		e.elector.Run(ctx)
		e.leading.Store(false)
	}
}

// Leading reports whether this agent holds the Lease.
func (e *election) Leading() bool { return e != nil && e.leading.Load() }
