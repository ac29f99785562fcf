package ipam

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestAllocateIPv4(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/29","gateway":"10.0.0.1"}]]}`)
	first := mustAllocate(t, a, att(1))
	if !reflect.DeepEqual(first.IPs, []netip.Prefix{mustPrefix("10.0.0.2/29")}) || first.Attachment != att(1) {
		t.Fatalf("first allocation = %+v", first)
	}
	got := allocateAll(t, a, 10)
	// .0 network, .1 gateway, .7 broadcast are never handed out.
	if want := []string{"10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}; !slices.Equal(got, want) {
		t.Errorf("allocated %v, want %v", got, want)
	}
	_, err := a.Allocate(att(2))
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "no free address in ipam.ranges[0] (10.0.0.0/29)") {
		t.Errorf("exhausted pool: %v", err)
	}
}

func TestAllocateIPv6(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"fd00:10::/125"}]]}`)
	got := allocateAll(t, a, 10)
	// fd00:10:: is the subnet-router anycast address; IPv6 has no broadcast.
	want := []string{"fd00:10::1", "fd00:10::2", "fd00:10::3", "fd00:10::4", "fd00:10::5", "fd00:10::6", "fd00:10::7"}
	if !slices.Equal(got, want) {
		t.Errorf("allocated %v, want %v", got, want)
	}
	al, ok, err := a.Get(att(1000))
	if err != nil || !ok || al.IPs[0] != mustPrefix("fd00:10::1/125") {
		t.Errorf("Get = %v %v %v", al, ok, err)
	}
}

func TestAllocateLargeIPv6IsCheap(t *testing.T) {
	// Exclusions are skipped prefix by prefix, not address by address.
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"fd00::/64"}]],"exclude":["fd00::/65"]}`)
	start := time.Now()
	got := mustAllocate(t, a, att(1))
	if got.IPs[0] != mustPrefix("fd00::8000:0:0:0/64") {
		t.Errorf("got %v", got.IPs)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("allocation took %v", d)
	}
}

func TestAllocateDualStack(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00:1::/64"}]]}`)
	for i := 1; i <= 3; i++ {
		got := mustAllocate(t, a, att(i))
		want := []netip.Prefix{
			netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), 24),
			netip.PrefixFrom(addN(mustAddr("fd00:1::"), i), 64),
		}
		if !reflect.DeepEqual(got.IPs, want) {
			t.Errorf("allocation %d = %v, want %v", i, got.IPs, want)
		}
	}
}

func addN(a netip.Addr, n int) netip.Addr {
	for ; n > 0; n-- {
		a = a.Next()
	}
	return a
}

func TestRangeStartEndRespected(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.10","rangeEnd":"10.0.0.12"}]]}`)
	if got, want := allocateAll(t, a, 10), []string{"10.0.0.10", "10.0.0.11", "10.0.0.12"}; !slices.Equal(got, want) {
		t.Errorf("allocated %v, want %v", got, want)
	}
}

func TestNeverHandsOutReservedAddresses(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/28","gateway":"10.0.0.14"}]],
		"exclude":["10.0.0.0/30","10.0.0.9","10.0.0.2"]}`)
	got := allocateAll(t, a, 20)
	want := []string{"10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8", "10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.13"}
	if !slices.Equal(got, want) {
		t.Errorf("allocated %v, want %v", got, want)
	}
}

func TestRangeSetWithSeveralRanges(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/30"},{"subnet":"10.0.1.0/30"}]]}`)
	got := allocateAll(t, a, 10)
	if want := []string{"10.0.0.1", "10.0.0.2", "10.0.1.1", "10.0.1.2"}; !slices.Equal(got, want) {
		t.Errorf("allocated %v, want %v", got, want)
	}
}

func TestPointToPointSubnetsUseEveryAddress(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/31"},{"subnet":"10.0.0.9/32"}],[{"subnet":"fd00::/127"},{"subnet":"fd00::9/128"}]]}`)
	var got []string
	for i := 0; ; i++ {
		al, err := a.Allocate(att(i))
		if errors.Is(err, ErrExhausted) {
			break
		}
		if err != nil || i > 5 {
			t.Fatalf("allocation %d: %v", i, err)
		}
		got = append(got, al.IPs[0].String(), al.IPs[1].String())
	}
	want := []string{"10.0.0.0/31", "fd00::/127", "10.0.0.1/31", "fd00::1/127", "10.0.0.9/32", "fd00::9/128"}
	if !slices.Equal(got, want) {
		t.Errorf("allocated %v, want %v", got, want)
	}
}

