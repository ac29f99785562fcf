// Command podroute is the CNI plugin. Run under the name podroute-ipam (a link to the same
// binary) it is the standalone IPAM plugin instead, for other plugins that want podroute's
// allocator.
package main

import (
	"os"
	"path/filepath"

	"github.com/podroute/podroute/cni"
)

func main() {
	if filepath.Base(os.Args[0]) == cni.BuiltinIPAM {
		cni.IPAMMain()
		return
	}
	cni.Main()
}
