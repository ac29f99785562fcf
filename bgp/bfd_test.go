package bgp

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/apimachinery/pkg/util/wait"
)

// GoBGP's BFD listens on UDP port 3784 of every address and tells sessions apart by the
// peer's address alone, so two speakers need a network namespace each. Each runs in a
// child process (this test binary) started in a new network namespace; the test joins
// the two with a veth pair and reads the children's session states from their output.

const bfdHelperEnv = "PODROUTE_BGP_TEST_BFD_SPEAKER"

type bfdHelperSpec struct {
	Link   string
	IP     string // with prefix length
	PeerIP string
	BFD    *BFDConfig
}

// helperBFDSpeaker is the child process (see TestMain): it configures its end of the veth,
// runs one speaker peered with the other end and prints "state <unix ns> <BGP state> <BFD
// state>" whenever the session's state changes, until it is killed.
func helperBFDSpeaker(t fataler, raw string) {
	var spec bfdHelperSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParsePrefix(spec.IP)
	if err := bringUp(spec.Link, ip); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r, err := New(Config{
		ASN: testASN, RouterID: ip.Addr(), ListenAddresses: []netip.Addr{ip.Addr()},
		ImportFilter: clusterFilter, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	err = r.AddNeighbor(ctx, Neighbor{
		Address: addr(spec.PeerIP), ASN: testASN, LocalAddress: ip.Addr(),
		HoldTime: 3 * time.Second, KeepaliveTime: time.Second, ConnectRetry: time.Second,
		Kind: KindMesh, BFD: spec.BFD,
	})
	if err != nil {
		t.Fatal(err)
	}
	last := ""
	for {
		ps, err := r.Neighbors(ctx, true)
		if err != nil || len(ps) != 1 {
			t.Fatalf("neighbors: %v %+v", err, ps)
		}
		bfd := ps[0].BFDState
		if bfd == "" {
			bfd = "-"
		}
		if s := ps[0].State + " " + bfd; s != last {
			fmt.Printf("state %d %s\n", time.Now().UnixNano(), s)
			last = s
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// bringUp waits for the veth end the test moves into this namespace, then addresses it
// and brings it and the loopback up.
func bringUp(name string, ip netip.Prefix) error {
	var link netlink.Link
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		l, err := netlink.LinkByName(name)
		link = l
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("link %s never appeared: %w", name, err)
	}
	a, err := netlink.ParseAddr(ip.String())
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(link, a); err != nil {
		return fmt.Errorf("address %s: %w", ip, err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	for _, l := range []netlink.Link{lo, link} {
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("up %s: %w", l.Attrs().Name, err)
		}
	}
	return nil
}

// bfdChild is a speaker process in a network namespace of its own.
type bfdChild struct {
	*child
}

func spawnBFDSpeaker(t *testing.T, spec bfdHelperSpec) *bfdChild {
	t.Helper()
	raw, _ := json.Marshal(spec)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), bfdHelperEnv+"="+string(raw))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if testing.Verbose() && os.Getenv("BGP_TEST_LOG") != "" {
		cmd.Stderr = os.Stderr
	}
	return &bfdChild{startChild(t, cmd)}
}

// awaitState waits for a state line whose BGP and BFD states ("-": none) match and returns
// its time and BFD state.
func (c *bfdChild) awaitState(t *testing.T, match func(bgpState, bfdState string) bool, timeout time.Duration) (time.Time, string) {
	t.Helper()
	deadline := time.After(timeout)
	last := ""
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatalf("speaker process ended (last state %q)", last)
			}
			f := strings.Fields(l)
			if len(f) != 4 || f[0] != "state" {
				continue
			}
			last = l
			if match(f[2], f[3]) {
				ns, err := strconv.ParseInt(f[1], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return time.Unix(0, ns), f[3]
			}
		case <-deadline:
			t.Fatalf("state not reached within %s (last %q)", timeout, last)
		}
	}
}

// bfdPair starts two speakers in namespaces joined by a veth pair, with bfd on both
// sides, and waits for their session (and BFD session, if any) to come up.
func bfdPair(t *testing.T, bfd *BFDConfig) (a, b *bfdChild) {
	cfgA := bfdHelperSpec{Link: "bfd-a", IP: "192.0.2.1/24", PeerIP: "192.0.2.2", BFD: bfd}
	cfgB := bfdHelperSpec{Link: "bfd-b", IP: "192.0.2.2/24", PeerIP: "192.0.2.1", BFD: bfd}
	a, b = spawnBFDSpeaker(t, cfgA), spawnBFDSpeaker(t, cfgB)
	// The veth is made in the test's namespace under unique names, then each end moves
	// to its speaker's namespace, where it is renamed.
	tag := strconv.Itoa(os.Getpid() % 100000)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "prbfd" + tag + "a"}, PeerName: "prbfd" + tag + "b"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, end := range []struct {
		name, rename string
		c            *bfdChild
	}{{veth.Name, cfgA.Link, a}, {veth.PeerName, cfgB.Link, b}} {
		l, err := netlink.LinkByName(end.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetName(l, end.rename); err != nil {
			_ = netlink.LinkDel(l)
			t.Fatal(err)
		}
		if err := netlink.LinkSetNsPid(l, end.c.cmd.Process.Pid); err != nil {
			_ = netlink.LinkDel(l)
			t.Fatal(err)
		}
	}
	want := "-"
	if bfd != nil {
		want = BFDStateUp
	}
	for _, c := range []*bfdChild{a, b} {
		c.awaitState(t, func(bgp, bfd string) bool { return bgp == StateEstablished && bfd == want }, 30*time.Second)
	}
	return a, b
}

// TestBFD shows that BFD brings the BGP session down within the detection time when the
// peer dies without closing its connection (its process frozen), where BGP alone waits
// for the hold time.
func TestBFD(t *testing.T) {
	// 300ms detection: tighter timers flap when the machine is loaded.
	bfd := &BFDConfig{MinTx: 100 * time.Millisecond, MinRx: 100 * time.Millisecond, Multiplier: 3}
	t.Run("WithBFD", func(t *testing.T) {
		a, b := bfdPair(t, bfd)
		if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		frozen := time.Now()
		down, bfdState := b.awaitState(t, func(bgp, _ string) bool { return bgp != StateEstablished }, 5*time.Second)
		took := down.Sub(frozen)
		if bfdState != BFDStateDown {
			b.awaitState(t, func(_, bfd string) bool { return bfd == BFDStateDown }, 5*time.Second)
		}
		t.Logf("BFD %s x %d: session down %s after the peer froze (hold time 3s)", bfd.MinRx, bfd.Multiplier, took)
		if took >= time.Second {
			t.Errorf("session went down %s after the peer froze, want < 1s", took)
		}
	})
	t.Run("WithoutBFD", func(t *testing.T) {
		a, b := bfdPair(t, nil)
		if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		frozen := time.Now()
		// Only the hold timer notices: the session stays up for well over a second.
		select {
		case l := <-b.lines:
			if !strings.Contains(l, StateEstablished) {
				t.Fatalf("session changed %s after the peer froze without BFD: %q", time.Since(frozen), l)
			}
		case <-time.After(1500 * time.Millisecond):
		}
		down, _ := b.awaitState(t, func(bgp, _ string) bool { return bgp != StateEstablished }, 10*time.Second)
		t.Logf("without BFD: session down %s after the peer froze (hold time 3s)", down.Sub(frozen))
	})
}
