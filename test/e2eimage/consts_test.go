package e2eimage

import (
	"testing"

	"github.com/podroute/podroute/test/kube"
)

// The copies this package keeps of test/kube's constants (so that building the images needs
// no client library) must say what test/kube says.
func TestKubeConstants(t *testing.T) {
	if KubeVersion != kube.KubeVersion || KubeBinDirEnv != kube.BinDirEnv || DefaultKubeBinDir != kube.DefaultBinDir {
		t.Errorf("e2eimage has %s %s %s, test/kube %s %s %s", KubeVersion, KubeBinDirEnv, DefaultKubeBinDir,
			kube.KubeVersion, kube.BinDirEnv, kube.DefaultBinDir)
	}
}
