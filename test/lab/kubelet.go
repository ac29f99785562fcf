package lab

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/podroute/podroute/test/cniutil"
	"github.com/podroute/podroute/test/kube"
)

// A kubelet node is a lab node that also runs a real container runtime and kubelet inside
// its namespace, the way a bare-metal node runs them:
//
//   - containerd (Debian's, with runc), with a configuration generated from `containerd config
//     default`: per-node root /var/lib/<lab>/<node>/containerd, state
//     /run/<lab>/<node>/containerd and socket /run/<lab>/<node>/containerd.sock; its CRI
//     plugin looks for CNI configurations and plugins in the directories the node's agent
//     writes into (Node.ConfDir, Node.BinDir), keeps pod network namespaces under its state
//     directory, and uses PauseImage as the sandbox image;
//   - runc behind a small wrapper that drops process.oomScoreAdj from the bundle before
//     running it: kubelet asks for a negative score for every pod sandbox, which a process
//     without CAP_SYS_RESOURCE over the whole machine (a container, a VM sandbox) may not set,
//     and runc fails the sandbox then;
//   - the offline images (PauseImage, NetcheckImage), built from hack/image/pause and
//     imported with `ctr images import`: nothing is pulled;
//   - kubelet with the node's own identity (a client certificate for system:node:<name> in
//     system:nodes, signed by the cluster CA, so the Node authorizer applies), its Node name,
//     node IPs and a root directory of its own. It adopts the Node object the lab created,
//     spec.podCIDRs included (no controller-manager allocates them).
//
// Both processes are started with `nsenter --net`, which keeps the mount namespace (and so
// the cgroup mounts under /sys/fs/cgroup) of the test process; `ip netns exec` would remount
// /sys.

// KubeletOptions configures Node.StartKubelet.
type KubeletOptions struct {
	// Binary is the kubelet executable (default: kubelet in the lab's Kube.BinDir, else
	// $PODROUTE_KUBE_BIN, else kube.DefaultBinDir).
	Binary string
	// Verbosity is kubelet's --v (default 2).
	Verbosity int
	// ExtraArgs are appended to kubelet's command line.
	ExtraArgs []string
	// Config is merged into the generated KubeletConfiguration (top-level keys replace).
	Config map[string]any
	// HostPaths runs containerd and kubelet (and so every container of the node) in a mount
	// namespace of the node's own, in which the host paths a CNI installs into are the
	// node's directories: /etc/cni/net.d is Node.ConfDir, /opt/cni/bin Node.BinDir,
	// /var/lib/cni holds Node.DataDir (IPAM) and /run/podroute Node.Socket. The agent can
	// then run as podroute's DaemonSet, whose hostPath volumes name those paths, on two nodes
	// of one machine without the nodes sharing files. DataDir and Socket are changed to
	// where the node's agent will put them. The mount points are created on the machine
	// (empty) when missing; nothing is mounted in the test process's mount namespace.
	HostPaths bool
}

// hostPathDirs are the paths HostPaths gives each node of its own, with the node
// directory (under Node.Dir) behind them.
var hostPathDirs = []struct{ host, node string }{
	{"/etc/cni/net.d", "net.d"},
	{"/opt/cni/bin", "bin"},
	{"/var/lib/cni", "var-lib-cni"},
	{"/run/podroute", "run-podroute"},
}

// Kubelet is a node's containerd and kubelet.
type Kubelet struct {
	Node *Node
	// Dir holds the kubelet's configuration, credentials and both processes' logs.
	Dir string
	// RootDir is kubelet's --root-dir; PodLogDir its podLogsDir.
	RootDir, PodLogDir string
	// ContainerdRoot, ContainerdState and ContainerdSocket are containerd's root, state and
	// gRPC address; ContainerdConfig its configuration file.
	ContainerdRoot, ContainerdState, ContainerdSocket, ContainerdConfig string
	// ContainerdLog and KubeletLog are the processes' output (each start appends).
	ContainerdLog, KubeletLog string

	base       string // /var/lib/<lab>/<node>
	run        string // /run/<lab>/<node>
	mountNS    string // the node's mount namespace file (HostPaths), or empty
	utsNS      string // the node's UTS namespace file: its own host name
	binary     string
	args       []string
	containerd *daemon
	kubelet    *daemon
}

