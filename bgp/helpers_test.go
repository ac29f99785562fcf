//go:debug multipathtcp=0

package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

const testASN = 65000

var clusterFilter = ImportFilter{
	ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd10:244::/48")},
	MaxLenIPv4:   24,
	MaxLenIPv6:   64,
}

// freePort finds a TCP port free on the loopback; every speaker of a test listens on
// it, each on its own 127.0.0.x address.
func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// recordHandler keeps log records for assertions and echoes them with -v.
type recordHandler struct {
	mu      *sync.Mutex
	records *[]slog.Record
	attrs   []slog.Attr
	t       *testing.T
}

func newRecordHandler(t *testing.T) *recordHandler {
	return &recordHandler{mu: &sync.Mutex{}, records: &[]slog.Record{}, t: t}
}

func (h *recordHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	r = r.Clone()
	r.AddAttrs(h.attrs...)
	*h.records = append(*h.records, r)
	if testing.Verbose() && os.Getenv("BGP_TEST_LOG") != "" {
		var b strings.Builder
		r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
		h.t.Logf("%s %s %s%s", r.Time.Format("15:04:05.000"), r.Level, r.Message, b.String())
	}
	return nil
}
func (h *recordHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	return &c
}
func (h *recordHandler) WithGroup(string) slog.Handler { return h }

// count returns how many records have msg and, for each key=value in kv, that attribute.
func (h *recordHandler) count(msg string, kv ...string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range *h.records {
		if r.Message != msg {
			continue
		}
		got := map[string]string{}
		r.Attrs(func(a slog.Attr) bool { got[a.Key] = a.Value.String(); return true })
		ok := true
		for i := 0; i+1 < len(kv); i += 2 {
			if got[kv[i]] != kv[i+1] {
				ok = false
			}
		}
		if ok {
			n++
		}
	}
	return n
}

type speaker struct {
	Router
	ip   netip.Addr
	port uint16
	logs *recordHandler
}

// startSpeaker starts a router on ip:port with the cluster filter; mod adjusts Config.
func startSpeaker(t *testing.T, ip string, port uint16, mod func(*Config)) *speaker {
	t.Helper()
	h := newRecordHandler(t)
	cfg := Config{
		ASN:             testASN,
		RouterID:        addr(ip),
		ListenAddresses: []netip.Addr{addr(ip)},
		ListenPort:      int32(port),
		ImportFilter:    clusterFilter,
		Logger:          slog.New(h).With("speaker", ip),
	}
	if mod != nil {
		mod(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := &speaker{Router: r, ip: addr(ip), port: port, logs: h}
	t.Cleanup(func() { _ = r.Stop(false) })
	return s
}

// neighborOf is the neighbor config for peering from s to other, with fast timers.
func (s *speaker) neighborOf(other *speaker) Neighbor {
	return Neighbor{
		Address:       other.ip,
		ASN:           testASN,
		LocalAddress:  s.ip,
		Port:          other.port,
		HoldTime:      3 * time.Second,
		KeepaliveTime: time.Second,
		ConnectRetry:  time.Second,
		Kind:          KindMesh,
	}
}

func peer(t *testing.T, a, b *speaker, mod func(*Neighbor)) {
	t.Helper()
	na, nb := a.neighborOf(b), b.neighborOf(a)
	if mod != nil {
		mod(&na)
		mod(&nb)
	}
	if err := a.AddNeighbor(context.Background(), na); err != nil {
		t.Fatal(err)
	}
	if err := b.AddNeighbor(context.Background(), nb); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it returns "" or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, cond func() string) {
	t.Helper()
	last := ""
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		last = cond()
		return last == "", nil
	})
	if err != nil {
		t.Fatalf("condition not met within %s: %s", timeout, last)
	}
}

func (s *speaker) established(t *testing.T, other netip.Addr) string {
	ps, err := s.Neighbors(context.Background(), true)
	if err != nil {
		return err.Error()
	}
	for _, p := range ps {
		if p.Address == other {
			if p.State == StateEstablished {
				return ""
			}
			return fmt.Sprintf("%s: session with %s is %s", s.ip, other, p.State)
		}
	}
	return fmt.Sprintf("%s: %s not a neighbor", s.ip, other)
}

func (s *speaker) route(t *testing.T, p netip.Prefix) (Route, bool) {
	t.Helper()
	rs, err := s.Routes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Prefix == p {
			return r, true
		}
	}
	return Route{}, false
}
