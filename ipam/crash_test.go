package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

// runCrashHelper runs op for container id in a child process that SIGKILLs
// itself at point, and fails the test unless it really died there.
func runCrashHelper(t *testing.T, conf, op, id, point, valid string) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=crash", confEnv+"="+conf, opEnv+"="+op,
		idEnv+"="+id, crashEnv+"="+point, validEnv+"="+valid)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("helper %s@%s: %v\n%s", op, point, err, out)
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("helper %s@%s did not die by SIGKILL (%v):\n%s", op, point, err, out)
	}
}

func TestCrashSafety(t *testing.T) {
	const dual = `"ranges":[[{"subnet":"10.0.0.0/29"}],[{"subnet":"fd00::/125"}]]`
	const v6Full = `"ranges":[[{"subnet":"10.0.0.0/29"}],[{"subnet":"fd00::/126"}]]` // 3 IPv6 addresses
	cases := []struct {
		ranges, op, point string
		freshExhausted    bool // the IPv6 pool is full once the survivors hold it
	}{
		{dual, "allocate", "allocate:locked", false},
		{dual, "allocate", "allocate:reserved:0", false},
		{dual, "allocate", "allocate:reserved:1", false},
		{dual, "allocate", "allocate:cursor:0", false},
		{dual, "allocate", "allocate:cursor:1", false},
		{dual, "allocate", "allocate:indexed", false},
		{dual, "allocate", "allocate:done", false},
		{v6Full, "allocate", "allocate:reserved:0", true},
		{v6Full, "allocate", "allocate:rollback", true},
		{v6Full, "allocate", "allocate:rolled-back:0", true},
		{dual, "release", "release:locked", false},
		{dual, "release", "release:removed:0", false},
		{dual, "release", "release:removed:1", false},
		{dual, "release", "release:indexed", false},
		{dual, "release", "release:done", false},
		{dual, "gc", "gc:removed:0", false},
		{dual, "gc", "gc:removed:1", false},
		{dual, "gc", "gc:indexed", false},
	}
	for _, tc := range cases {
		t.Run(tc.op+"@"+tc.point+map[bool]string{true: "/full", false: ""}[tc.freshExhausted], func(t *testing.T) {
			dir := t.TempDir()
			conf := fmt.Sprintf(`{"dataDir":%q,%s}`, dir, tc.ranges)
			a := openTest(t, dir, conf)
			var survivors []Attachment
			for i := 1; i <= 3; i++ {
				mustAllocate(t, a, att(i))
				survivors = append(survivors, att(i))
			}
			before, err := a.List()
			if err != nil {
				t.Fatal(err)
			}
			victim := Attachment{ContainerID: "victim", IfName: "eth0"}
			valid := strings.Join([]string{att(1).ContainerID, att(2).ContainerID, att(3).ContainerID}, ",")
			runCrashHelper(t, conf, tc.op, victim.ContainerID, tc.point, valid)

			// The store opens and lists, and nothing is shared.
			b := openTest(t, dir, conf)
			list, err := b.List()
			if err != nil {
				t.Fatalf("List after crash: %v", err)
			}
			held := checkNoSharing(t, b, list)
			for _, al := range before {
				got, ok, err := b.Get(al.Attachment)
				if err != nil || !ok || !reflect.DeepEqual(got, al) {
					t.Errorf("survivor %v: %v %v %v, want %v", al.Attachment, got, ok, err, al)
				}
			}
			for addr, owner := range held {
				if owner != victim && !containsAttachment(survivors, owner) {
					t.Errorf("%v owned by unexpected %v", addr, owner)
				}
			}

			// A new attachment never gets an address someone holds.
			fresh := Attachment{ContainerID: "fresh", IfName: "eth0"}
			got, err := b.Allocate(fresh)
			switch {
			case tc.freshExhausted:
				if !errors.Is(err, ErrExhausted) {
					t.Errorf("fresh Allocate = %v, %v; want exhaustion", got, err)
				}
			case err != nil:
				t.Errorf("fresh Allocate: %v", err)
			default:
				for _, p := range got.IPs {
					if owner, taken := held[p.Addr()]; taken {
						t.Errorf("fresh attachment got %v, held by %v", p, owner)
					}
				}
			}
			for _, name := range storeEntries(t, b) {
				if strings.HasPrefix(name, tmpPrefix) {
					t.Errorf("scratch file %s survived a later mutation", name)
				}
			}

			// The victim can always be retried and cleaned up.
			if tc.op == "allocate" && !tc.freshExhausted {
				prev, _, _ := b.Get(victim)
				again, err := b.Allocate(victim)
				if err != nil {
					t.Errorf("retrying the victim's Allocate: %v", err)
				}
				for _, p := range prev.IPs { // what it held is what it gets
					if !containsPrefix(again.IPs, p) {
						t.Errorf("victim held %v but the retry returned %v", p, again.IPs)
					}
				}
			}
			if tc.op == "gc" {
				if _, err := b.GC(survivors); err != nil {
					t.Fatal(err)
				}
			} else if err := b.Release(victim); err != nil {
				t.Fatal(err)
			}
			if _, ok, err := b.Get(victim); ok || err != nil {
				t.Errorf("victim still holds addresses after cleanup (%v)", err)
			}
			if err := b.Release(fresh); err != nil {
				t.Fatal(err)
			}
			if after, err := b.List(); err != nil || !reflect.DeepEqual(after, before) {
				t.Errorf("after cleanup the store holds %v, want %v (%v)", after, before, err)
			}
			if _, err := b.GC(nil); err != nil {
				t.Fatal(err)
			}
			for _, name := range storeEntries(t, b) {
				if _, err := netip.ParseAddr(name); err == nil {
					t.Errorf("reservation %s left in an emptied store", name)
				}
			}
		})
	}
}