// kubeletBinary picks the kubelet executable.
func (l *Lab) kubeletBinary(explicit string) string {
	if explicit != "" {
		return explicit
	}
	dir := l.opts.Kube.BinDir
	if dir == "" {
		dir = os.Getenv(kube.BinDirEnv)
	}
	if dir == "" {
		dir = kube.DefaultBinDir
	}
	return filepath.Join(dir, "kubelet")
}

// StartKubelet starts containerd and kubelet in the node's namespace, imports the offline
// images, and waits until kubelet has posted the Node's status (the Node need not be Ready:
// that takes the CNI configuration of the node's agent). Everything is stopped and removed
// in t.Cleanup: the node's pods are deleted first, so that their sandboxes are torn down
// through CNI DEL while the runtime still runs.
func (n *Node) StartKubelet(t testing.TB, opts KubeletOptions) *Kubelet {
	t.Helper()
	k, err := n.startKubelet(t, opts)
	if err != nil {
		t.Fatalf("lab: kubelet on %s: %v", n.Name, err)
	}
	return k
}

func (n *Node) startKubelet(t testing.TB, opts KubeletOptions) (*Kubelet, error) {
	l := n.lab
	sweepKubeletDirs()
	for _, tool := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", "jq", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found: install the Debian packages containerd, runc, jq and util-linux (hack/setup.sh)", tool)
		}
	}
	k := &Kubelet{
		Node:   n,
		Dir:    filepath.Join(n.Dir, "kubelet"),
		base:   filepath.Join("/var/lib", l.Name, n.Name),
		run:    filepath.Join("/run", l.Name, n.Name),
		binary: l.kubeletBinary(opts.Binary),
	}
	if st, err := os.Stat(k.binary); err != nil || st.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("kubelet %s missing or not executable: run hack/kube/build.sh", k.binary)
	}
	k.RootDir = filepath.Join(k.base, "kubelet")
	k.PodLogDir = filepath.Join(k.base, "pods")
	k.ContainerdRoot = filepath.Join(k.base, "containerd")
	k.ContainerdState = filepath.Join(k.run, "containerd")
	k.ContainerdSocket = filepath.Join(k.run, "containerd.sock")
	k.ContainerdConfig = filepath.Join(k.Dir, "containerd.toml")
	k.ContainerdLog = filepath.Join(k.Dir, "containerd.log")
	k.KubeletLog = filepath.Join(k.Dir, "kubelet.log")
	for _, d := range []string{k.Dir, k.RootDir, k.PodLogDir, k.ContainerdRoot, k.ContainerdState, n.ConfDir, n.BinDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	t.Cleanup(func() { k.teardown(t) })
	if opts.HostPaths {
		if err := k.createMountNS(); err != nil {
			return nil, fmt.Errorf("mount namespace: %w", err)
		}
	}
	if err := k.createUTSNS(); err != nil {
		return nil, fmt.Errorf("UTS namespace: %w", err)
	}

	// containerd's CRI plugin always sets up a loopback network next to the configured one:
	// the reference loopback plugin has to be in the plugin directory.
	if err := copyFile(filepath.Join(cniutil.RefDir(), "loopback"), filepath.Join(n.BinDir, "loopback"), 0o755); err != nil {
		return nil, fmt.Errorf("loopback CNI plugin: %w: run hack/install-ref-cni.sh", err)
	}
	if err := k.writeContainerdConfig(); err != nil {
		return nil, err
	}
	if err := k.StartContainerd(); err != nil {
		return nil, err
	}
	imgs, err := images()
	if err != nil {
		return nil, err
	}
	for _, ref := range []string{PauseImage, NetcheckImage} {
		if _, err := k.Ctr("images", "import", imgs[ref]); err != nil {
			return nil, fmt.Errorf("import %s: %w", ref, err)
		}
	}
	if err := k.writeKubeletFiles(opts); err != nil {
		return nil, err
	}
	if err := k.StartKubelet(); err != nil {
		return nil, err
	}
	// The kubelet has adopted the Node once it posts a condition of its own.
	err = Poll(context.Background(), 60*time.Second, 200*time.Millisecond, func() error {
		if !k.kubelet.running() {
			return fmt.Errorf("kubelet exited: %s", Tail(readFile(k.KubeletLog), 20))
		}
		c, err := n.NodeCondition(corev1.NodeReady)
		if err != nil {
			return err
		}
		if c == nil {
			return errors.New("no Ready condition posted yet")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kubelet did not post the Node's status: %w\n%s", err, Tail(readFile(k.KubeletLog), 30))
	}
	t.Logf("lab: %s: kubelet and containerd running (kubelet root %s, containerd %s)", n.Name, k.RootDir, k.ContainerdSocket)
	return k, nil
}

// NodeCondition returns the Node object's condition of type typ, or nil if it has none.
func (n *Node) NodeCondition(typ corev1.NodeConditionType) (*corev1.NodeCondition, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	node, err := n.lab.Kube.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == typ {
			return &node.Status.Conditions[i], nil
		}
	}
	return nil, nil
}

// runcWrapper is containerd's runc BinaryName: runc, minus process.oomScoreAdj in the
// bundle's config.json.
const runcWrapper = `#!/bin/sh
# runc, without the OCI bundle's process.oomScoreAdj: setting a negative score needs a
# privilege this host does not grant, and runc fails the container then.
bundle=
prev=
for a in "$@"; do
	case "$prev" in
	--bundle|-b) bundle=$a ;;
	esac
	case "$a" in
	--bundle=*) bundle=${a#--bundle=} ;;
	esac
	prev=$a
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
	jq 'del(.process.oomScoreAdj)' "$bundle/config.json" >"$bundle/config.json.podroute" &&
		mv "$bundle/config.json.podroute" "$bundle/config.json"
fi
exec runc "$@"
`

// writeContainerdConfig writes `containerd config default` with this node's paths.
func (k *Kubelet) writeContainerdConfig() error {
	wrapper := filepath.Join(k.Dir, "runc-wrapper")
	if err := os.WriteFile(wrapper, []byte(runcWrapper), 0o755); err != nil {
		return err
	}
	def, err := exec.Command("containerd", "config", "default").Output()
	if err != nil {
		return fmt.Errorf("containerd config default: %w", err)
	}
	const cri = `plugins."io.containerd.grpc.v1.cri"`
	conf, err := setTOML(string(def), []tomlSetting{
		{"", "root", k.ContainerdRoot},
		{"", "state", k.ContainerdState},
		{"grpc", "address", k.ContainerdSocket},
		{cri, "sandbox_image", PauseImage},
		{cri, "netns_mounts_under_state_dir", true},
		{cri + ".cni", "bin_dir", k.cniBinDir()},
		{cri + ".cni", "conf_dir", k.cniConfDir()},
		{cri + ".containerd.runtimes.runc.options", "BinaryName", wrapper},
		{cri + ".containerd.runtimes.runc.options", "SystemdCgroup", false},
	})
	if err != nil {
		return fmt.Errorf("containerd config: %w", err)
	}
	return os.WriteFile(k.ContainerdConfig, []byte(conf), 0o644)
}

// cniConfDir and cniBinDir are the node's CNI directories as containerd sees them.
func (k *Kubelet) cniConfDir() string {
	if k.mountNS != "" {
		return hostPathDirs[0].host
	}
	return k.Node.ConfDir
}

func (k *Kubelet) cniBinDir() string {
	if k.mountNS != "" {
		return hostPathDirs[1].host
	}
	return k.Node.BinDir
}

// createMountNS makes the node's mount namespace (KubeletOptions.HostPaths), kept alive by a
// bind mount of it under the node's run directory, which teardown unmounts. Mounts of the
// machine propagate into it (slave), none come back.
func (k *Kubelet) createMountNS() error {
	n := k.Node
	// The namespace file may not sit on a shared mount: bind its directory onto itself,
	// private.
	dir := filepath.Join(k.run, "mnt")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", dir, err)
	}
	if err := syscall.Mount("", dir, "", syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", dir, err)
	}
	file := filepath.Join(dir, "ns")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		return err
	}
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, d := range hostPathDirs {
		src := filepath.Join(n.Dir, d.node)
		if err := os.MkdirAll(src, 0o755); err != nil {
			return err
		}
		if err := os.MkdirAll(d.host, 0o755); err != nil {
			return fmt.Errorf("mount point: %w", err)
		}
		fmt.Fprintf(&script, "mount --bind %q %q\n", src, d.host)
	}
	out, err := exec.Command("unshare", "--mount="+file, "--propagation", "slave", "sh", "-c", script.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("unshare: %v: %s", err, strings.TrimSpace(string(out)))
	}
	k.mountNS = file
	n.ConfDir = filepath.Join(n.Dir, "net.d")
	n.BinDir = filepath.Join(n.Dir, "bin")
	n.DataDir = filepath.Join(n.Dir, "var-lib-cni", "podroute")
	n.Socket = filepath.Join(n.Dir, "run-podroute", "agent.sock")
	return nil
}