func TestExhaustionReservesNothing(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/126"}]]}`)
	for i := 1; i <= 3; i++ { // fd00::1-3 are the whole IPv6 pool
		mustAllocate(t, a, att(i))
	}
	before, _ := a.List()
	entriesBefore := storeEntries(t, a)
	_, err := a.Allocate(att(4))
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "ipam.ranges[1] (fd00::/126)") {
		t.Fatalf("want exhaustion of ipam.ranges[1], got %v", err)
	}
	after, err := a.List()
	if err != nil || !reflect.DeepEqual(before, after) {
		t.Errorf("store changed by failed allocation:\n%v\n%v (%v)", before, after, err)
	}
	if _, ok, _ := a.Get(att(4)); ok {
		t.Error("failed allocation left a reservation")
	}
	if e := storeEntries(t, a); !slices.Equal(entriesBefore, e) {
		t.Errorf("entries %v, want %v", e, entriesBefore)
	}
	// The IPv4 cursor did not move either: the next IPv4 address is .4.
	if err := a.Release(att(3)); err != nil {
		t.Fatal(err)
	}
	if got := mustAllocate(t, a, att(5)); got.IPs[0] != mustPrefix("10.0.0.4/24") {
		t.Errorf("after rollback got %v, want 10.0.0.4", got.IPs)
	}
}

func TestAllocateIdempotent(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/64"}]]}`)
	first := mustAllocate(t, a, att(1))
	mustAllocate(t, a, att(2))
	again := mustAllocate(t, a, att(1))
	if !reflect.DeepEqual(first, again) {
		t.Errorf("second Allocate = %v, want %v", again, first)
	}
	if list, _ := a.List(); len(list) != 2 {
		t.Errorf("list = %v", list)
	}
	// Same container, other interface: a different attachment.
	other := mustAllocate(t, a, Attachment{ContainerID: att(1).ContainerID, IfName: "net1"})
	if other.IPs[0] == first.IPs[0] {
		t.Errorf("eth0 and net1 share %v", other.IPs[0])
	}
}

func TestAllocateCompletesInterruptedAllocation(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/64"}]]}`)
	// What a crash between the two reservations leaves behind.
	if err := os.Symlink("ctr-001/eth0", filepath.Join(a.dir, "10.0.0.7")); err != nil {
		t.Fatal(err)
	}
	got := mustAllocate(t, a, att(1))
	if want := []netip.Prefix{mustPrefix("10.0.0.7/24"), mustPrefix("fd00::1/64")}; !reflect.DeepEqual(got.IPs, want) {
		t.Errorf("got %v, want %v", got.IPs, want)
	}
}

func TestReleaseIdempotent(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/64"}]]}`)
	if err := a.Release(att(9)); err != nil {
		t.Errorf("release of unknown attachment: %v", err)
	}
	mustAllocate(t, a, att(1))
	keep := mustAllocate(t, a, att(2))
	for i := 0; i < 2; i++ {
		if err := a.Release(att(1)); err != nil {
			t.Errorf("release %d: %v", i, err)
		}
	}
	if _, ok, err := a.Get(att(1)); ok || err != nil {
		t.Errorf("released attachment still found (%v)", err)
	}
	list, err := a.List()
	if err != nil || len(list) != 1 || !reflect.DeepEqual(list[0], keep) {
		t.Errorf("list = %v, want only %v (%v)", list, keep, err)
	}
}

func TestFreedAddressIsNotReusedImmediately(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/29"}]]}`)
	mustAllocate(t, a, att(1)) // .1
	mustAllocate(t, a, att(2)) // .2
	if err := a.Release(att(1)); err != nil {
		t.Fatal(err)
	}
	if got := mustAllocate(t, a, att(3)); got.IPs[0].Addr() != mustAddr("10.0.0.3") {
		t.Errorf("got %v, want 10.0.0.3", got.IPs[0])
	}
	// .4 .5 .6 then wrap around to the freed .1.
	got := allocateAll(t, a, 10)
	if want := []string{"10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.1"}; !slices.Equal(got, want) {
		t.Errorf("allocated %v, want %v", got, want)
	}
}

