// Package e2eimage builds, offline, the container images that Kubernetes' own end-to-end
// suite (e2e.test, k8s.io/kubernetes v1.32.4) runs for its sig-network conformance specs and
// its NetworkPolicy specs, and the cluster components a kubeadm-like cluster runs (kube-proxy,
// CoreDNS), as docker-archive tars for `ctr -n k8s.io images import`. Each carries the exact
// reference the suite asks for (test/utils/image/manifest.go in the release), so nothing is
// pulled and e2e.test needs no registry override (KUBE_TEST_REPO_LIST).
//
// What needs which image. Of the 41 `[sig-network] ... [Conformance]` specs:
//
//   - Agnhost (agnhost 2.53): the 8 DNS specs (a "webserver" container running
//     test-webserver and a querier running `sh -c` with dig +tcp/+notcp, getent hosts, seq,
//     test; "configurable pod DNS nameservers" execs /agnhost dns-suffix and
//     dns-server-list), the 4 "Networking Granular Checks: Pods" specs (netexec pods; a
//     test-container pod and a hostNetwork host-test-container pod running curl and
//     `echo hostName | nc -w 1 -u`), HostPort (netexec pods and a hostNetwork pod running
//     curl), the 3 Proxy specs (/agnhost porter, its TLS ports with /localhost.crt and
//     /localhost.key) and the 12 Services specs that run pods (netexec and serve-hostname
//     backends; exec pods running sh -c with nc -v -z -w, echo hostName | nc -u, curl -q -s
//     --connect-timeout).
//   - JessieDnsutils (jessie-dnsutils 1.7): the 8 DNS specs' second querier (sh, dig, getent,
//     seq).
//   - Nginx (nginx 1.14-4): EndpointSlice "should create Endpoints and EndpointSlices for Pods
//     matching a Service" (two nginx pods).
//   - Pause (pause 3.10): "Service endpoints latency should not be very high" (an RC of pause
//     pods); it is also kubelet v1.32's default sandbox image.
//   - RegressionIssue74839 (regression-issue-74839 1.2): the network suite's Conntrack spec
//     "proxy implementation should not be vulnerable to the invalid conntrack state bug".
//   - none: the other 3 EndpointSlice specs, EndpointSliceMirroring, Ingress API,
//     IngressClass API and 5 of the 17 Services specs (secure master service, listing all
//     namespaces, the lifecycle of an Endpoint, status lifecycle, delete a collection) create
//     no pods of their own.
//
// Every pod's sandbox is the runtime's sandbox image (containerd's sandbox_image).
//
// The 48 `[Feature:NetworkPolicy]` specs (test/e2e/network/netpol) run Agnhost only: servers
// `/agnhost serve-hostname --tcp|--udp --http=false --port N` (`/agnhost porter` for SCTP) and
// probes `/agnhost connect HOST:PORT --timeout=... --protocol=...` through kubectl exec.
//
// Built beside them:
//
//   - BusyBox (busybox 1.36.1-1): none of those 89 specs uses it; it is the e2e framework's
//     default test image (e2epod.GetDefaultTestImage) and the conntrack specs' client.
//   - KubeProxy (kube-proxy v1.32.4) and CoreDNS (coredns v1.11.3): the cluster's own
//     kube-proxy DaemonSet and CoreDNS Deployment, as kubeadm v1.32 deploys them.
//
// Not built, since none of those specs needs them: httpd, the distroless-iptables image of
// the (non-conformance) kube-proxy specs, and every image of other SIGs.
//
// How they are made. The Go binaries come from hack/kube/build.sh (agnhost, kube-proxy,
// coredns, from the same pinned modules as the rest of the cluster); hack/image/pause is the
// pause binary. The images upstream builds on Alpine or distroless share one Debian
// root file system instead, made with debootstrap (--variant=minbase, Suite, the packages in
// rootfsPackages) from the machine's Debian mirror: it carries what the specs exec inside
// agnhost and jessie-dnsutils (dig, nslookup, host, curl, nc, ip, ss, iperf, bash, coreutils'
// timeout and seq, getent, and BusyBox applets for whatever else Alpine's BusyBox would answer:
// wget, ping, ...), what kube-proxy execs (iptables, ip6tables and their -save/-restore, both
// nf_tables (Debian's default) and legacy; nft for the nftables mode; ipset for IPVS;
// conntrack) and nginx. The version numbers in the tags are upstream's; the Debian packages
// are bookworm's (nginx 1.22, BusyBox 1.35, BIND 9.18, ...), and the versions are listed
// in the root file system's packages.txt beside its layer.
//
// Caching. Everything lives under CacheDir (default /var/cache/podroute/e2e-images):
// rootfs/<key>/ holds the debootstrap tree, its layer tar and packages.txt, keyed by the
// suite, the package list and the recipe's revision; images/<name>-<key>.tar each image,
// keyed by its inputs' contents (the root file system layer's digest, the binaries', the
// recipe's revision). A key that changes builds anew and removes what it replaces. A cold
// machine spends about two minutes in debootstrap and a few seconds writing the archives;
// a warm one a fraction of a second hashing the binaries.
package e2eimage

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/podroute/podroute/hack/image/archive"
)

