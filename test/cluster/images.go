package cluster

import (
	"github.com/podroute/podroute/test/e2eimage"
)

// AgnhostImage is the e2e suite's test image; the cluster's own checks use it too.
const AgnhostImage = e2eimage.Agnhost

// ImageSet is what every node imports: the cluster's components and the e2e suite's images.
type ImageSet struct {
	KubeProxy, CoreDNS string
	archives           []string
}

// Tars are the docker-archive files to import.
func (s *ImageSet) Tars() []string { return s.archives }

// Images builds (or finds cached) the offline images.
func Images() (*ImageSet, error) {
	m, err := e2eimage.E2EImages()
	if err != nil {
		return nil, err
	}
	return &ImageSet{KubeProxy: e2eimage.KubeProxy, CoreDNS: e2eimage.CoreDNS, archives: e2eimage.Archives(m)}, nil
}
