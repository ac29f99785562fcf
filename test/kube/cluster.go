// Package kube starts a real control plane (etcd + kube-apiserver) for
// podroute's tests, so the node agent is exercised against the same API
// semantics (validation, RBAC, watches) as in a cluster.
//
// The binaries come from hack/kube/build.sh (kube-apiserver, kubelet) and
// Debian's etcd-server package (etcd). By default no controller-manager or
// scheduler runs: tests set Node.spec.podCIDRs themselves, and nothing
// garbage-collects or schedules. Tests that need them (DaemonSets, node CIDR
// allocation) start them with StartControllerManager and StartScheduler.
package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	// KubeVersion is the Kubernetes release hack/kube/build.sh builds.
	KubeVersion = "v1.32.4"
	// BinDirEnv overrides DefaultBinDir, for both this package and build.sh.
	BinDirEnv = "PODROUTE_KUBE_BIN"
	// DefaultBinDir is where hack/kube/build.sh puts the binaries.
	DefaultBinDir = "/var/cache/podroute/kube/" + KubeVersion + "/bin"
	// EtcdEnv overrides the etcd executable (default: etcd in BinDir, else on PATH).
	EtcdEnv = "PODROUTE_ETCD"

	DefaultServiceCIDR   = "10.96.0.0/16"
	DefaultServiceCIDRv6 = "fd00:10:96::/108" // apiserver allows at most 20 host bits

	// AdminUser is the static-token user in system:masters behind
	// Cluster.Client, Cluster.RestConfig and Cluster.Kubeconfig.
	AdminUser = "podroute-admin"

	// ServiceAccountIssuer is the issuer of service-account tokens.
	ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

	defaultStartTimeout = 90 * time.Second
	stopGrace           = 10 * time.Second
)

// User is a static bearer-token user of the apiserver (--token-auth-file).
type User struct {
	Name   string
	UID    string   // defaults to Name
	Groups []string // e.g. system:masters; RBAC sees nothing else about the user
	Token  string   // generated when empty
}

// Options configures Start. The zero value is a single-stack IPv4 cluster
// reachable on 127.0.0.1 only.
type Options struct {
	// BinDir holds kube-apiserver (default: $PODROUTE_KUBE_BIN, else DefaultBinDir).
	BinDir string
	// EtcdBinary is the etcd executable (default: $PODROUTE_ETCD, else
	// BinDir/etcd if present, else etcd on PATH).
	EtcdBinary string
	// ServiceCIDR is --service-cluster-ip-range; "v4,v6" makes it dual-stack.
	// Default: DefaultServiceCIDR, or DefaultServiceCIDRv6 with IPv6.
	ServiceCIDR string
	// IPv6 selects DefaultServiceCIDRv6 when ServiceCIDR is empty.
	IPv6 bool
	// BindAddress is the apiserver's listen address (default 127.0.0.1). Set
	// an address of a bridge or veth in this network namespace for agents
	// running in other namespaces, where 127.0.0.1 is their own loopback.
	// etcd always stays on 127.0.0.1: only the apiserver talks to it.
	BindAddress string
	// AdvertiseAddress is the address published in the "kubernetes" Service
	// endpoints. Default: BindAddress when that is a concrete, non-loopback
	// address. With a loopback bind address it is the bind address and the
	// endpoint reconciler is off, since Endpoints may not hold loopback IPs.
	AdvertiseAddress string
	// Users are extra static-token users next to AdminUser, e.g. an
	// unprivileged user to check RBAC, or one per agent.
	Users []User
	// ExtraArgs are appended to the kube-apiserver command line; a repeated
	// flag overrides the harness's value.
	ExtraArgs []string
	// StartTimeout bounds the wait for etcd and /readyz (default 90s).
	StartTimeout time.Duration
	// NetNS is the path of a network namespace (/var/run/netns/NAME) to run etcd and
	// kube-apiserver in, as on a control-plane node: the apiserver listens on every
	// address of that namespace on port SecurePort, publishes AdvertiseAddress (required,
	// an address of the namespace) in the "kubernetes" Service endpoints, and reaches
	// kubelets and pods over that namespace's links and routes. The test process, which
	// stays in its own namespace, reaches it through a relay on 127.0.0.1 (Cluster.URL);
	// other namespaces use Cluster.ServerURL. BindAddress is ignored.
	NetNS string
}