// The image references, as e2e.test v1.32.4 and kubeadm v1.32 name them.
const (
	Agnhost        = "registry.k8s.io/e2e-test-images/agnhost:2.53"
	JessieDnsutils = "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7"
	Nginx          = "registry.k8s.io/e2e-test-images/nginx:1.14-4"
	BusyBox        = "registry.k8s.io/e2e-test-images/busybox:1.36.1-1"
	Pause          = "registry.k8s.io/pause:3.10"
	KubeProxy      = "registry.k8s.io/kube-proxy:" + KubeVersion
	CoreDNS        = "registry.k8s.io/coredns/coredns:v" + CoreDNSVersion
	// RegressionIssue74839 is the conntrack spec's server that sends an out-of-window TCP
	// packet (test/images/regression-issue-74839).
	RegressionIssue74839 = "registry.k8s.io/e2e-test-images/regression-issue-74839:1.2"

	// KubeVersion, AgnhostVersion and CoreDNSVersion are what the binaries must report
	// (KubeVersion is test/kube's, kept here so that building the images needs no client
	// library; a test holds the two equal).
	KubeVersion    = "v1.32.4"
	AgnhostVersion = "2.53"
	CoreDNSVersion = "1.11.3"

	// Suite is the Debian release of the shared root file system.
	Suite = "bookworm"

	// KubeBinDirEnv and DefaultKubeBinDir are where hack/kube/build.sh puts the binaries
	// (test/kube's BinDirEnv and DefaultBinDir).
	KubeBinDirEnv     = "PODROUTE_KUBE_BIN"
	DefaultKubeBinDir = "/var/cache/podroute/kube/" + KubeVersion + "/bin"

	// DefaultCacheDir holds the root file system and the archives; CacheDirEnv overrides it.
	DefaultCacheDir = "/var/cache/podroute/e2e-images"
	CacheDirEnv     = "PODROUTE_E2E_IMAGES"
	// MirrorEnv overrides the Debian mirror (default: the machine's APT sources).
	MirrorEnv = "PODROUTE_DEBIAN_MIRROR"

	// Path is the images' PATH (Debian's and Alpine's default).
	Path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// revision is the images' recipe's, treeRevision the root file system tree's: bumped when
// what goes into them changes in a way the inputs the keys hash do not show.
const (
	revision     = "1"
	treeRevision = "1"
)

// rootfsPackages are installed into the shared root file system (with what they depend on),
// on top of debootstrap's minbase.
var rootfsPackages = []string{
	"bash",           // agnhost (upstream installs it)
	"bind9-dnsutils", // dig, nslookup, host: the DNS specs' queriers (bind-tools, dnsutils upstream)
	"busybox-static", // the busybox image, and applets for what else Alpine's BusyBox answers
	"ca-certificates",
	"conntrack",      // upstream's kube-proxy image carries it (v1.32 clears entries over netlink)
	"curl",           // agnhost: every exec'd HTTP check
	"iperf",          // agnhost: iperf 2 (networking_perf)
	"ipset",          // kube-proxy in IPVS mode
	"iproute2",       // agnhost: ip, ss
	"iptables",       // kube-proxy in iptables mode: iptables, ip6tables, -save, -restore
	"netcat-openbsd", // agnhost: nc (netcat-openbsd upstream too)
	"nftables",       // kube-proxy in nftables mode: nft
	"nginx-light",    // the nginx image
	// Services specs run `wget -q -O - -T 1` in exec pods; BusyBox 1.35's wget (Debian's
	// busybox-static) crashes with -T, Alpine's in upstream's image does not.
	"wget",
}

// Options says where the inputs are and where the outputs go.
type Options struct {
	// BinDir holds agnhost, kube-proxy and coredns (default: $PODROUTE_KUBE_BIN, else
	// DefaultKubeBinDir, where hack/kube/build.sh puts them).
	BinDir string
	// CacheDir holds the root file system and the archives (default: $PODROUTE_E2E_IMAGES,
	// else DefaultCacheDir).
	CacheDir string
	// Mirror is the Debian mirror debootstrap fetches from (default: $PODROUTE_DEBIAN_MIRROR,
	// else the machine's APT sources' first for Suite, else http://deb.debian.org/debian).
	Mirror string
	// Logf reports the slow steps (default: standard error).
	Logf func(format string, args ...any)
}

var (
	once    sync.Once
	onceMap map[string]string
	onceErr error
)

// E2EImages builds (or finds in the cache) every image with the default Options, once per
// process, and returns the archive of each, keyed by image reference.
func E2EImages() (map[string]string, error) {
	once.Do(func() { onceMap, onceErr = Build(Options{}) })
	if onceErr != nil {
		return nil, onceErr
	}
	m := make(map[string]string, len(onceMap))
	for k, v := range onceMap {
		m[k] = v
	}
	return m, nil
}

// Refs are the references Build returns, in a fixed order.
func Refs() []string {
	return []string{Agnhost, JessieDnsutils, Nginx, BusyBox, Pause, KubeProxy, CoreDNS, RegressionIssue74839}
}

// Archives returns the distinct archive paths of images, sorted: what to import.
func Archives(images map[string]string) []string {
	var paths []string
	for _, p := range images {
		if !slices.Contains(paths, p) {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	return paths
}

// Build builds (or finds in the cache) every image and returns the archive of each, keyed by
// image reference. It needs root (debootstrap) the first time, debootstrap and a Go toolchain,
// and hack/kube/build.sh's binaries.
func Build(opts Options) (map[string]string, error) {
	b, err := newBuilder(opts)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(b.cache, 0o755); err != nil {
		return nil, err
	}
	// One builder at a time: parallel test processes wait, then find everything built.
	unlock, err := lockFile(filepath.Join(b.cache, ".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	return b.build()
}

type builder struct {
	Options
	cache string
	mtime time.Time
	// The inputs.
	agnhost, kubeProxy, coredns, pause, regression string
	porterDir                                      string // agnhost's porter: localhost.crt, localhost.key
	rootfs                                         *rootfs
}

func newBuilder(opts Options) (*builder, error) {
	b := &builder{Options: opts, mtime: time.Unix(0, 0).UTC()}
	if b.BinDir == "" {
		b.BinDir = os.Getenv(KubeBinDirEnv)
	}
	if b.BinDir == "" {
		b.BinDir = DefaultKubeBinDir
	}
	b.cache = b.CacheDir
	if b.cache == "" {
		b.cache = os.Getenv(CacheDirEnv)
	}
	if b.cache == "" {
		b.cache = DefaultCacheDir
	}
	if b.Logf == nil {
		b.Logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, "e2eimage: "+format+"\n", args...) }
	}
	return b, nil
}

func (b *builder) build() (map[string]string, error) {
	start := time.Now()
	// The binaries, and the version each must report: an image tagged 2.53 holds agnhost 2.53.
	for _, c := range []struct {
		dst          *string
		name, want   string
		args         []string
		prefix, trim string
	}{
		{&b.agnhost, "agnhost", AgnhostVersion, []string{"--version"}, "app version ", ""},
		{&b.kubeProxy, "kube-proxy", KubeVersion, []string{"--version"}, "Kubernetes ", ""},
		{&b.coredns, "coredns", CoreDNSVersion, []string{"-version"}, "CoreDNS-", ""},
	} {
		p := filepath.Join(b.BinDir, c.name)
		out, err := exec.Command(p, c.args...).Output()
		if err != nil {
			return nil, fmt.Errorf("%s %s in %s: %v: run hack/kube/build.sh (make setup), or set $%s", c.name, c.want, b.BinDir, err, KubeBinDirEnv)
		}
		got := strings.TrimPrefix(strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0], c.prefix)
		if got != c.want {
			return nil, fmt.Errorf("%s reports %q, the image needs %s: run hack/kube/build.sh", p, got, c.want)
		}
		*c.dst = p
	}
	// No version flag: present is enough, the build script keeps it current.
	b.regression = filepath.Join(b.BinDir, "regression-issue-74839")
	if _, err := os.Stat(b.regression); err != nil {
		return nil, fmt.Errorf("regression-issue-74839 in %s: %v: run hack/kube/build.sh (make setup), or set $%s", b.BinDir, err, KubeBinDirEnv)
	}
	var err error
	if b.porterDir, err = porterDir(); err != nil {
		return nil, err
	}
	if b.pause, err = b.buildPause(); err != nil {
		return nil, err
	}
	if b.rootfs, err = b.ensureRootfs(); err != nil {
		return nil, err
	}

	images := map[string]string{}
	for _, spec := range b.specs() {
		path, err := b.ensureImage(spec)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", spec.ref, err)
		}
		images[spec.ref] = path
	}
	if d := time.Since(start); d > 5*time.Second {
		b.Logf("%d images ready in %s in %v", len(images), filepath.Join(b.cache, "images"), d.Round(time.Second))
	}
	return images, nil
}

// porterDir is agnhost's porter directory in the module cache: the certificate and key the
// image carries at its root for porter's TLS ports.
func porterDir() (string, error) {
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMODCACHE: %v (a Go toolchain is needed)", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "k8s.io", "kubernetes@"+KubeVersion, "test", "images", "agnhost", "porter")
	if _, err := os.Stat(filepath.Join(dir, "localhost.crt")); err != nil {
		return "", fmt.Errorf("agnhost's porter certificate: %v: run hack/kube/build.sh (it downloads k8s.io/kubernetes@%s)", err, KubeVersion)
	}
	return dir, nil
}

// buildPause builds hack/image/pause (static), the pause image's binary.
func (b *builder) buildPause() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(b.cache, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".pause.%d", os.Getpid()))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", tmp, "./hack/image/pause")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("go build ./hack/image/pause: %v: %s", err, strings.TrimSpace(string(out)))
	}
	p := filepath.Join(dir, "pause")
	return p, os.Rename(tmp, p)
}