// createUTSNS gives the node a host name of its own, its Node name, as a machine has: the
// runtime, kubelet and every host-network pod of the node see it (a pod's own name
// otherwise). The namespace is kept by a bind mount under the node's run directory, which
// teardown unmounts.
func (k *Kubelet) createUTSNS() error {
	dir := filepath.Join(k.run, "uts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	file := filepath.Join(dir, "ns")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		return err
	}
	out, err := exec.Command("unshare", "--uts="+file, "hostname", k.Node.Name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("unshare: %v: %s", err, strings.TrimSpace(string(out)))
	}
	k.utsNS = file
	return nil
}

// nsenter is the nsenter arguments that put a process in the node's namespaces.
func (k *Kubelet) nsenter() []string {
	args := []string{"--net=" + k.Node.NetNS.Path}
	if k.mountNS != "" {
		args = append(args, "--mount="+k.mountNS)
	}
	if k.utsNS != "" {
		args = append(args, "--uts="+k.utsNS)
	}
	return args
}

type tomlSetting struct {
	section, key string
	value        any
}

// setTOML replaces `key = value` lines of the given sections of a TOML document as
// `containerd config default` prints it (one key per line, every key present). Every
// setting must match exactly one line.
func setTOML(doc string, settings []tomlSetting) (string, error) {
	lines := strings.Split(doc, "\n")
	done := make([]bool, len(settings))
	section := ""
	for i, line := range lines {
		trim := strings.TrimSpace(line)
		if strings.HasPrefix(trim, "[") && strings.HasSuffix(trim, "]") {
			section = strings.Trim(trim, "[]")
			continue
		}
		key, _, ok := strings.Cut(trim, "=")
		if !ok {
			continue
		}
		key = strings.TrimSpace(key)
		for j, s := range settings {
			if s.section != section || s.key != key {
				continue
			}
			if done[j] {
				return "", fmt.Errorf("[%s] %s appears twice", s.section, s.key)
			}
			v, err := json.Marshal(s.value) // a TOML basic string, boolean or integer
			if err != nil {
				return "", err
			}
			indent := line[:len(line)-len(strings.TrimLeft(line, " \t"))]
			lines[i] = fmt.Sprintf("%s%s = %s", indent, key, v)
			done[j] = true
		}
	}
	for j, s := range settings {
		if !done[j] {
			return "", fmt.Errorf("no [%s] %s in the default configuration", s.section, s.key)
		}
	}
	return strings.Join(lines, "\n"), nil
}

