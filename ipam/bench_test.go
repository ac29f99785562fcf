package ipam

import (
	"testing"
)

// BenchmarkAllocateRelease measures one Allocate plus one Release on a /24
// that is half full, the common steady state of a node.
func BenchmarkAllocateRelease(b *testing.B) {
	a := openTest(b, b.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/24"}]]}`)
	for i := 0; i < 127; i++ {
		mustAllocate(b, a, att(i))
	}
	at := Attachment{ContainerID: "bench", IfName: "eth0"}
	b.ResetTimer()
	for b.Loop() {
		if _, err := a.Allocate(at); err != nil {
			b.Fatal(err)
		}
		if err := a.Release(at); err != nil {
			b.Fatal(err)
		}
	}
}
