package cluster_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podroute/podroute/test/cluster"
	"github.com/podroute/podroute/test/kube"
	"github.com/podroute/podroute/test/lab"
)

// BenchmarkService measures Services on the complete cluster (kube-proxy in
// PODROUTE_CLUSTER_PROXY_MODE, iptables by default), in one run:
//
//   - pod to a ClusterIP Service to a pod on the other node, against pod to pod directly over
//     the same nodes: TCP throughput (one stream) and request/response round trips (1 byte
//     each way), alternating the two paths repetition by repetition; the ratios are of
//     medians (Service / direct);
//
//   - the time from `kubectl apply` of a Deployment of 20 pods to all 20 answering through
//     their Service, against the time until the kubelets report all 20 Ready.
//
//     go test -run '^$' -bench Service -benchtime 1x -timeout 30m ./test/cluster/
//
// The sockets of both ends are opened in the pods' network namespaces by this process
// (test/lab's perf helpers), so both paths are measured the same way on the same CPUs.
func BenchmarkService(b *testing.B) {
	c := cluster.Start(b, cluster.Options{ProxyMode: os.Getenv("PODROUTE_CLUSTER_PROXY_MODE")})
	u := &user{t: b, c: c, ns: "podroute-bench"}
	u.kubectl("create", "namespace", u.ns)
	w1, w2 := c.Nodes[1], c.Nodes[2]
	u.pod("client", w1.Name, nil, nil, "pause")
	u.pod("server", w2.Name, map[string]string{"app": "web"}, nil, "pause")
	u.waitRunning("client")
	u.waitRunning("server")
	const port = 5201
	svc := u.service("bench", corev1.ServiceTypeClusterIP, map[string]string{"app": "web"}, port)
	client, server := u.podNetNS("client"), u.podNetNS("server")
	serverIP := netip.MustParseAddr(u.podIP("server"))
	direct := netip.AddrPortFrom(serverIP, port)
	via := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), port)
	// kube-proxy has programmed the Service once a connection through it succeeds.
	lab.Eventually(b, 60*time.Second, "Service "+via.String()+" answers", func() error {
		_, err := lab.TCPRoundTripsVia(client, server, direct, via, 1)
		return err
	})

	const reps, secs, trips = 5, 3, 2000
	var thrDirect, thrSvc, rttDirect, rttSvc []float64
	for r := 0; r < reps; r++ {
		for _, p := range []struct {
			via      netip.AddrPort
			thr, rtt *[]float64
		}{{netip.AddrPort{}, &thrDirect, &rttDirect}, {via, &thrSvc, &rttSvc}} {
			bps, err := lab.TCPThroughputVia(client, server, direct, p.via, secs*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			*p.thr = append(*p.thr, bps)
			d, err := lab.TCPRoundTripsVia(client, server, direct, p.via, trips)
			if err != nil {
				b.Fatal(err)
			}
			*p.rtt = append(*p.rtt, float64(median(d))/float64(time.Microsecond))
		}
	}
	b.ReportMetric(medianF(thrSvc)/1e9, "svc-Gbit/s")
	b.ReportMetric(medianF(thrDirect)/1e9, "direct-Gbit/s")
	b.ReportMetric(medianF(thrSvc)/medianF(thrDirect), "throughput-ratio")
	b.ReportMetric(medianF(rttSvc), "svc-rtt-p50-µs")
	b.ReportMetric(medianF(rttDirect), "direct-rtt-p50-µs")
	b.ReportMetric(medianF(rttSvc)/medianF(rttDirect), "rtt-ratio")
	fmt.Printf("kube-proxy %s, %d repetitions of %d s and %d round trips, pod on %s to pod on %s:\n", c.ProxyMode, reps, secs, trips, w1.Name, w2.Name)
	fmt.Printf("  throughput  direct %s  via ClusterIP %s  ratio %.2f\n", gbits(thrDirect), gbits(thrSvc), medianF(thrSvc)/medianF(thrDirect))
	fmt.Printf("  rtt p50 µs  direct %s  via ClusterIP %s  ratio %.2f\n", floats(rttDirect), floats(rttSvc), medianF(rttSvc)/medianF(rttDirect))

	// 20 pods behind a Service: apply to answering.
	const replicas = 20
	svc20 := u.service("web20", corev1.ServiceTypeClusterIP, map[string]string{"app": "web20"}, 8080)
	url := "http://" + net.JoinHostPort(svc20.Spec.ClusterIP, "8080") + "/hostname"
	hc := &http.Client{
		Timeout: time.Second,
		Transport: &http.Transport{
			DialContext:       kube.DialerIn(client.Path),
			DisableKeepAlives: true, // every request a new connection, so kube-proxy picks anew
		},
	}
	start := time.Now()
	u.deployment("web20", replicas, map[string]string{"app": "web20"})
	var readyAt, answeredAt time.Duration
	seen := map[string]bool{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for readyAt == 0 || answeredAt == 0 {
		if ctx.Err() != nil {
			b.Fatalf("%d pods ready after %v, %d answered through the Service: %v", replicas, readyAt, len(seen), seen)
		}
		if answeredAt == 0 {
			if name, err := get(ctx, hc, url); err == nil && strings.HasPrefix(name, "web20-") {
				seen[name] = true
				if len(seen) == replicas {
					answeredAt = time.Since(start)
				}
			} else {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if readyAt == 0 {
			d, err := u.c.Lab.Kube.Client.AppsV1().Deployments(u.ns).Get(ctx, "web20", metav1.GetOptions{})
			if err == nil && d.Status.ReadyReplicas == replicas {
				readyAt = time.Since(start)
			}
		}
	}
	b.ReportMetric(answeredAt.Seconds(), "20pods-answering-s")
	b.ReportMetric(readyAt.Seconds(), "20pods-ready-s")
	fmt.Printf("  Deployment of %d pods: all Ready after %.1f s, all answering through the Service after %.1f s (ratio %.2f)\n",
		replicas, readyAt.Seconds(), answeredAt.Seconds(), answeredAt.Seconds()/readyAt.Seconds())
}

func get(ctx context.Context, hc *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	return strings.TrimSpace(string(body)), err
}

// deployment creates a Deployment of agnhost netexec pods (HTTP on 8080), ready when they
// answer, spread over the workers by the scheduler.
func (u *user) deployment(name string, replicas int32, labels map[string]string) {
	u.t.Helper()
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: new(int64),
					Containers: []corev1.Container{{
						Name: "agnhost", Image: cluster.AgnhostImage, ImagePullPolicy: corev1.PullNever,
						Args: []string{"netexec", "--http-port=8080"},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
							PeriodSeconds: 1,
						},
					}},
				},
			},
		},
	}
	if _, err := u.c.Lab.Kube.Client.AppsV1().Deployments(u.ns).Create(context.Background(), d, metav1.CreateOptions{}); err != nil {
		u.t.Fatal(err)
	}
}

