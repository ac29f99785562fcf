// Command e2e builds, ahead of the tests, the container images Kubernetes' e2e suite and the
// test cluster run (package test/e2eimage): the Debian root file system they share, with
// debootstrap, and one docker-archive tar per image, all cached under
// /var/cache/podroute/e2e-images. It prints each image's reference and archive. Run as root,
// after hack/kube/build.sh:
//
//	go run ./hack/image/e2e
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/podroute/podroute/test/e2eimage"
)

func main() {
	var opts e2eimage.Options
	flag.StringVar(&opts.BinDir, "bin", "", "directory with agnhost, kube-proxy and coredns (default: $PODROUTE_KUBE_BIN, else hack/kube/build.sh's)")
	flag.StringVar(&opts.CacheDir, "cache", "", "cache directory (default: $"+e2eimage.CacheDirEnv+", else "+e2eimage.DefaultCacheDir+")")
	flag.StringVar(&opts.Mirror, "mirror", "", "Debian mirror (default: $"+e2eimage.MirrorEnv+", else the machine's APT sources)")
	flag.Parse()
	images, err := e2eimage.Build(opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e images: %v\n", err)
		os.Exit(1)
	}
	for _, ref := range e2eimage.Refs() {
		fi, err := os.Stat(images[ref])
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e images: %v\n", err)
			os.Exit(1)
		}
		fmt.Printf("%-55s %s (%d MB)\n", ref, images[ref], fi.Size()>>20)
	}
}