// SecurePort is the apiserver's port in its own network namespace (Options.NetNS).
const SecurePort = 6443

// Cluster is a running etcd + kube-apiserver, stopped by the test's cleanup.
type Cluster struct {
	// Dir holds certificates, the token file, logs and the kubeconfig.
	Dir string
	// Kubeconfig is a kubeconfig file for AdminUser.
	Kubeconfig string
	// RestConfig and Client act as AdminUser (system:masters).
	RestConfig *rest.Config
	Client     kubernetes.Interface

	// URL is the apiserver's base URL, e.g. https://127.0.0.1:34567.
	URL string
	// ServerURL is the address nodes use: https://AdvertiseAddress:6443 with
	// Options.NetNS, else URL.
	ServerURL string
	// KubeletClientCertFile and KubeletClientKeyFile are the apiserver's client
	// credentials towards kubelets (logs, exec, port-forward): a user in
	// system:masters, signed by the cluster CA that kubelets trust.
	KubeletClientCertFile, KubeletClientKeyFile string
	// CAFile/CAData is the CA that signed the serving certificate; the
	// apiserver also accepts client certificates signed by it
	// (CAKeyFile holds its key), e.g. for kubelets.
	CAFile    string
	CAData    []byte
	CAKeyFile string
	// ServiceAccountKeyFile is the RSA key that signs service-account tokens.
	ServiceAccountKeyFile string
	// AdminToken is AdminUser's bearer token.
	AdminToken string
	// Users are all static-token users, AdminUser first, tokens filled in.
	Users []User
	// EtcdURL is etcd's client URL (http, loopback).
	EtcdURL string
	// ServiceCIDR is the --service-cluster-ip-range in use.
	ServiceCIDR string
	// APIServerLog and EtcdLog are the processes' output files.
	APIServerLog string
	EtcdLog      string
	// BinDir holds the Kubernetes binaries this cluster runs (kube-apiserver and, for
	// StartControllerManager, StartScheduler and Kubectl, the others hack/kube/build.sh
	// builds).
	BinDir string

	pki       *pki
	netns     string // Options.NetNS
	etcd      *process
	apiserver *process
	// controllers are processes started after the apiserver (controlplane.go).
	controllers []*process
}