// imageSpec is one image: its layers above the root file system (if it has it) and config.
type imageSpec struct {
	ref    string
	name   string // file name stem
	base   bool   // on the Debian root file system
	files  func() ([]archive.File, error)
	config archive.RunConfig
	// inputs are files whose content the image carries (for the cache key).
	inputs []string
}

func ports(p ...string) map[string]struct{} {
	m := map[string]struct{}{}
	for _, x := range p {
		m[x] = struct{}{}
	}
	return m
}

func (b *builder) specs() []imageSpec {
	env := []string{"PATH=" + Path}
	crt, key := filepath.Join(b.porterDir, "localhost.crt"), filepath.Join(b.porterDir, "localhost.key")
	return []imageSpec{
		{
			// test/images/agnhost/Dockerfile: the binary at /agnhost (and agnhost-2), the
			// CoreDNS binary at /coredns for the DNS specs that run a server of their own,
			// porter's certificate, /uploads for netexec, iperf on /usr/local/bin, and the user
			// and group the SupplementalGroups spec expects.
			ref: Agnhost, name: "agnhost-" + AgnhostVersion, base: true,
			inputs: []string{b.agnhost, b.coredns, crt, key},
			files: func() ([]archive.File, error) {
				passwd, err := b.rootfs.appendTo("etc/passwd", "user-defined-in-image:x:1000:1000:Linux User,,,:/home/user-defined-in-image:/bin/sh\n")
				if err != nil {
					return nil, err
				}
				group, err := b.rootfs.appendTo("etc/group", "user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n")
				if err != nil {
					return nil, err
				}
				return []archive.File{
					{Path: "/agnhost", Source: b.agnhost, Mode: 0o755},
					{Path: "/agnhost-2", Link: "agnhost"},
					{Path: "/coredns", Source: b.coredns, Mode: 0o755},
					{Path: "/localhost.crt", Source: crt},
					{Path: "/localhost.key", Source: key},
					{Path: "/uploads", Dir: true},
					{Path: "/usr/local/bin/iperf", Link: "/usr/bin/iperf"},
					{Path: "/etc/passwd", Data: passwd},
					{Path: "/etc/group", Data: group},
					{Path: "/home/user-defined-in-image", Dir: true, UID: 1000, GID: 1000},
				}, nil
			},
			config: archive.RunConfig{
				Env: env, Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
				ExposedPorts: ports("80/tcp", "8080/tcp", "8081/tcp", "9376/tcp", "5000/tcp"),
			},
		},
		{
			// test/images/jessie-dnsutils: Debian with dnsutils, and CoreDNS at /coredns.
			ref: JessieDnsutils, name: "jessie-dnsutils-1.7", base: true,
			inputs: []string{b.coredns},
			files: func() ([]archive.File, error) {
				return []archive.File{{Path: "/coredns", Source: b.coredns, Mode: 0o755}}, nil
			},
			config: archive.RunConfig{Env: env, Cmd: []string{"bash"}},
		},
		{
			// nginx serving its default page on port 80, logging to the container's output.
			ref: Nginx, name: "nginx-1.14-4", base: true,
			files: func() ([]archive.File, error) {
				return []archive.File{
					{Path: "/var/log/nginx", Dir: true, GID: 4, Mode: 0o755}, // root:adm, as Debian has it
					{Path: "/var/log/nginx/access.log", Link: "/dev/stdout"},
					{Path: "/var/log/nginx/error.log", Link: "/dev/stderr"},
				}, nil
			},
			config: archive.RunConfig{Env: env, Cmd: []string{"nginx", "-g", "daemon off;"}, ExposedPorts: ports("80/tcp")},
		},
		{
			// test/images/regression-issue-74839: the binary on Debian (upstream's base is
			// debian-base bookworm).
			ref: RegressionIssue74839, name: "regression-issue-74839-1.2", base: true,
			inputs: []string{b.regression},
			files: func() ([]archive.File, error) {
				return []archive.File{{Path: "/regression-issue-74839", Source: b.regression, Mode: 0o755}}, nil
			},
			config: archive.RunConfig{Env: env, Entrypoint: []string{"/regression-issue-74839"}},
		},
		{
			// build/server-image: the binary at /usr/local/bin on an image with iptables
			// (both variants), nft, ipset and conntrack; the DaemonSet gives the command.
			ref: KubeProxy, name: "kube-proxy-" + KubeVersion, base: true,
			inputs: []string{b.kubeProxy},
			files: func() ([]archive.File, error) {
				return []archive.File{{Path: "/usr/local/bin/kube-proxy", Source: b.kubeProxy, Mode: 0o755}}, nil
			},
			config: archive.RunConfig{Env: env, Cmd: []string{"/usr/local/bin/kube-proxy"}},
		},
		{
			// CoreDNS' Dockerfile: /coredns with cap_net_bind_service=+ep, CA certificates,
			// user nonroot (65532) of distroless.
			ref: CoreDNS, name: "coredns-" + CoreDNSVersion,
			inputs: []string{b.coredns},
			files: func() ([]archive.File, error) {
				return []archive.File{
					{Path: "/coredns", Source: b.coredns, Mode: 0o755,
						Xattrs: map[string]string{"security.capability": archive.FileCapability(10)}}, // CAP_NET_BIND_SERVICE
					{Path: "/etc/ssl/certs/ca-certificates.crt", Source: filepath.Join(b.rootfs.root, "etc/ssl/certs/ca-certificates.crt")},
					{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
					{Path: "/etc/group", Data: []byte("root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n")},
					{Path: "/home/nonroot", Dir: true, UID: 65532, GID: 65532, Mode: 0o700},
					{Path: "/tmp", Dir: true, Mode: 0o1777},
				}, nil
			},
			config: archive.RunConfig{
				User: "65532:65532", Env: env, Entrypoint: []string{"/coredns"},
				ExposedPorts: ports("53/tcp", "53/udp"),
			},
		},
		{
			// BusyBox alone: /bin/busybox and a link for each applet.
			ref: BusyBox, name: "busybox-1.36.1-1",
			files: func() ([]archive.File, error) {
				bb := filepath.Join(b.rootfs.root, "usr/bin/busybox")
				applets, err := busyboxApplets(bb)
				if err != nil {
					return nil, err
				}
				files := []archive.File{
					{Path: "/bin/busybox", Source: bb, Mode: 0o755},
					{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n")},
					{Path: "/etc/group", Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
					{Path: "/root", Dir: true, Mode: 0o700},
					{Path: "/tmp", Dir: true, Mode: 0o1777},
					{Path: "/var", Dir: true},
					{Path: "/home", Dir: true},
					{Path: "/usr/share/doc/busybox-static/copyright", Source: filepath.Join(b.rootfs.root, "usr/share/doc/busybox-static/copyright")},
				}
				for _, a := range applets {
					if a != "busybox" {
						files = append(files, archive.File{Path: "/bin/" + a, Link: "busybox"})
					}
				}
				return files, nil
			},
			config: archive.RunConfig{Env: env, Cmd: []string{"sh"}},
		},
		{
			// build/pause: /pause as the entrypoint, user 65535.
			ref: Pause, name: "pause-3.10",
			inputs: []string{b.pause},
			files: func() ([]archive.File, error) {
				return []archive.File{
					{Path: "/pause", Source: b.pause, Mode: 0o755},
					{Path: "/dev", Dir: true}, {Path: "/etc", Dir: true}, {Path: "/proc", Dir: true}, {Path: "/sys", Dir: true},
					{Path: "/tmp", Dir: true, Mode: 0o1777},
				}, nil
			},
			config: archive.RunConfig{User: "65535:65535", Env: []string{"PATH=/"}, Entrypoint: []string{"/pause"}},
		},
	}
}

// busyboxApplets lists the applets of a static busybox binary (it runs on the build machine).
func busyboxApplets(bb string) ([]string, error) {
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %v", bb, err)
	}
	var applets []string
	for _, a := range strings.Fields(string(out)) {
		if a != "" && !strings.Contains(a, "/") {
			applets = append(applets, a)
		}
	}
	if len(applets) < 100 {
		return nil, fmt.Errorf("%s --list: only %d applets", bb, len(applets))
	}
	return applets, nil
}

// ensureImage returns the image's archive, writing it when its key is not in the cache.
func (b *builder) ensureImage(s imageSpec) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "revision %s\nref %s\narch %s\nconfig %+v\n", revision, s.ref, runtime.GOARCH, s.config)
	if s.base {
		fmt.Fprintf(h, "base %s\n", b.rootfs.diffID)
	} else {
		// Images taking single files from the root file system: its key names its content.
		fmt.Fprintf(h, "rootfs %s\n", b.rootfs.diffID)
	}
	for _, in := range s.inputs {
		d, err := fileDigest(in)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "input %s %s\n", filepath.Base(in), d)
	}
	key := hex.EncodeToString(h.Sum(nil))[:16]
	dir := filepath.Join(b.cache, "images")
	path := filepath.Join(dir, s.name+"-"+key+".tar")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	start := time.Now()
	files, err := s.files()
	if err != nil {
		return "", err
	}
	top, err := archive.NewLayer(files, b.mtime)
	if err != nil {
		return "", err
	}
	img := archive.Image{
		Tags: []string{s.ref}, Config: s.config, Created: b.mtime,
		Layers:    []*archive.Layer{top},
		CreatedBy: []string{"podroute test/e2eimage: " + s.name},
	}
	if s.base {
		base, err := b.rootfs.layer()
		if err != nil {
			return "", err
		}
		img.Layers = []*archive.Layer{base, top}
		img.CreatedBy = []string{"podroute test/e2eimage: debootstrap --variant=minbase " + Suite + " " + strings.Join(rootfsPackages, ","), img.CreatedBy[0]}
	}
	if err := archive.WriteFile(path, img); err != nil {
		return "", err
	}
	// Older archives of the same image go.
	old, _ := filepath.Glob(filepath.Join(dir, s.name+"-*.tar"))
	for _, o := range old {
		if o != path && len(filepath.Base(o)) == len(filepath.Base(path)) {
			os.Remove(o)
		}
	}
	fi, _ := os.Stat(path)
	b.Logf("wrote %s (%s, %d MB) in %v", path, s.ref, fi.Size()>>20, time.Since(start).Round(time.Millisecond))
	return path, nil
}