// podNetNS is the network namespace of a running pod's container, found through its process
// in the node's containerd.
func (u *user) podNetNS(name string) *lab.NetNS {
	u.t.Helper()
	p, err := u.c.Lab.Kube.Client.CoreV1().Pods(u.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		u.t.Fatal(err)
	}
	if len(p.Status.ContainerStatuses) == 0 {
		u.t.Fatalf("pod %s has no container status", name)
	}
	id := strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
	for _, k := range u.c.Kubelets {
		if k.Node.Name != p.Spec.NodeName {
			continue
		}
		out, err := k.Ctr("tasks", "ls")
		if err != nil {
			u.t.Fatal(err)
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == id {
				if _, err := strconv.Atoi(f[1]); err == nil {
					return &lab.NetNS{Name: u.ns + "/" + name, Path: "/proc/" + f[1] + "/ns/net"}
				}
			}
		}
	}
	u.t.Fatalf("no task of pod %s (container %s) on %s", name, id, p.Spec.NodeName)
	return nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianF(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func gbits(v []float64) string {
	var parts []string
	for _, x := range v {
		parts = append(parts, fmt.Sprintf("%.1f", x/1e9))
	}
	return fmt.Sprintf("%.2f Gbit/s (%s)", medianF(v)/1e9, strings.Join(parts, " "))
}

func floats(v []float64) string {
	var parts []string
	for _, x := range v {
		parts = append(parts, fmt.Sprintf("%.1f", x))
	}
	return fmt.Sprintf("%.1f (%s)", medianF(v), strings.Join(parts, " "))
}