// Start runs etcd and kube-apiserver on free ports in a fresh temporary
// directory, waits until the apiserver reports /readyz, and registers a
// cleanup that stops both and removes their data. It fails the test, rather
// than skipping it, when a binary is missing, so an unprepared machine cannot
// pass silently.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	start := time.Now()

	binDir := opts.BinDir
	if binDir == "" {
		binDir = os.Getenv(BinDirEnv)
	}
	if binDir == "" {
		binDir = DefaultBinDir
	}
	apiserverBin := filepath.Join(binDir, "kube-apiserver")
	if _, err := findExecutable(apiserverBin); err != nil {
		t.Fatalf("kube: kube-apiserver %s not found (%v): run hack/kube/build.sh (builds into $%s or %s), or set Options.BinDir / $%s",
			KubeVersion, err, BinDirEnv, DefaultBinDir, BinDirEnv)
	}
	etcdBin, err := findEtcd(opts.EtcdBinary, binDir)
	if err != nil {
		t.Fatalf("kube: etcd not found (%v): install it with `apt-get install -y etcd-server`, or set Options.EtcdBinary / $%s", err, EtcdEnv)
	}

	bindAddr := opts.BindAddress
	if bindAddr == "" {
		bindAddr = "127.0.0.1"
	}
	if opts.NetNS != "" {
		if net.ParseIP(opts.AdvertiseAddress) == nil {
			t.Fatalf("kube: Options.NetNS needs AdvertiseAddress, an IP address of that namespace (have %q)", opts.AdvertiseAddress)
		}
		bindAddr = "0.0.0.0"
	}
	bindIP := net.ParseIP(bindAddr)
	if bindIP == nil {
		t.Fatalf("kube: BindAddress %q is not an IP address", bindAddr)
	}
	serviceCIDR := opts.ServiceCIDR
	if serviceCIDR == "" {
		serviceCIDR = DefaultServiceCIDR
		if opts.IPv6 {
			serviceCIDR = DefaultServiceCIDRv6
		}
	}
	var serviceIPs []net.IP
	for _, cidr := range strings.Split(serviceCIDR, ",") {
		_, ipnet, err := net.ParseCIDR(strings.TrimSpace(cidr))
		if err != nil {
			t.Fatalf("kube: ServiceCIDR %q: %v", serviceCIDR, err)
		}
		// The "kubernetes" Service takes the first address of the range;
		// in-cluster clients verify the serving certificate against it.
		first := append(net.IP(nil), ipnet.IP...)
		first[len(first)-1]++
		serviceIPs = append(serviceIPs, first)
	}
	advertise := opts.AdvertiseAddress
	reconcileEndpoints := true
	if advertise == "" && !bindIP.IsUnspecified() {
		advertise = bindAddr
		reconcileEndpoints = !bindIP.IsLoopback()
	}
	// Clients connect to the bind address, or to what is advertised when
	// the apiserver listens on all addresses.
	connectHost := bindAddr
	if opts.NetNS != "" {
		connectHost = "127.0.0.1" // inside the namespace, until the relay is up
	} else if bindIP.IsUnspecified() {
		switch {
		case advertise != "":
			connectHost = advertise
		case bindIP.To4() != nil:
			connectHost = "127.0.0.1"
		default:
			connectHost = "::1"
		}
	}

	dir := t.TempDir()
	c := &Cluster{
		Dir:                   dir,
		Kubeconfig:            filepath.Join(dir, "kubeconfig"),
		CAFile:                filepath.Join(dir, "ca.crt"),
		CAKeyFile:             filepath.Join(dir, "ca.key"),
		ServiceAccountKeyFile: filepath.Join(dir, "sa.key"),
		ServiceCIDR:           serviceCIDR,
		BinDir:                binDir,
		APIServerLog:          filepath.Join(dir, "kube-apiserver.log"),
		EtcdLog:               filepath.Join(dir, "etcd.log"),
		KubeletClientCertFile: filepath.Join(dir, "apiserver-kubelet-client.crt"),
		KubeletClientKeyFile:  filepath.Join(dir, "apiserver-kubelet-client.key"),
		netns:                 opts.NetNS,
	}
	// Credentials.
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback}
	for _, s := range []string{bindAddr, advertise, connectHost} {
		if ip := net.ParseIP(s); ip != nil && !ip.IsUnspecified() {
			ips = append(ips, ip)
		}
	}
	ips = append(ips, serviceIPs...)
	dnsNames := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	c.pki, err = newPKI(ips, dnsNames)
	if err != nil {
		t.Fatalf("kube: generate credentials: %v", err)
	}
	c.CAData = c.pki.caCertPEM
	kubeletCert, kubeletKey, err := c.pki.issue(pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		nil, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	if err != nil {
		t.Fatalf("kube: kubelet client certificate: %v", err)
	}
	c.AdminToken = randomToken()
	c.Users = []User{{Name: AdminUser, UID: AdminUser, Groups: []string{"system:masters"}, Token: c.AdminToken}}
	for _, u := range opts.Users {
		if u.Name == "" {
			t.Fatalf("kube: Options.Users entry without Name")
		}
		if u.UID == "" {
			u.UID = u.Name
		}
		if u.Token == "" {
			u.Token = randomToken()
		}
		u.Groups = append([]string(nil), u.Groups...)
		c.Users = append(c.Users, u)
	}
	tokenFile := filepath.Join(dir, "tokens.csv")
	if err := writeFiles(map[string][]byte{
		c.CAFile:                            c.pki.caCertPEM,
		c.CAKeyFile:                         c.pki.caKeyPEM,
		filepath.Join(dir, "apiserver.crt"): c.pki.servingPEM,
		filepath.Join(dir, "apiserver.key"): c.pki.servingKey,
		c.ServiceAccountKeyFile:             c.pki.saKeyPEM,
		filepath.Join(dir, "sa.pub"):        c.pki.saPubPEM,
		tokenFile:                           tokenCSV(c.Users),
		c.KubeletClientCertFile:             kubeletCert,
		c.KubeletClientKeyFile:              kubeletKey,
	}); err != nil {
		t.Fatalf("kube: write credentials: %v", err)
	}

	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = defaultStartTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	if err := c.startEtcd(ctx, t, etcdBin); err != nil {
		t.Fatalf("kube: %v", err)
	}
	etcdReady := time.Since(start)

	args := []string{
		"--etcd-servers=" + c.EtcdURL,
		"--bind-address=" + bindAddr,
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--tls-cert-file=" + filepath.Join(dir, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(dir, "apiserver.key"),
		"--client-ca-file=" + c.CAFile,
		"--token-auth-file=" + tokenFile,
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--service-account-key-file=" + filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file=" + c.ServiceAccountKeyFile,
		"--service-cluster-ip-range=" + serviceCIDR,
		// Node authorizes kubelets (system:node:<name>) as in a real cluster.
		"--authorization-mode=Node,RBAC",
		"--kubelet-client-certificate=" + c.KubeletClientCertFile,
		"--kubelet-client-key=" + c.KubeletClientKeyFile,
		// Kubelets by address, as kubeadm sets it: a node's name resolves nowhere here.
		"--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
		"--allow-privileged=true",
		"--profiling=false",
	}
	if advertise != "" {
		args = append(args, "--advertise-address="+advertise)
	}
	if !reconcileEndpoints {
		args = append(args, "--endpoint-reconciler-type=none")
	}
	args = append(args, opts.ExtraArgs...)
	if err := c.startAPIServer(ctx, t, apiserverBin, bindAddr, connectHost, args); err != nil {
		t.Fatalf("kube: %v", err)
	}

	c.ServerURL = c.URL
	if opts.NetNS != "" {
		c.ServerURL = "https://" + hostPort(advertise, SecurePort)
	}
	if err := c.WriteKubeconfig(c.Kubeconfig, AdminUser, c.AdminToken); err != nil {
		t.Fatalf("kube: write kubeconfig: %v", err)
	}
	c.RestConfig, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatalf("kube: load kubeconfig: %v", err)
	}
	// Tests create objects in bursts; client-go's default 5 QPS would
	// throttle them for no benefit against a private apiserver.
	c.RestConfig.QPS, c.RestConfig.Burst = 100, 200
	c.Client, err = kubernetes.NewForConfig(c.RestConfig)
	if err != nil {
		t.Fatalf("kube: client: %v", err)
	}
	if err := c.waitBootstrapped(ctx); err != nil {
		t.Fatalf("kube: apiserver at %s ready but not bootstrapped within %v: %v\n%s",
			c.URL, timeout, err, c.apiserver.logTail(30))
	}
	// Registered last so it runs first: a failed test shows the control
	// plane's last words before the processes are stopped and the
	// directory is removed.
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range append([]*process{c.apiserver, c.etcd}, c.controllers...) {
				if p != nil {
					t.Logf("kube: last lines of %s log (%s):\n%s", p.name, p.exitStatus(), p.logTail(30))
				}
			}
		}
	})

	t.Logf("kube: kube-apiserver %s at %s ready in %v (etcd %v); dir %s",
		KubeVersion, c.URL, time.Since(start).Round(time.Millisecond), etcdReady.Round(time.Millisecond), dir)
	return c
}

