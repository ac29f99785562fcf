package cluster

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The Node informer's transform keeps what routing reads, and nothing else.
func TestSlimNode(t *testing.T) {
	fat := node("node-1", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, internal("192.0.2.11"), internal("2001:db8::11"))
	fat.Labels = map[string]string{"rack": "r1", "node.kubernetes.io/exclude-from-external-load-balancers": ""}
	fat.Annotations = map[string]string{
		AnnotationASN:                            "65001",
		AnnotationPrefix + "router-id":           "192.0.2.99",
		"kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
		"node.alpha.kubernetes.io/ttl":           "0",
	}
	fat.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate}}
	fat.Status.Images = []corev1.ContainerImage{{Names: []string{"registry.k8s.io/pause:3.10"}, SizeBytes: 320368}}
	fat.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	fat.Status.Capacity = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2")}

	obj, err := slimNode(fat)
	if err != nil {
		t.Fatal(err)
	}
	slim := obj.(*corev1.Node)
	want := FromObject(fat)
	want.Annotations = map[string]string{AnnotationASN: "65001", AnnotationPrefix + "router-id": "192.0.2.99"}
	if got := FromObject(slim); !reflect.DeepEqual(got, want) {
		t.Errorf("routing view changed by the transform:\n got %+v\nwant %+v", got, want)
	}
	// The kubelet's heartbeat and others' annotations no longer wake the agent.
	beat := fat.DeepCopy()
	beat.Annotations["node.alpha.kubernetes.io/ttl"] = "30"
	beat.Status.Conditions[0].LastHeartbeatTime = metav1.Now()
	if o, _ := slimNode(beat); !sameForRouting(slim, o.(*corev1.Node)) {
		t.Error("a heartbeat or a foreign annotation counts as a routing change")
	}
	if len(slim.ManagedFields) != 0 || len(slim.Status.Images) != 0 || len(slim.Status.Conditions) != 0 || len(slim.Status.Capacity) != 0 {
		t.Errorf("the transform kept what routing does not read: %+v", slim)
	}
	if len(slim.Annotations) != 2 || slim.Annotations[AnnotationASN] != "65001" {
		t.Errorf("annotations %v: want the podroute.io/ ones only", slim.Annotations)
	}
	if fat.Annotations["node.alpha.kubernetes.io/ttl"] != "0" || len(fat.ManagedFields) != 1 {
		t.Error("the transform changed the object it was given")
	}
	// A tombstone passes through.
	if o, err := slimNode("tombstone"); err != nil || o != "tombstone" {
		t.Errorf("tombstone: %v, %v", o, err)
	}
}