func TestCursorWrapsAcrossRanges(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/30"},{"subnet":"10.0.1.0/30"}]]}`)
	for i := 1; i <= 3; i++ { // 10.0.0.1, 10.0.0.2, 10.0.1.1
		mustAllocate(t, a, att(i))
	}
	if err := a.Release(att(1)); err != nil {
		t.Fatal(err)
	}
	got := allocateAll(t, a, 5)
	if want := []string{"10.0.1.2", "10.0.0.1"}; !slices.Equal(got, want) {
		t.Errorf("allocated %v, want %v", got, want)
	}
}

func TestGCKeepsValidAndFreesTheRest(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/64"}]]}`)
	var all []Allocation
	for i := 1; i <= 4; i++ {
		all = append(all, mustAllocate(t, a, att(i)))
	}
	released, err := a.GC([]Attachment{att(2), att(4), att(99)})
	if err != nil {
		t.Fatal(err)
	}
	if want := []Allocation{all[0], all[2]}; !reflect.DeepEqual(released, want) {
		t.Errorf("released %v, want %v", released, want)
	}
	list, err := a.List()
	if want := []Allocation{all[1], all[3]}; err != nil || !reflect.DeepEqual(list, want) {
		t.Errorf("left %v, want %v (%v)", list, want, err)
	}
	if released, err := a.GC(nil); err != nil || len(released) != 2 {
		t.Errorf("GC(nil) released %v (%v)", released, err)
	}
	if list, _ := a.List(); len(list) != 0 {
		t.Errorf("store not empty: %v", list)
	}
}

func TestReloadFromDisk(t *testing.T) {
	dir := t.TempDir()
	conf := `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/64"}]]}`
	a := openTest(t, dir, conf)
	mustAllocate(t, a, att(1))
	b2 := mustAllocate(t, a, att(2))
	if err := a.Release(att(1)); err != nil {
		t.Fatal(err)
	}

	re := openTest(t, dir, conf)
	got, ok, err := re.Get(att(2))
	if err != nil || !ok || !reflect.DeepEqual(got, b2) {
		t.Errorf("reloaded Get = %v %v %v, want %v", got, ok, err, b2)
	}
	// The cursor survived: the next address follows .2, it is not the freed .1.
	next := mustAllocate(t, re, att(3))
	if want := []netip.Prefix{mustPrefix("10.0.0.3/24"), mustPrefix("fd00::3/64")}; !reflect.DeepEqual(next.IPs, want) {
		t.Errorf("after reload got %v, want %v", next.IPs, want)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "net", "last_reserved_ip.0")); err != nil || strings.TrimSpace(string(b)) != "10.0.0.3" {
		t.Errorf("cursor file = %q (%v)", b, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "net", "10.0.0.3")); err != nil || target != "ctr-003/eth0" {
		t.Errorf("reservation = %q (%v)", target, err)
	}
}

func TestConfigChangeIgnoresOutOfRangeCursor(t *testing.T) {
	dir := t.TempDir()
	a := openTest(t, dir, `{"ranges":[[{"subnet":"10.0.0.0/24"}]]}`)
	for i := 1; i <= 5; i++ {
		mustAllocate(t, a, att(i))
	}
	b := openTest(t, dir, `{"ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.3"}]]}`)
	if _, err := b.Allocate(att(6)); !errors.Is(err, ErrExhausted) {
		t.Errorf("want exhaustion, got %v", err)
	}
	// att 5 holds 10.0.0.5, now outside the pool: still reported, with its prefix.
	got, ok, err := b.Get(att(5))
	if err != nil || !ok || got.IPs[0] != mustPrefix("10.0.0.5/24") {
		t.Errorf("Get = %v %v %v", got, ok, err)
	}
}