func findEtcd(explicit, binDir string) (string, error) {
	if explicit == "" {
		explicit = os.Getenv(EtcdEnv)
	}
	if explicit != "" {
		return findExecutable(explicit)
	}
	if p, err := findExecutable(filepath.Join(binDir, "etcd")); err == nil {
		return p, nil
	}
	return findExecutable("etcd")
}

// tokenCSV renders --token-auth-file: token,user,uid,"group1,group2".
func tokenCSV(users []User) []byte {
	var b strings.Builder
	for _, u := range users {
		fmt.Fprintf(&b, "%s,%s,%s", u.Token, u.Name, u.UID)
		if len(u.Groups) > 0 {
			fmt.Fprintf(&b, ",\"%s\"", strings.Join(u.Groups, ","))
		}
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// startAttempts bounds retries after losing a race for a picked port.
const startAttempts = 3

func (c *Cluster) startEtcd(ctx context.Context, t testing.TB, bin string) error {
	dataDir, err := etcdDataDir(t, c.Dir)
	if err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		clientPort, err := freePort("127.0.0.1")
		if err != nil {
			return err
		}
		peerPort, err := freePort("127.0.0.1")
		if err != nil {
			return err
		}
		clientURL := "http://" + hostPort("127.0.0.1", clientPort)
		peerURL := "http://" + hostPort("127.0.0.1", peerPort)
		// A port race can leave a half-initialised member behind.
		if err := os.RemoveAll(dataDir); err != nil {
			return err
		}
		p, err := c.startInNS("etcd", c.EtcdLog, filteredEnv("ETCD_"), bin,
			"--name=podroute-test",
			"--data-dir="+dataDir,
			"--listen-client-urls="+clientURL,
			"--advertise-client-urls="+clientURL,
			"--listen-peer-urls="+peerURL,
			"--initial-advertise-peer-urls="+peerURL,
			"--initial-cluster=podroute-test="+peerURL,
			"--initial-cluster-state=new",
			"--logger=zap",
			"--log-outputs=stderr",
		)
		if err != nil {
			return err
		}
		c.etcd = p
		t.Cleanup(func() { p.stop(stopGrace) })
		c.EtcdURL = clientURL

		client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: DialerIn(c.netns)}}
		err = waitHTTP(ctx, p, client, clientURL+"/health", "", func(body string) bool {
			return strings.Contains(body, `"health":"true"`)
		})
		if err == nil {
			return nil
		}
		if p.exited() && p.logContains("address already in use") && attempt < startAttempts {
			continue
		}
		return fmt.Errorf("etcd (%s) not healthy at %s: %v\n--- etcd log tail (%s) ---\n%s",
			bin, clientURL, err, c.EtcdLog, p.logTail(30))
	}
}

