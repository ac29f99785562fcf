package bgp

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/server"
	"k8s.io/apimachinery/pkg/util/wait"
)

// GoBGP keeps route-selection settings in package variables that StartBgp writes, so a
// speaker restarted while another runs in the same process would race with it. The
// restarting speaker therefore runs in a child process (this test binary), which also
// lets the test kill it for real.

const helperEnv = "PODROUTE_BGP_TEST_SPEAKER"

type helperSpec struct {
	IP, PeerIP string
	Port       uint16
	Restarting bool
	Prefixes   []string
}

// helperSpeaker is the child process (see TestMain): it runs one speaker until SIGTERM
// (graceful stop for a restart) or SIGKILL.
func helperSpeaker(t fataler, raw string) {
	var spec helperSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		t.Fatal(err)
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	ctx := context.Background()
	r, err := New(Config{
		ASN: testASN, RouterID: addr(spec.IP), ListenAddresses: []netip.Addr{addr(spec.IP)},
		ListenPort: int32(spec.Port), ImportFilter: clusterFilter, Restarting: spec.Restarting,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range spec.Prefixes {
		if err := r.Advertise(ctx, pfx(p), Attributes{}); err != nil {
			t.Fatal(err)
		}
	}
	err = r.AddNeighbor(ctx, Neighbor{
		Address: addr(spec.PeerIP), ASN: testASN, LocalAddress: addr(spec.IP), Port: spec.Port,
		HoldTime: 3 * time.Second, KeepaliveTime: time.Second, ConnectRetry: time.Second,
		GracefulRestart: true, RestartTime: 60 * time.Second, Kind: KindMesh,
	})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	pollCtx, stopPoll := context.WithCancel(ctx)
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		err := wait.PollUntilContextCancel(pollCtx, 100*time.Millisecond, false, func(ctx context.Context) (bool, error) {
			ok, _ := r.Synced(ctx)
			return ok, nil
		})
		if err == nil {
			fmt.Println("synced")
		}
	}()
	<-term
	stopPoll()
	<-polled
	if err := r.Stop(true); err != nil {
		fmt.Fprintln(os.Stderr, "graceful stop:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

type child struct {
	cmd   *exec.Cmd
	lines chan string
}

func spawnSpeaker(t *testing.T, spec helperSpec) *child {
	t.Helper()
	raw, _ := json.Marshal(spec)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(raw))
	if testing.Verbose() && os.Getenv("BGP_TEST_LOG") != "" {
		cmd.Stderr = os.Stderr
	}
	return startChild(t, cmd)
}

// startChild starts cmd, passes its output lines to child.lines and kills it at the end
// of the test.
func startChild(t *testing.T, cmd *exec.Cmd) *child {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return c
}

func (c *child) await(t *testing.T, line string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatalf("speaker process ended before %q", line)
			}
			if l == line {
				return
			}
		case <-deadline:
			t.Fatalf("speaker process did not report %q within %s", line, timeout)
		}
	}
}