func TestForeignAndStrayEntries(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/29"}]]}`)
	// A regular file named like an address: owner unknown, address never handed out.
	if err := os.WriteFile(filepath.Join(a.dir, "10.0.0.1"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(a.dir, ".tmp-cursor-999999-1")
	if err := os.WriteFile(stray, []byte("10.0.0."), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a.dir, "README"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := mustAllocate(t, a, att(1)); got.IPs[0].Addr() != mustAddr("10.0.0.2") {
		t.Errorf("got %v, want 10.0.0.2", got.IPs)
	}
	if _, err := os.Lstat(stray); !os.IsNotExist(err) {
		t.Errorf("stray temp file not cleaned up: %v", err)
	}
	list, err := a.List()
	if err != nil || len(list) != 2 || list[0].Attachment != (Attachment{}) || list[0].IPs[0].Addr() != mustAddr("10.0.0.1") {
		t.Errorf("list = %v (%v)", list, err)
	}
	// GC with nothing valid reclaims the unknown entry too.
	if rel, err := a.GC(nil); err != nil || len(rel) != 2 {
		t.Errorf("GC = %v, %v", rel, err)
	}
}

func TestInvalidAttachment(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/29"}]]}`)
	for _, at := range []Attachment{{"", "eth0"}, {"c", ""}, {"c", "a/b"}, {"c\x00", "eth0"}, {strings.Repeat("c", 5000), "eth0"}} {
		if _, err := a.Allocate(at); !errors.Is(err, errInvalidAttachment) {
			t.Errorf("Allocate(%q) = %v", at, err)
		}
	}
	// Container IDs may contain '/' in principle; the owner still round-trips.
	odd := Attachment{ContainerID: "pod/uid", IfName: "eth0"}
	mustAllocate(t, a, odd)
	if _, ok, err := a.Get(odd); !ok || err != nil {
		t.Errorf("Get(%v) = %v %v", odd, ok, err)
	}
}

func TestErrBusy(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/29"}]]}`)
	a.lockTimeout = 50 * time.Millisecond
	fd, err := unix.Open(filepath.Join(a.dir, lockName), unix.O_RDWR|unix.O_CREAT, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := a.Allocate(att(1)); !errors.Is(err, ErrBusy) {
		t.Errorf("Allocate under a held lock: %v", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > 5*time.Second {
		t.Errorf("waited %v for a 50ms timeout", d)
	}
	if err := a.Release(att(1)); !errors.Is(err, ErrBusy) {
		t.Errorf("Release under a held lock: %v", err)
	}
	unix.Close(fd) // the holder goes away
	if _, err := a.Allocate(att(1)); err != nil {
		t.Errorf("Allocate after unlock: %v", err)
	}
}

func TestFlockExcludesWithinOneProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	unlock, err := flockFile(path, time.Now().Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := flockFile(path, time.Now().Add(20*time.Millisecond)); !errors.Is(err, ErrBusy) {
		t.Fatalf("second flock on another descriptor in the same process: %v", err)
	}
	unlock()
	unlock2, err := flockFile(path, time.Now().Add(time.Second))
	if err != nil {
		t.Fatalf("flock after unlock: %v", err)
	}
	unlock2()
}

func TestStoreDirRecreated(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/29"}]]}`)
	if err := os.RemoveAll(a.dir); err != nil {
		t.Fatal(err)
	}
	if got := mustAllocate(t, a, att(1)); got.IPs[0].Addr() != mustAddr("10.0.0.1") {
		t.Errorf("got %v", got.IPs)
	}
}

func TestStatus(t *testing.T) {
	a := openTest(t, t.TempDir(), `{"ranges":[[{"subnet":"10.0.0.0/30"}]]}`)
	if err := a.Status(); err != nil {
		t.Fatalf("Status of a fresh store: %v", err)
	}
	allocateAll(t, a, 5)
	if err := a.Status(); err != nil {
		t.Errorf("exhaustion must not fail Status: %v", err)
	}
	if entries := storeEntries(t, a); slices.ContainsFunc(entries, func(n string) bool { return strings.HasPrefix(n, tmpPrefix) }) {
		t.Errorf("Status left a probe file: %v", entries)
	}
	if err := os.RemoveAll(a.dir); err != nil {
		t.Fatal(err)
	}
	if err := a.Status(); err == nil {
		t.Error("Status with a missing store directory succeeded")
	}
	if err := os.WriteFile(a.dir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.Status(); err == nil {
		t.Error("Status with a file in place of the store directory succeeded")
	}
}

func TestStatusReadOnlyStore(t *testing.T) {
	dir := t.TempDir()
	a := openTest(t, dir, `{"ranges":[[{"subnet":"10.0.0.0/30"}]]}`)
	// A read-only bind mount is unwritable even for root.
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("cannot bind mount (%v); read-only check needs CAP_SYS_ADMIN", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	if err := unix.Mount("", dir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Skipf("cannot remount read-only: %v", err)
	}
	if err := a.Status(); err == nil || !strings.Contains(err.Error(), "not writable") {
		t.Errorf("Status on a read-only store: %v", err)
	}
}