// writeKubeletFiles writes the kubelet's client credentials, kubeconfig and configuration.
func (k *Kubelet) writeKubeletFiles(opts KubeletOptions) error {
	n := k.Node
	l := n.lab
	certPEM, keyPEM, err := l.Kube.IssueClientCert("system:node:"+n.Name, []string{"system:nodes"})
	if err != nil {
		return fmt.Errorf("kubelet client certificate: %w", err)
	}
	certFile := filepath.Join(k.Dir, "kubelet-client.crt")
	keyFile := filepath.Join(k.Dir, "kubelet-client.key")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: l.APIServerURL, CertificateAuthorityData: l.Kube.CAData}
	cfg.AuthInfos["kubelet"] = &clientcmdapi.AuthInfo{ClientCertificate: certFile, ClientKey: keyFile}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "kubelet"}
	cfg.CurrentContext = "lab"
	kubeconfig := filepath.Join(k.Dir, "kubelet.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, kubeconfig); err != nil {
		return err
	}

	kc := map[string]any{
		"apiVersion":               "kubelet.config.k8s.io/v1beta1",
		"kind":                     "KubeletConfiguration",
		"cgroupDriver":             "cgroupfs",
		"cgroupsPerQOS":            false,
		"enforceNodeAllocatable":   []string{},
		"failSwapOn":               false,
		"containerRuntimeEndpoint": "unix://" + k.ContainerdSocket,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": false},
			"x509":      map[string]any{"clientCAFile": l.Kube.CAFile},
		},
		"authorization":      map[string]any{"mode": "AlwaysAllow"},
		"healthzBindAddress": "127.0.0.1",
		"readOnlyPort":       0,
		"podLogsDir":         k.PodLogDir,
		"oomScoreAdj":        0,
		// Network readiness is reported promptly, so tests see it change.
		"nodeStatusUpdateFrequency":   "2s",
		"syncFrequency":               "10s",
		"runtimeRequestTimeout":       "2m",
		"serializeImagePulls":         false,
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"evictionHard":                map[string]string{"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
		"resolvConf":                  "/etc/resolv.conf",
	}
	for key, v := range opts.Config {
		kc[key] = v
	}
	b, err := json.MarshalIndent(kc, "", "  ") // JSON is YAML
	if err != nil {
		return err
	}
	config := filepath.Join(k.Dir, "kubelet-config.yaml")
	if err := os.WriteFile(config, b, 0o644); err != nil {
		return err
	}
	v := opts.Verbosity
	if v == 0 {
		v = 2
	}
	k.args = append([]string{
		"--config=" + config,
		"--kubeconfig=" + kubeconfig,
		"--root-dir=" + k.RootDir,
		"--hostname-override=" + n.Name,
		"--node-ip=" + n.IPv4.String() + "," + n.IPv6.String(),
		"--v=" + strconv.Itoa(v),
	}, opts.ExtraArgs...)
	return nil
}

