package cni_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podroute/podroute/cni"
	"github.com/podroute/podroute/test/cniutil"
)

// TestAdd: for IPv4-only, IPv6-only and dual-stack networks, two pods get an address per
// family, wired as podroute promises (see assertWired), and can be reached from the node and
// from each other by ICMP and TCP.
func TestAdd(t *testing.T) {
	for _, tc := range []struct {
		name       string
		ranges     [][]cniutil.Range
		wantV4, v6 bool
	}{
		{"ipv4", [][]cniutil.Range{cniutil.V4}, true, false},
		{"ipv6", [][]cniutil.Range{cniutil.V6}, false, true},
		{"dual", [][]cniutil.Range{cniutil.V4, cniutil.V6}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, tc.ranges)
			a, b := e.node.NewPod(t), e.node.NewPod(t)
			resA, resB := e.add(t, a), e.add(t, b)
			e.assertWired(t, a, resA, tc.wantV4, tc.v6)
			e.assertWired(t, b, resB, tc.wantV4, tc.v6)
			if t.Failed() {
				t.FailNow()
			}
			if got := len(e.reservations(t)); got != 2*len(tc.ranges) {
				t.Errorf("IPAM store holds %d reservations, want %d", got, 2*len(tc.ranges))
			}
			ipsB := podIPs(resB)
			assertPings(t, map[string]*cniutil.Pod{"pod a": a}, e.node, ipsB)
			assertPings(t, map[string]*cniutil.Pod{"pod b": b}, e.node, podIPs(resA))
			for _, ip := range ipsB {
				if err := cniutil.TCPExchange(a.NS, b.NS, ip, pingTimeout); err != nil {
					t.Errorf("pod a -> pod b: %v", err)
				}
			}
		})
	}
}

// TestAddIdempotent: a second ADD of the same container and interface returns the same
// addresses and leaves one working attachment, not two.
func TestAddIdempotent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, [][]cniutil.Range{cniutil.V4, cniutil.V6})
	p := e.node.NewPod(t)
	first := e.add(t, p)
	second := e.add(t, p)
	if !slices.EqualFunc(podIPs(first), podIPs(second), net.IP.Equal) {
		t.Fatalf("second ADD returned %v, first %v", podIPs(second), podIPs(first))
	}
	e.assertWired(t, p, second, true, true)
	if got := len(e.reservations(t)); got != 2 {
		t.Errorf("IPAM store holds %d reservations after two ADDs of one attachment, want 2", got)
	}
	if names, _ := cniutil.LinkNames(e.node.NS, "pr"); len(names) != 1 {
		t.Errorf("host veths %v, want exactly one", names)
	}
	assertPings(t, nil, e.node, podIPs(second))
}

// TestDel: DEL removes the host veth, the host routes and the reservations; DEL again, DEL
// after the pod's netns is gone and DEL of a container podroute never saw all succeed.
func TestDel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, [][]cniutil.Range{cniutil.V4, cniutil.V6})
	ctx := context.Background()

	t.Run("cleanup", func(t *testing.T) {
		p := e.node.NewPod(t)
		res := e.add(t, p)
		e.del(t, p)
		e.assertGone(t, p, podIPs(res))
		e.assertClean(t)
		if err := e.node.DelPod(ctx, e.list, p); err != nil {
			t.Errorf("second DEL: %v", err)
		}
	})

	t.Run("netns gone", func(t *testing.T) {
		p := cniutil.NewPodNS(t)
		res := e.add(t, p)
		if err := p.Destroy(); err != nil {
			t.Fatal(err)
		}
		// The namespace dies with its last reference; its veth end, and so the host end, with it.
		waitFor(t, 5*time.Second, "host veth to disappear with the pod netns", func() bool {
			l, err := cniutil.Link(e.node.NS, p.HostVeth())
			return err == nil && l == nil
		})
		if err := e.node.DelPod(ctx, e.list, p); err != nil {
			t.Fatalf("DEL with a netns that no longer exists: %v", err)
		}
		e.assertGone(t, p, podIPs(res))
		e.assertClean(t)
	})

	t.Run("unknown container", func(t *testing.T) {
		p := e.node.NewPod(t)
		if err := e.node.DelPod(ctx, e.list, p); err != nil {
			t.Errorf("DEL of a container never added: %v", err)
		}
		rt := p.RuntimeConf()
		rt.NetNS = ""
		if err := e.node.Del(ctx, e.list, rt); err != nil {
			t.Errorf("DEL of a container never added, without CNI_NETNS: %v", err)
		}
		e.assertClean(t)
	})
}