// etcdDataDir prefers tmpfs: etcd fsyncs every write and the data is
// thrown away anyway.
func etcdDataDir(t testing.TB, fallback string) (string, error) {
	const shm = "/dev/shm"
	if st, err := os.Stat(shm); err == nil && st.IsDir() {
		sweepStaleEtcdDirs(shm)
		if d, err := os.MkdirTemp(shm, fmt.Sprintf("%s%d-", etcdDirPrefix, os.Getpid())); err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			return filepath.Join(d, "data"), nil
		}
	}
	return filepath.Join(fallback, "etcd-data"), nil
}

const etcdDirPrefix = "podroute-etcd-"

// sweepStaleEtcdDirs frees tmpfs memory held by test processes that died
// without running their cleanups (a test timeout, for one). Directory names
// carry the owning test process's pid.
func sweepStaleEtcdDirs(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), etcdDirPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

func (c *Cluster) startAPIServer(ctx context.Context, t testing.TB, bin, bindAddr, connectHost string, baseArgs []string) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAData)
	httpClient := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DialContext: DialerIn(c.netns)},
	}
	defer httpClient.CloseIdleConnections()
	for attempt := 1; ; attempt++ {
		port := SecurePort
		if c.netns == "" {
			var err error
			if port, err = freePort(bindAddr); err != nil {
				return err
			}
		}
		c.URL = "https://" + hostPort(connectHost, port)
		args := append([]string{fmt.Sprintf("--secure-port=%d", port)}, baseArgs...)
		p, err := c.startInNS("kube-apiserver", c.APIServerLog, filteredEnv("KUBECONFIG="), bin, args...)
		if err != nil {
			return err
		}
		c.apiserver = p
		t.Cleanup(func() { p.stop(stopGrace) })

		err = waitHTTP(ctx, p, httpClient, c.URL+"/readyz", c.AdminToken, func(body string) bool {
			return strings.TrimSpace(body) == "ok"
		})
		if err == nil {
			if c.netns != "" {
				return c.startRelay(t)
			}
			return nil
		}
		if p.exited() && p.logContains("address already in use") && attempt < startAttempts {
			continue
		}
		// The verbose report names the checks that are still failing.
		detail := ""
		if !p.exited() {
			detail = "\n--- /readyz?verbose ---\n" + fetch(httpClient, c.URL+"/readyz?verbose", c.AdminToken)
		}
		return fmt.Errorf("kube-apiserver (%s) not ready at %s: %v%s\n--- kube-apiserver log tail (%s) ---\n%s",
			bin, c.URL, err, detail, c.APIServerLog, p.logTail(40))
	}
}