// StartContainerd starts containerd and waits until it answers on its socket. It is an error
// if it runs already.
func (k *Kubelet) StartContainerd() error {
	if k.containerd != nil && k.containerd.running() {
		return errors.New("containerd is running")
	}
	d, err := startDaemon(k.nsenter(), "containerd", k.ContainerdLog, "containerd", "--config", k.ContainerdConfig)
	if err != nil {
		return err
	}
	k.containerd = d
	err = Poll(context.Background(), 30*time.Second, 100*time.Millisecond, func() error {
		if !d.running() {
			return fmt.Errorf("containerd exited: %s", Tail(readFile(k.ContainerdLog), 20))
		}
		_, err := k.Ctr("version")
		return err
	})
	if err != nil {
		return fmt.Errorf("containerd not answering on %s: %w", k.ContainerdSocket, err)
	}
	return nil
}

// StopContainerd SIGTERMs containerd (killing it after 10 s). Running pods keep running:
// their shims outlive containerd, as on a node where containerd is restarted.
func (k *Kubelet) StopContainerd() error { return k.containerd.stop(10 * time.Second) }

// RestartContainerd is StopContainerd then StartContainerd.
func (k *Kubelet) RestartContainerd() error {
	if err := k.StopContainerd(); err != nil {
		return err
	}
	return k.StartContainerd()
}