// TestGC: GC with one of three attachments listed as valid removes the other two's veths,
// routes and reservations, and leaves the listed one working.
func TestGC(t *testing.T) {
	t.Parallel()
	e := newEnv(t, [][]cniutil.Range{cniutil.V4, cniutil.V6})
	pods := []*cniutil.Pod{e.node.NewPod(t), e.node.NewPod(t), e.node.NewPod(t)}
	var results []*current.Result
	for _, p := range pods {
		results = append(results, e.add(t, p))
	}
	if err := e.node.GC(context.Background(), e.list, []types.GCAttachment{pods[0].Attachment()}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	for i := 1; i < 3; i++ {
		e.assertGone(t, pods[i], podIPs(results[i]))
	}
	e.assertWired(t, pods[0], results[0], true, true)
	if got := e.reservations(t); len(got) != 2 {
		t.Errorf("reservations after GC: %v, want only pod 0's two", got)
	}
	assertPings(t, nil, e.node, podIPs(results[0]))

	// And GC with nothing valid clears the node.
	if err := e.node.GC(context.Background(), e.list, nil); err != nil {
		t.Fatalf("GC with no valid attachment: %v", err)
	}
	e.assertClean(t)
}

// TestConcurrentAdd: 100 pods added at once all succeed with distinct addresses, then 100
// DELs at once leave nothing behind.
func TestConcurrentAdd(t *testing.T) {
	const n = 100
	e := newEnv(t, [][]cniutil.Range{cniutil.V4, cniutil.V6})
	pods := make([]*cniutil.Pod, n)
	for i := range pods {
		pods[i] = e.node.NewPod(t)
	}
	results := make([]*current.Result, n)
	errs := make([]error, n)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	parallel(n, func(i int) { results[i], errs[i] = e.node.AddPod(ctx, e.list, pods[i]) })
	seen := map[string]int{}
	for i := range pods {
		if errs[i] != nil {
			t.Errorf("ADD pod %d: %v", i, errs[i])
			continue
		}
		for _, ip := range podIPs(results[i]) {
			if j, dup := seen[ip.String()]; dup {
				t.Errorf("pods %d and %d both got %s", j, i, ip)
			}
			seen[ip.String()] = i
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	if len(seen) != 2*n {
		t.Errorf("%d distinct addresses, want %d", len(seen), 2*n)
	}
	if names, _ := cniutil.LinkNames(e.node.NS, "pr"); len(names) != n {
		t.Errorf("%d host veths, want %d", len(names), n)
	}
	if got := len(e.reservations(t)); got != 2*n {
		t.Errorf("%d reservations, want %d", got, 2*n)
	}
	// Spot-check the datapath of the first and last pods.
	e.assertWired(t, pods[0], results[0], true, true)
	e.assertWired(t, pods[n-1], results[n-1], true, true)
	assertPings(t, map[string]*cniutil.Pod{"pod 0": pods[0]}, e.node, podIPs(results[n-1]))

	parallel(n, func(i int) { errs[i] = e.node.DelPod(ctx, e.list, pods[i]) })
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL pod %d: %v", i, err)
		}
	}
	e.assertClean(t)
}

// TestAddReturnsUsableAddresses: when ADD returns, the pod's addresses are already usable, so a
// packet that reaches the pod right away is delivered rather than dropped. The kernel marks an
// address usable by adding its local route; for IPv6 it does so from its addrconf work queue,
// even for an address added without duplicate address detection, so ADD has to wait for it.
// The check runs the instant each ADD returns, with 16 ADDs in flight, when that queue is
// busiest.
func TestAddReturnsUsableAddresses(t *testing.T) {
	const n, inFlight = 48, 16
	e := newEnv(t, [][]cniutil.Range{cniutil.V4, cniutil.V6})
	pods := make([]*cniutil.Pod, n)
	for i := range pods {
		pods[i] = e.node.NewPod(t)
	}
	problems := make([][]string, n)
	sem := make(chan struct{}, inFlight)
	parallel(n, func(i int) {
		sem <- struct{}{}
		defer func() { <-sem }()
		res, err := e.node.AddPod(context.Background(), e.list, pods[i])
		if err != nil {
			problems[i] = append(problems[i], "ADD: "+err.Error())
			return
		}
		for _, ip := range podIPs(res) {
			ok, err := cniutil.HasLocalRoute(pods[i].NS, ip)
			if err != nil || !ok {
				problems[i] = append(problems[i], fmt.Sprintf("%s not yet usable in the pod when ADD returned (no local route; %v)", ip, err))
			}
		}
	})
	var bad int
	for i, p := range problems {
		if len(p) > 0 {
			bad++
			t.Errorf("pod %d: %s", i, strings.Join(p, "; "))
		}
	}
	if bad > 0 {
		t.Logf("%d of %d pods had an address that was not usable yet when ADD returned", bad, n)
	}
}

// TestHostVethNaming: the host veth is named after the pod (namespace and name from CNI_ARGS),
// after the container ID when CNI_ARGS lacks them, and a second interface of the same pod gets
// a name of its own; the test's statement of the rule agrees with the plugin's
// cni.HostVethName.
func TestHostVethNaming(t *testing.T) {
	t.Parallel()
	for _, c := range [][4]string{
		{"default", "web-0", cniutil.RandomID(), "eth0"},
		{"kube-system", "coredns-7db6d8ff4d-abcde", cniutil.RandomID(), "net1"},
		{"", "", cniutil.RandomID(), "eth0"},
		{"default", "", cniutil.RandomID(), "eth0"},
	} {
		want := cni.HostVethName(c[0], c[1], c[2], c[3])
		if got := cniutil.HostVethName(c[0], c[1], c[2], c[3]); got != want || len(got) > 15 {
			t.Errorf("HostVethName%q: test helper says %q, plugin says %q", c, got, want)
		}
	}

	e := newEnv(t, [][]cniutil.Range{cniutil.V4})
	anon := e.node.NewPod(t)
	anon.Namespace, anon.Name = "", ""
	e.assertWired(t, anon, e.add(t, anon), true, false)
	if want := cniutil.HostVethName("", "", anon.ContainerID, "eth0"); anon.HostVeth() != want {
		t.Fatalf("helper inconsistency: %s != %s", anon.HostVeth(), want)
	}

	// Two interfaces in one pod: eth0 and net1 on the same network.
	p := e.node.NewPod(t)
	res0 := e.add(t, p)
	second := p.Interface("net1")
	res1 := e.add(t, second)
	if p.HostVeth() == second.HostVeth() {
		t.Fatalf("eth0 and net1 of one pod share the host veth name %s", p.HostVeth())
	}
	// The pod's own routes are the last ADD's to set them; the node's side is per interface.
	e.assertHostSide(t, p, podIPs(res0), false)
	e.assertHostSide(t, second, podIPs(res1), false)
	e.del(t, second)
	e.assertGone(t, second, podIPs(res1))
	e.assertHostSide(t, p, podIPs(res0), false)
}

// TestHostVethBornInGroup: the kernel announces the host veth in its interface group from
// its very first RTM_NEWLINK, so there is no moment at which it exists outside the group the
// NetworkPolicy hold matches (a group set after creation would show a first message with
// group 0).
func TestHostVethBornInGroup(t *testing.T) {
	t.Parallel()
	e := newEnv(t, [][]cniutil.Range{cniutil.V4})
	h, err := netns.GetFromPath(e.node.NS.Path())
	if err != nil {
		t.Fatalf("node netns handle: %v", err)
	}
	defer h.Close()
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.LinkSubscribeAt(h, updates, done); err != nil {
		t.Fatalf("subscribe to the node's link updates: %v", err)
	}
	p := e.node.NewPod(t)
	e.add(t, p)

	var seen []string
	timeout := time.After(5 * time.Second)
	for {
		select {
		case u := <-updates:
			a := u.Attrs()
			if a.Name != p.HostVeth() {
				continue
			}
			seen = append(seen, fmt.Sprintf("type %d group %d", u.Header.Type, a.Group))
			if u.Header.Type != unix.RTM_NEWLINK {
				t.Fatalf("first message about host veth %s: %v, want an RTM_NEWLINK", p.HostVeth(), seen)
			}
			if a.Group != hostGroup {
				t.Fatalf("host veth %s first announced in group %d, want %d (messages: %v)", p.HostVeth(), a.Group, hostGroup, seen)
			}
			return
		case <-timeout:
			t.Fatalf("no RTM_NEWLINK for host veth %s within 5s", p.HostVeth())
		}
	}
}