// Two crashes in a row must not let the index report a stale owner: B's
// release dies before the index is rewritten, then A's allocation takes B's
// address and dies before the index is rewritten too.
func TestCrashTwiceIndexStaysHonest(t *testing.T) {
	dir := t.TempDir()
	conf := fmt.Sprintf(`{"dataDir":%q,"ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.3"}]]}`, dir)
	a := openTest(t, dir, conf)
	mustAllocate(t, a, att(1)) // .1
	mustAllocate(t, a, att(2)) // .2
	// The helper allocates B (.3) itself, then dies releasing it: the index
	// still lists .3 as B's.
	runCrashHelper(t, conf, "release", "B", "release:removed:0", "")
	// .3 is the only free address; A takes it and dies before the index
	// is rewritten, leaving the same set of names as the stale index.
	runCrashHelper(t, conf, "allocate", "A", "allocate:cursor:0", "")

	b := openTest(t, dir, conf)
	list, err := b.List()
	if err != nil {
		t.Fatal(err)
	}
	checkNoSharing(t, b, list)
	got, ok, err := b.Get(Attachment{ContainerID: "A", IfName: "eth0"})
	if err != nil || !ok || got.IPs[0] != mustPrefix("10.0.0.3/24") {
		t.Errorf("A holds %v %v %v, want 10.0.0.3", got, ok, err)
	}
	if _, ok, _ := b.Get(Attachment{ContainerID: "B", IfName: "eth0"}); ok {
		t.Error("B still listed as holding an address")
	}
	if err := b.Release(Attachment{ContainerID: "B", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := b.Get(Attachment{ContainerID: "A", IfName: "eth0"}); !ok {
		t.Error("releasing B removed A's address")
	}
}

func TestTornOrStaleIndexIsRebuilt(t *testing.T) {
	dir := t.TempDir()
	a := openTest(t, dir, `{"ranges":[[{"subnet":"10.0.0.0/24"}]]}`)
	for i := 1; i <= 3; i++ {
		mustAllocate(t, a, att(i))
	}
	want, _ := a.List()
	idxPath := a.dir + "/" + indexName
	orig, err := os.ReadFile(idxPath)
	if err != nil || !strings.HasPrefix(string(orig), indexMagic) {
		t.Fatalf("index = %q (%v)", orig, err)
	}
	// A lie with a valid checksum but a different set of names is not trusted.
	body := "10.0.0.1 12:ctr-999/eth0\n"
	lie := fmt.Sprintf("%s len=%d crc=%08x\n%s", indexMagic, len(body), crc32c(body), body)
	for name, content := range map[string]string{
		"torn":       string(orig[:len(orig)-7]),
		"bit flip":   strings.Replace(string(orig), "ctr-002", "ctr-992", 1),
		"garbage":    "\x00\x01zz",
		"empty":      "",
		"other set":  lie,
		"longer old": string(orig) + "10.0.0.9 12:ctr-009/eth0\n", // tail a dead writer did not truncate
	} {
		if err := os.WriteFile(idxPath, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := a.List()
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s index: List = %v (%v), want %v", name, got, err, want)
		}
	}
	if err := os.Remove(idxPath); err != nil {
		t.Fatal(err)
	}
	if got, err := a.List(); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("without index: List = %v (%v)", got, err)
	}
	if _, err := os.Stat(idxPath); err != nil {
		t.Errorf("index not rewritten after rebuild: %v", err)
	}
}

func containsAttachment(list []Attachment, a Attachment) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

func containsPrefix(list []netip.Prefix, p netip.Prefix) bool {
	for _, x := range list {
		if x == p {
			return true
		}
	}
	return false
}