// StartKubelet starts the kubelet process again after StopKubelet. It is an error if it
// runs already.
func (k *Kubelet) StartKubelet() error {
	if k.kubelet != nil && k.kubelet.running() {
		return errors.New("kubelet is running")
	}
	d, err := startDaemon(k.nsenter(), "kubelet", k.KubeletLog, k.binary, k.args...)
	if err != nil {
		return err
	}
	k.kubelet = d
	return nil
}

// StopKubelet SIGTERMs the kubelet (killing it after 10 s); pods keep running.
func (k *Kubelet) StopKubelet() error { return k.kubelet.stop(10 * time.Second) }

// RestartKubelet is StopKubelet then StartKubelet.
func (k *Kubelet) RestartKubelet() error {
	if err := k.StopKubelet(); err != nil {
		return err
	}
	return k.StartKubelet()
}

// Ctr runs `ctr --address <containerd socket> -n k8s.io args...` and returns its output.
func (k *Kubelet) Ctr(args ...string) (string, error) {
	full := append([]string{"--address", k.ContainerdSocket, "--namespace", "k8s.io"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ctr", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %v: %s", strings.Join(full, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ContainerLog returns the log kubelet keeps of a container of pod (its first run: 0.log),
// in the CRI log format, read from the node's pod log directory. (The API server cannot
// fetch logs: it does not reach kubelets across the fabric.)
func (k *Kubelet) ContainerLog(pod *corev1.Pod, container string) (string, error) {
	dir := filepath.Join(k.PodLogDir, fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, pod.UID), container)
	b, err := os.ReadFile(filepath.Join(dir, "0.log"))
	if err != nil {
		return "", err
	}
	// <time> <stream> <tag> <message>: keep the messages.
	var out strings.Builder
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 4)
		if len(f) == 4 {
			out.WriteString(f[3])
			out.WriteByte('\n')
		}
	}
	return out.String(), nil
}

// Sandboxes lists the pod network namespaces containerd holds (under its state directory):
// one per pod sandbox whose network is set up and not yet torn down.
func (k *Kubelet) Sandboxes() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(k.ContainerdState, "io.containerd.grpc.v1.cri", "netns"))
	if errors.Is(err, os.ErrNotExist) {
		entries, err = os.ReadDir(filepath.Join(k.ContainerdState, "netns"))
	}
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out, nil
}

// KubeletLogText and ContainerdLogText return the processes' logs so far.
func (k *Kubelet) KubeletLogText() string    { return readFile(k.KubeletLog) }
func (k *Kubelet) ContainerdLogText() string { return readFile(k.ContainerdLog) }

