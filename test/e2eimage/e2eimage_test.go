package e2eimage

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestImagesRun imports every image into a containerd of its own and runs each, checking
// that the tools the e2e specs and kube-proxy exec are there and work. The containers share
// one network namespace (loopback only) made for the test: agnhost's netexec, CoreDNS and
// nginx serve in it, and agnhost's tools query them there.
func TestImagesRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (debootstrap, containerd)")
	}
	for _, b := range []string{"containerd", "ctr", "runc", "ip"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("needs %s (hack/setup.sh installs it)", b)
		}
	}
	start := time.Now()
	images, err := E2EImages()
	if err != nil {
		t.Fatalf("images: %v", err)
	}
	t.Logf("images ready in %v", time.Since(start).Round(time.Millisecond))
	for _, ref := range Refs() {
		if images[ref] == "" {
			t.Fatalf("no archive for %s", ref)
		}
	}

	c := startContainerd(t)
	start = time.Now()
	for _, tar := range Archives(images) {
		c.ctr(t, "images", "import", tar)
	}
	t.Logf("imported %d archives in %v", len(Archives(images)), time.Since(start).Round(time.Millisecond))
	listed := c.ctr(t, "images", "ls", "-q")
	for _, ref := range Refs() {
		if !strings.Contains(listed, ref+"\n") {
			t.Fatalf("%s not among the imported images:\n%s", ref, listed)
		}
	}

	netns := fmt.Sprintf("podroute-e2eimage-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", netns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", netns).Run() })
	if out, err := exec.Command("ip", "-n", netns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	inNS := "--with-ns=network:/var/run/netns/" + netns

	corefile := filepath.Join(t.TempDir(), "Corefile")
	if err := os.WriteFile(corefile, []byte(".:53 {\n    hosts {\n        192.0.2.53 e2e.podroute.test\n    }\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Servers, each as its image runs it: agnhost's netexec (HTTP 8080, UDP 8081), CoreDNS
	// as user 65532 on port 53 (its file capability), nginx on port 80, pause.
	c.runDetached(t, "netexec", inNS, Agnhost, "/agnhost", "netexec")
	c.runDetached(t, "coredns", inNS, "--mount=type=bind,src="+corefile+",dst=/etc/coredns/Corefile,options=rbind:ro", CoreDNS, "/coredns", "-conf", "/etc/coredns/Corefile")
	c.runDetached(t, "nginx", inNS, Nginx)
	c.runDetached(t, "pause", inNS, Pause)

	check := func(name, ref string, script string, wants ...string) {
		t.Helper()
		out := c.ctr(t, "run", "--rm", inNS, ref, "check-"+name, "sh", "-ec", script)
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", name, w, out)
			}
		}
	}
	// What the specs run in agnhost containers, against the servers above.
	check("agnhost", Agnhost, `
/agnhost --version
ls /agnhost-2 /coredns /localhost.crt /localhost.key /uploads /usr/local/bin/iperf
for i in $(seq 1 50); do curl -q -s --connect-timeout 2 http://127.0.0.1:8080/hostname && break; sleep 0.2; done; echo
echo "netexec udp: $(echo hostName | nc -w 1 -u 127.0.0.1 8081)"
nc -v -z -w 2 127.0.0.1 8080
for i in $(seq 1 50); do dig +short +notcp @127.0.0.1 e2e.podroute.test | grep . && break; sleep 0.2; done
dig +short +tcp @127.0.0.1 e2e.podroute.test
nslookup e2e.podroute.test 127.0.0.1 | tail -2
curl -s -o /dev/null -w 'nginx %{http_code}\n' http://127.0.0.1:80/
ip -o link show lo
ss -ltn | grep -c LISTEN
timeout 1 sleep 0.1 && echo timeout ok
getent passwd user-defined-in-image
getent group group-defined-in-image
dig -v 2>&1
iperf -v 2>&1 || true
bash -c 'echo bash $BASH_VERSION'
wget -q -O - -T 1 http://127.0.0.1:8080/hostname >/dev/null && echo wget -T ok
`,
		"app version 2.53", "netexec udp: ", "succeeded!", "192.0.2.53\n192.0.2.53", "Address: 192.0.2.53",
		"nginx 200", "1: lo:", "timeout ok", "user-defined-in-image:x:1000:", "group-defined-in-image:x:50000:user-defined-in-image",
		"DiG 9.18", "iperf version 2", "bash 5", "wget -T ok")
	check("jessie-dnsutils", JessieDnsutils, `
dig +short +tcp @127.0.0.1 e2e.podroute.test
getent hosts localhost
seq 1 3 | tail -1
`, "192.0.2.53", "localhost", "3")
	// kube-proxy's tools, driving the namespace's tables as kube-proxy does.
	out := c.ctr(t, "run", "--rm", "--privileged", inNS, KubeProxy, "check-kube-proxy", "sh", "-ec", `
kube-proxy --version
iptables --version; ip6tables --version
iptables-save --version; iptables-restore --version; ip6tables-save --version; ip6tables-restore --version
iptables-legacy --version
printf '*nat\n:KUBE-PODROUTE-TEST - [0:0]\n-A KUBE-PODROUTE-TEST -p tcp -d 10.96.0.1 -j RETURN\nCOMMIT\n' | iptables-restore --noflush
iptables-save -t nat | grep KUBE-PODROUTE-TEST
ip6tables -t nat -N KUBE-PODROUTE-TEST && ip6tables-save -t nat | grep -c KUBE-PODROUTE-TEST
nft --version
nft add table ip kube-proxy-test && nft list tables
conntrack --version
conntrack -L 2>&1 | tail -1
ipset --version
`)
	for _, w := range []string{"Kubernetes v1.32.4", "iptables v1.8.9 (nf_tables)", "ip6tables v1.8.9 (nf_tables)", "iptables-restore v1.8.9 (nf_tables)",
		"iptables v1.8.9 (legacy)", "-A KUBE-PODROUTE-TEST -d 10.96.0.1/32 -p tcp -j RETURN", "nftables v1.0", "table ip kube-proxy-test",
		"conntrack v1.4", "flow entries have been shown", "ipset v7"} {
		if !strings.Contains(out, w) {
			t.Errorf("kube-proxy: output lacks %q:\n%s", w, out)
		}
	}
	out = c.ctr(t, "run", "--rm", CoreDNS, "check-coredns", "/coredns", "-version")
	if !strings.HasPrefix(out, "CoreDNS-"+CoreDNSVersion) {
		t.Errorf("coredns -version: %q", out)
	}
	check("regression-issue-74839", RegressionIssue74839, `test -x /regression-issue-74839 && echo present`, "present")
	check("busybox", BusyBox, `busybox | head -1; id; ls /bin/wget`, "BusyBox v1.", "uid=0(root)", "/bin/wget")
	if out := c.ctr(t, "task", "ls"); !strings.Contains(out, "pause") || !strings.Contains(out, "RUNNING") {
		t.Errorf("pause not running:\n%s", out)
	}
	t.Logf("every image ran, %v in all", time.Since(start).Round(time.Millisecond))
}

// containerd is a containerd of the test's own: root, state and socket in a temporary
// directory, the CRI plugin off.
type containerd struct {
	dir, sock string
}

func startContainerd(t *testing.T) *containerd {
	t.Helper()
	// Not t.TempDir: the state directory holds unix sockets, whose paths must stay short.
	dir, err := os.MkdirTemp("", "e2eimage-ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	c := &containerd{dir: dir, sock: filepath.Join(dir, "sock")}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
[metrics]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, c.sock+".ttrpc")
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	d := exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	d.Stdout, d.Stderr = logf, logf
	d.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Tasks first: their shims outlive containerd otherwise.
		out, _ := c.ctrErr("task", "ls", "-q")
		for _, id := range strings.Fields(out) {
			_, _ = c.ctrErr("task", "kill", "-s", "SIGKILL", id)
		}
		for _, id := range strings.Fields(out) {
			for i := 0; i < 50; i++ {
				if _, err := c.ctrErr("task", "delete", id); err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			_, _ = c.ctrErr("container", "delete", id)
		}
		_ = d.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = d.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = d.Process.Kill()
			<-done
		}
		_ = logf.Close()
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			t.Logf("containerd log (last 4 KB):\n%s", log[max(0, len(log)-4096):])
		}
		// Snapshots are mounted while containers run; none should be left, but be sure.
		_ = exec.Command("umount", "-R", filepath.Join(dir, "root")).Run()
		_ = exec.Command("umount", "-R", filepath.Join(dir, "state")).Run()
		if err := removeTree(dir); err != nil {
			t.Log(err)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.ctrErr("version"); err == nil {
			return c
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			t.Fatalf("containerd did not start:\n%s", log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *containerd) ctrErr(args ...string) (string, error) {
	out, err := exec.Command("ctr", append([]string{"--address", c.sock, "-n", "k8s.io"}, args...)...).CombinedOutput()
	return string(out), err
}

func (c *containerd) ctr(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.ctrErr(args...)
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// runDetached starts a container that keeps running: `ctr run -d [flags...] IMAGE ID [ARGS]`,
// with args given after the flags that start with "--" and the image reference.
func (c *containerd) runDetached(t *testing.T, id string, args ...string) {
	t.Helper()
	var flags, rest []string
	for i, a := range args {
		if !strings.HasPrefix(a, "--") {
			rest = args[i:]
			break
		}
		flags = append(flags, a)
	}
	ctrArgs := append(append([]string{"run", "-d"}, flags...), rest[0], id)
	c.ctr(t, append(ctrArgs, rest[1:]...)...)
}
