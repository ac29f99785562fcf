package agent

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/podroute/podroute/test/kube"
)

// Against a real API server: of two agents one holds the Lease; when it stops, it releases
// the Lease and the other takes over well within the lease duration.
func TestElection(t *testing.T) {
	c := kube.Start(t, kube.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "podroute-system"}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	a, err := newElection(c.Client, "podroute-system", "node-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := newElection(c.Client, "podroute-system", "node-b")
	if err != nil {
		t.Fatal(err)
	}
	actx, stopA := context.WithCancel(ctx)
	aDone := make(chan struct{})
	go func() { a.run(actx); close(aDone) }()
	select {
	case <-a.changed:
	case <-ctx.Done():
		t.Fatal("node-a never led an uncontested election")
	}
	go b.run(ctx)
	time.Sleep(2 * retryPeriod)
	if !a.Leading() || b.Leading() {
		t.Fatalf("leading: a %v, b %v; want a only", a.Leading(), b.Leading())
	}
	lease, err := c.Client.CoordinationV1().Leases("podroute-system").Get(ctx, LeaseName, metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "node-a" {
		t.Fatalf("lease %+v: %v", lease, err)
	}

	stopped := time.Now()
	stopA()
	<-aDone
	if a.Leading() {
		t.Fatal("a stopped agent still says it leads")
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, leaseDuration, true, func(context.Context) (bool, error) {
		return b.Leading(), nil
	})
	if err != nil {
		t.Fatalf("node-b did not take over within %s of node-a stopping", leaseDuration)
	}
	t.Logf("node-b took over %s after node-a stopped", time.Since(stopped).Round(time.Millisecond))
}