// waitHTTP polls url until ok(body) holds on a 200 response, the process
// exits, or ctx ends.
func waitHTTP(ctx context.Context, p *process, client *http.Client, url, token string, ok func(string) bool) error {
	last := "no response yet"
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && ok(string(body)) {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %.300s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s %s (last probe: %s)", p.name, p.exitStatus(), last)
		case <-ctx.Done():
			return fmt.Errorf("not ready before Options.StartTimeout ran out (last probe: %s)", last)
		case <-tick.C:
		}
	}
}

func fetch(client *http.Client, url, token string) string {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<10))
	return string(body)
}

// waitBootstrapped waits for what /readyz does not cover but tests rely on:
// the "default" namespace (made by a post-start controller) and its
// "default" ServiceAccount, which Pods need and which only the absent
// controller-manager would create.
func (c *Cluster) waitBootstrapped(ctx context.Context) error {
	for {
		_, err := c.Client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsNotFound(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace %q not created: %w", metav1.NamespaceDefault, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	_, err := c.Client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create default ServiceAccount: %w", err)
	}
	return nil
}

// RestConfigFor returns a client configuration that authenticates with token
// (e.g. one of Users), verifying the serving certificate against the CA.
func (c *Cluster) RestConfigFor(token string) *rest.Config {
	return &rest.Config{
		Host:            c.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: append([]byte(nil), c.CAData...)},
		QPS:             100,
		Burst:           200,
	}
}

// User returns the static-token user with the given name.
func (c *Cluster) User(name string) (User, error) {
	for _, u := range c.Users {
		if u.Name == name {
			return u, nil
		}
	}
	return User{}, fmt.Errorf("kube: no static user %q", name)
}

// WriteKubeconfig writes a kubeconfig for token to path, e.g. for an agent
// process. The server is c.URL, so with a non-loopback BindAddress the file
// also works from other network namespaces.
func (c *Cluster) WriteKubeconfig(path, userName, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["podroute-test"] = &clientcmdapi.Cluster{
		Server:                   c.URL,
		CertificateAuthorityData: append([]byte(nil), c.CAData...),
	}
	cfg.AuthInfos[userName] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["podroute-test"] = &clientcmdapi.Context{Cluster: "podroute-test", AuthInfo: userName}
	cfg.CurrentContext = "podroute-test"
	return clientcmd.WriteToFile(*cfg, path)
}

// Running reports whether both processes are still alive, for tests that
// want to tell a control-plane crash from a failure of their own.
func (c *Cluster) Running() error {
	var errs []error
	for _, p := range append([]*process{c.etcd, c.apiserver}, c.controllers...) {
		if p != nil && p.exited() {
			errs = append(errs, fmt.Errorf("%s %s", p.name, p.exitStatus()))
		}
	}
	return errors.Join(errs...)
}

// startInNS starts a process in the cluster's network namespace (Options.NetNS), or in the
// test process's own. nsenter execs the program in place, so the process is the program
// itself and keeps the parent-death signal.
func (c *Cluster) startInNS(name, logPath string, env []string, bin string, args ...string) (*process, error) {
	if c.netns == "" {
		return startProcess(name, logPath, env, bin, args...)
	}
	return startProcess(name, logPath, env, "nsenter", append([]string{"--net=" + c.netns, "--", bin}, args...)...)
}

// startRelay makes the apiserver in its namespace reachable from the test process's: a
// listener on 127.0.0.1 whose connections are dialled inside the namespace. URL becomes the
// relay's; ServerURL stays the advertised address, for nodes.
func (c *Cluster) startRelay(t testing.TB) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("apiserver relay: %w", err)
	}
	dial := DialerIn(c.netns)
	target := hostPort("127.0.0.1", SecurePort)
	r := StartRelay(ln, func(ctx context.Context) (net.Conn, error) { return dial(ctx, "tcp", target) })
	t.Cleanup(r.Close)
	c.URL = "https://" + r.Addr().String()
	return nil
}