func TestGracefulRestart(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	b := startSpeaker(t, "127.0.7.2", port, nil)
	aIP := addr("127.0.7.1")
	n := Neighbor{
		Address: aIP, ASN: testASN, LocalAddress: b.ip, Port: port,
		HoldTime: 3 * time.Second, KeepaliveTime: time.Second, ConnectRetry: time.Second,
		GracefulRestart: true, RestartTime: 60 * time.Second, Kind: KindMesh,
	}
	if err := b.AddNeighbor(ctx, n); err != nil {
		t.Fatal(err)
	}
	kept, dropped := pfx("10.244.71.0/24"), pfx("10.244.72.0/24")

	// First start (not restarting): advertised within seconds, no deferral.
	started := time.Now()
	a1 := spawnSpeaker(t, helperSpec{IP: aIP.String(), PeerIP: b.ip.String(), Port: port, Prefixes: []string{kept.String(), dropped.String()}})
	a1.await(t, "ready", 20*time.Second)
	eventually(t, 15*time.Second, func() string {
		for _, p := range []netip.Prefix{kept, dropped} {
			if _, ok := b.route(t, p); !ok {
				return "initial routes missing on B"
			}
		}
		return ""
	})
	if d := time.Since(started); d > 10*time.Second {
		t.Errorf("first start took %s to advertise", d)
	}
	a1.await(t, "synced", 10*time.Second)
	eventually(t, 5*time.Second, func() string {
		if ok, err := b.Synced(ctx); err != nil || !ok {
			return fmt.Sprintf("B not synced: %v", err)
		}
		return ""
	})

	// B's table must never lose A's routes. GoBGP mutates state shared with listed
	// paths while a peer goes down or reconnects (data races inside GoBGP with a
	// concurrent ListPath), so the poller uses GetTable, which counts inside GoBGP's
	// event loop, and B's routes are only listed once the session state is known.
	// A's routes are B's only routes, so a drop of the stale routes empties the table.
	srv := b.Router.(*router).srv
	var gaps atomic.Int32
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait.Until(func() {
			tbl, err := srv.GetTable(ctx, &api.GetTableRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: familyIPv4})
			if err != nil || tbl.NumDestination == 0 {
				gaps.Add(1)
			}
		}, 20*time.Millisecond, stop)
	}()
	defer func() { close(stop); <-done }()

	// peerView reads B's session with A through ListPeer alone: Neighbors also lists
	// paths, which could run into the races above while the session changes.
	peerView := func() (string, bool) {
		var st PeerState
		_ = srv.ListPeer(ctx, &api.ListPeerRequest{Address: aIP.String()}, func(p *api.Peer) { fillPeerState(&st, p) })
		return st.State, st.PeerRestarting
	}
	staleOnB := func() string {
		if state, restarting := peerView(); !restarting || state == StateEstablished {
			return fmt.Sprintf("B's view of A: %s, restarting %v", state, restarting)
		}
		r, ok := b.route(t, kept)
		if !ok || !r.Paths[0].Stale {
			return fmt.Sprintf("route %+v not stale on B", r)
		}
		return ""
	}

	// Graceful stop for a restart: sessions cut without NOTIFICATION.
	if err := a1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := a1.cmd.Wait(); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
	eventually(t, 10*time.Second, staleOnB)

	// The agent comes back restarting and advertises only one of the two prefixes.
	restarted := time.Now()
	a2 := spawnSpeaker(t, helperSpec{IP: aIP.String(), PeerIP: b.ip.String(), Port: port, Restarting: true, Prefixes: []string{kept.String()}})
	a2.await(t, "ready", 20*time.Second)
	// B holds a dropped session idle for 5s (GoBGP), so the session needs a few seconds
	// to come back; once it is up, advertising must not wait for a deferral timer.
	eventually(t, 25*time.Second, func() string {
		if state, _ := peerView(); state != StateEstablished {
			return "session with A is " + state
		}
		return ""
	})
	up := time.Now()
	eventually(t, 10*time.Second, func() string {
		r, ok := b.route(t, kept)
		if !ok || r.Paths[0].Stale {
			return fmt.Sprintf("kept route %+v not refreshed", r)
		}
		if _, ok := b.route(t, dropped); ok {
			return "stale route not swept after End-of-RIB"
		}
		return ""
	})
	if d := time.Since(up); d > 3*time.Second {
		t.Errorf("restarted speaker took %s after session up to re-advertise (deferral?)", d)
	}
	a2.await(t, "synced", 10*time.Second)
	t.Logf("restart to refreshed routes: %s", time.Since(restarted))

	// A crash (SIGKILL) also leaves the routes in place, stale.
	if err := a2.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = a2.cmd.Wait()
	eventually(t, 10*time.Second, staleOnB)

	if n := gaps.Load(); n != 0 {
		t.Errorf("B's table was empty %d times during the restarts", n)
	}
	if len(b.Refusals()) != 0 {
		t.Errorf("unexpected refusals: %+v", b.Refusals())
	}
}

// TestGracefulStopKeepsReflectedRoutes stops a route reflector for a restart: its clients
// must keep the routes it reflected (stale), with no withdrawal first. GoBGP's own graceful
// StopBgp deconfigures the clients one by one and would withdraw each one's routes from
// the clients still connected.
func TestGracefulStopKeepsReflectedRoutes(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	rr := startSpeaker(t, "127.0.8.1", port, nil)
	clients := []*speaker{startSpeaker(t, "127.0.8.2", port, nil), startSpeaker(t, "127.0.8.3", port, nil), startSpeaker(t, "127.0.8.4", port, nil)}
	prefixes := []netip.Prefix{pfx("10.244.82.0/24"), pfx("10.244.83.0/24"), pfx("10.244.84.0/24")}
	gr := func(n *Neighbor) { n.GracefulRestart, n.RestartTime = true, 60*time.Second }

	var withdrawals atomic.Int32
	for i, c := range clients {
		toClient, toRR := rr.neighborOf(c), c.neighborOf(rr)
		gr(&toClient)
		gr(&toRR)
		toClient.Kind, toClient.RouteReflectorClient = KindReflectorClient, true
		toRR.Kind = KindReflector
		if err := rr.AddNeighbor(ctx, toClient); err != nil {
			t.Fatal(err)
		}
		if err := c.AddNeighbor(ctx, toRR); err != nil {
			t.Fatal(err)
		}
		if err := c.Advertise(ctx, prefixes[i], Attributes{}); err != nil {
			t.Fatal(err)
		}
		// Any withdrawal the reflector sends is seen as it arrives, before import policy.
		err := c.Router.(*router).srv.WatchEvent(t.Context(), server.WatchEventMessageCallbacks{
			OnPathUpdate: func(ps []*apiutil.Path, _ time.Time) {
				for _, p := range ps {
					if p.Withdrawal {
						withdrawals.Add(1)
					}
				}
			},
		}, server.WatchUpdate(false, "", ""))
		if err != nil {
			t.Fatal(err)
		}
	}
	learnedAll := func(stale bool) string {
		for i, c := range clients {
			for j, p := range prefixes {
				if i == j {
					continue
				}
				r, ok := c.route(t, p)
				if !ok {
					return fmt.Sprintf("%s lacks %s", c.ip, p)
				}
				if r.Paths[0].Stale != stale {
					return fmt.Sprintf("%s: %s stale %v, want %v", c.ip, p, r.Paths[0].Stale, stale)
				}
			}
		}
		return ""
	}
	eventually(t, 15*time.Second, func() string { return learnedAll(false) })

	if err := rr.Stop(true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() string { return learnedAll(true) })
	if n := withdrawals.Load(); n != 0 {
		t.Errorf("clients received %d withdrawals from the reflector stopping for a restart", n)
	}
}