// fileDigest is the sha256 of a file's content.
func fileDigest(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// lockFile takes an exclusive lock on path, waiting for it; the returned func releases it.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// aptMirror is the first mirror the machine's APT sources list for suite.
func aptMirror(suite string) string {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// deb822 stanzas: URIs and Suites lines.
		for _, stanza := range strings.Split(string(data), "\n\n") {
			var uris, suites []string
			enabled := true
			for _, line := range strings.Split(stanza, "\n") {
				k, v, ok := strings.Cut(line, ":")
				if !ok {
					continue
				}
				switch strings.TrimSpace(k) {
				case "URIs":
					uris = strings.Fields(v)
				case "Suites":
					suites = strings.Fields(v)
				case "Enabled":
					enabled = strings.TrimSpace(v) != "no"
				}
			}
			if enabled && len(uris) > 0 && slices.Contains(suites, suite) {
				return uris[0]
			}
		}
	}
	lists, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	for _, f := range append([]string{"/etc/apt/sources.list"}, lists...) {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// deb [options] URI suite components...
			if len(fields) < 3 || fields[0] != "deb" {
				continue
			}
			fields = fields[1:]
			if strings.HasPrefix(fields[0], "[") {
				for len(fields) > 0 && !strings.HasSuffix(fields[0], "]") {
					fields = fields[1:]
				}
				if len(fields) > 0 {
					fields = fields[1:]
				}
			}
			if len(fields) >= 2 && fields[1] == suite {
				fh.Close()
				return fields[0]
			}
		}
		fh.Close()
	}
	return ""
}