// teardown deletes the node's pods, waits for their sandboxes to be torn down, stops
// kubelet and containerd and removes their directories.
func (k *Kubelet) teardown(t testing.TB) {
	n := k.Node
	if t.Failed() {
		t.Logf("lab: kubelet log of %s (%s):\n%s", n.Name, k.KubeletLog, Tail(readFile(k.KubeletLog), 60))
		t.Logf("lab: containerd log of %s (%s):\n%s", n.Name, k.ContainerdLog, Tail(readFile(k.ContainerdLog), 40))
	}
	if k.kubelet != nil && k.kubelet.running() && k.containerd != nil && k.containerd.running() {
		if err := k.deletePods(); err != nil {
			t.Logf("lab: %s: delete pods: %v", n.Name, err)
		}
		if err := Poll(context.Background(), 30*time.Second, 200*time.Millisecond, func() error {
			s, err := k.Sandboxes()
			if err == nil && len(s) > 0 {
				err = fmt.Errorf("pod sandboxes left: %v", s)
			}
			return err
		}); err != nil {
			t.Logf("lab: %s: %v\nkubelet log:\n%s\ncontainerd log:\n%s", n.Name, err,
				Tail(readFile(k.KubeletLog), 40), Tail(readFile(k.ContainerdLog), 20))
		}
	}
	if k.kubelet != nil {
		_ = k.kubelet.stop(10 * time.Second)
	}
	if k.containerd != nil {
		_ = k.containerd.stop(10 * time.Second)
	}
	// Shims and containers outlive containerd: kill what is left, then unmount and remove.
	if err := removeRuntimeDirs(k.ContainerdSocket, k.base, k.run); err != nil {
		t.Errorf("lab: %s: %v", n.Name, err)
	}
	for _, d := range []string{filepath.Dir(k.base), filepath.Dir(k.run)} {
		_ = os.Remove(d) // the lab's directory, once its last node is gone
	}
}