var errNotRoot = errors.New("building the Debian root file system needs root (debootstrap)")

// appendTo returns the root file system's file rel with text appended.
func (r *rootfs) appendTo(rel, text string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(r.root, rel))
	if err != nil {
		return nil, err
	}
	if len(data) > 0 && !bytes.HasSuffix(data, []byte("\n")) {
		data = append(data, '\n')
	}
	return append(data, text...), nil
}

// skipInLayer leaves out of the root file system's layer what an image has no use for and
// what only records when and where it was built: APT's lists and caches, logs, manuals,
// translations, documentation but for the copyright files, and the build machine's
// resolv.conf and hostname (the runtime provides them; Debian's generic /etc/hosts stays).
func skipInLayer(rel string, d fs.DirEntry) bool {
	switch rel {
	case "etc/resolv.conf", "etc/hostname", "debootstrap":
		return true
	}
	if d.IsDir() {
		return false
	}
	for _, p := range []string{"var/lib/apt/lists/", "var/cache/apt/", "var/cache/debconf/", "var/log/", "usr/share/man/", "usr/share/info/", "usr/share/locale/"} {
		if strings.HasPrefix(rel, p) {
			return !strings.HasSuffix(rel, "/lock") && rel != "var/cache/debconf/config.dat" && rel != "var/cache/debconf/templates.dat"
		}
	}
	if strings.HasPrefix(rel, "usr/share/doc/") {
		return filepath.Base(rel) != "copyright"
	}
	return false
}

// repoRoot is the directory of podroute's go.mod, found by walking up from the working
// directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if data, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			bytes.HasPrefix(data, []byte("module github.com/podroute/podroute\n")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no podroute go.mod above %s (the pause image is built from hack/image/pause)", dir)
		}
	}
}