// deletePods deletes every pod bound to the node, without grace.
func (k *Kubelet) deletePods() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pods := k.Node.lab.Kube.Client.CoreV1().Pods(metav1.NamespaceAll)
	list, err := pods.List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + k.Node.Name})
	if err != nil {
		return err
	}
	zero := int64(0)
	var errs []error
	for _, p := range list.Items {
		err := k.Node.lab.Kube.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeRuntimeDirs kills the processes started for a containerd (its shims, found by the
// socket address on their command line, and everything below them), unmounts what is
// mounted under the directories and removes them.
func removeRuntimeDirs(socket string, dirs ...string) error {
	killTree(func(cmdline string) bool {
		for _, d := range append([]string{socket}, dirs...) {
			if strings.Contains(cmdline, d) {
				return true
			}
		}
		return false
	})
	for _, d := range dirs {
		killContainers(d)
	}
	var errs []error
	for _, d := range dirs {
		unmountUnder(d)
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killContainers kills the processes of every container whose bundle is under dir (a
// containerd state directory, or one above it), through the container's cgroup: they need
// not descend from a live shim (the shim may be gone already). It then removes the emptied
// cgroups and runc's state of the container.
func killContainers(dir string) {
	var bundles []string
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && d.Name() == "rootfs" {
			return filepath.SkipDir
		}
		if !d.IsDir() && d.Name() == "config.json" && filepath.Base(filepath.Dir(filepath.Dir(filepath.Dir(path)))) == "io.containerd.runtime.v2.task" {
			bundles = append(bundles, filepath.Dir(path))
		}
		return nil
	})
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.procs"); err == nil {
		hierarchies = append(hierarchies, "/sys/fs/cgroup") // cgroup v2
	}
	for _, b := range bundles {
		var spec struct {
			Linux struct {
				CgroupsPath string `json:"cgroupsPath"`
			} `json:"linux"`
		}
		data, err := os.ReadFile(filepath.Join(b, "config.json"))
		if err != nil || json.Unmarshal(data, &spec) != nil {
			continue
		}
		cg := spec.Linux.CgroupsPath
		if cg == "" || strings.Contains(cg, ":") { // empty, or a systemd slice:prefix:name
			continue
		}
		var groups []string
		for _, h := range hierarchies {
			g := filepath.Join(h, cg)
			procs, err := os.ReadFile(filepath.Join(g, "cgroup.procs"))
			if err != nil {
				continue
			}
			groups = append(groups, g)
			for _, f := range strings.Fields(string(procs)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		for _, g := range groups {
			for range 20 {
				if err := os.Remove(g); err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		// The shim runs runc with its default root, /run/containerd/runc/<namespace>, and
		// listens on /run/containerd/s/<sha256 of "<containerd address>/<namespace>/<id>">
		// (the containerd address being <state>/../containerd.sock here).
		ns, id := filepath.Base(filepath.Dir(b)), filepath.Base(b)
		_ = os.RemoveAll(filepath.Join("/run/containerd/runc", ns, id))
		state := filepath.Dir(filepath.Dir(filepath.Dir(b)))
		sum := sha256.Sum256([]byte(filepath.Join(filepath.Dir(state), "containerd.sock", ns, id)))
		_ = os.Remove(filepath.Join("/run/containerd/s", hex.EncodeToString(sum[:])))
	}
}

// killTree SIGKILLs every process whose command line matches (shims name their
// containerd's socket), and their descendants.
func killTree(match func(string) bool) {
	entries, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	var roots []int
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			// pid (comm) state ppid ...: comm may hold spaces and parentheses.
			if i := strings.LastIndexByte(string(stat), ')'); i > 0 {
				if f := strings.Fields(string(stat[i+1:])); len(f) > 1 {
					if ppid, err := strconv.Atoi(f[1]); err == nil {
						children[ppid] = append(children[ppid], pid)
					}
				}
			}
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && match(strings.ReplaceAll(string(cmd), "\x00", " ")) {
			roots = append(roots, pid)
		}
	}
	seen := map[int]bool{}
	var walk func(int)
	walk = func(pid int) {
		if seen[pid] || pid <= 1 || pid == self {
			return
		}
		seen[pid] = true
		_ = syscall.Kill(pid, syscall.SIGKILL)
		for _, c := range children[pid] {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	if len(seen) > 0 {
		time.Sleep(200 * time.Millisecond)
	}
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, mp := range mounts {
		_ = syscall.Unmount(mp, syscall.MNT_DETACH)
	}
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// sweepKubeletDirs removes the runtime directories (and kills the shims and containers) of
// lab runs whose process is gone.
func sweepKubeletDirs() {
	for _, parent := range []string{"/var/lib", "/run"} {
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			rest, ok := strings.CutPrefix(e.Name(), NamePrefix)
			if !ok || !e.IsDir() {
				continue
			}
			pidStr, _, ok := strings.Cut(rest, "-")
			pid, err := strconv.Atoi(pidStr)
			if !ok || err != nil || pid <= 0 || processAlive(pid) {
				continue
			}
			dir := filepath.Join(parent, e.Name())
			_ = removeRuntimeDirs(dir, dir)
		}
	}
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return string(b)
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// daemon is a long-running process started in a network namespace with nsenter (which
// execs it in place), its output appended to a log file. It dies with the test process.
type daemon struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}

	mu      sync.Mutex
	waitErr error
}

// startDaemon starts bin under nsenter with nsenterArgs (the namespaces to enter).
func startDaemon(nsenterArgs []string, name, logPath, bin string, args ...string) (*daemon, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logf, "=== lab: start at %s: %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command("nsenter", append(append(slices.Clone(nsenterArgs), "--", bin), args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	d := &daemon{name: name, cmd: cmd, done: make(chan struct{})}
	if err := startTied(cmd, logf, func(err error) {
		d.mu.Lock()
		d.waitErr = err
		d.mu.Unlock()
		fmt.Fprintf(logf, "=== lab: %s exited at %s: %v\n", name, time.Now().Format(time.RFC3339Nano), errOrOK(err))
		close(d.done)
	}); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return d, nil
}

func (d *daemon) running() bool { return d != nil && !exited(d.done) }

// stop SIGTERMs the process and SIGKILLs it after grace. Stopping a stopped daemon is fine.
func (d *daemon) stop(grace time.Duration) error {
	if !d.running() {
		return nil
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(grace):
		_ = d.cmd.Process.Kill()
	}
	select {
	case <-d.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) still running 10s after SIGKILL", d.name, d.cmd.Process.Pid)
	}
}
