package ipam

import (
	"fmt"
	"hash/crc32"
	"net/netip"
	"os"
	"testing"
)

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }

// openTest parses ipamJSON (without dataDir) and opens network "net" in dir.
func openTest(t testing.TB, dir, ipamJSON string) *Allocator {
	t.Helper()
	cfg, err := ParseConfig([]byte(ipamJSON))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	cfg.DataDir = dir
	a, err := Open(cfg, "net")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return a
}

func att(i int) Attachment {
	return Attachment{ContainerID: fmt.Sprintf("ctr-%03d", i), IfName: "eth0"}
}

func mustAllocate(t testing.TB, a *Allocator, at Attachment) Allocation {
	t.Helper()
	got, err := a.Allocate(at)
	if err != nil {
		t.Fatalf("Allocate(%v): %v", at, err)
	}
	return got
}

// allocateAll allocates until ErrExhausted and returns the first address of each allocation.
func allocateAll(t testing.TB, a *Allocator, limit int) []string {
	t.Helper()
	var out []string
	for i := 0; i < limit; i++ {
		got, err := a.Allocate(att(1000 + i))
		if err != nil {
			return out
		}
		out = append(out, got.IPs[0].Addr().String())
	}
	t.Fatalf("pool not exhausted after %d allocations", limit)
	return nil
}

// storeEntries lists the names in the network directory.
func storeEntries(t testing.TB, a *Allocator) []string {
	t.Helper()
	des, err := os.ReadDir(a.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// checkNoSharing fails if any address appears twice in list, or if an
// attachment holds more than one address of a range set.
func checkNoSharing(t testing.TB, a *Allocator, list []Allocation) map[netip.Addr]Attachment {
	t.Helper()
	seen := map[netip.Addr]Attachment{}
	for _, al := range list {
		perSet := map[int]int{}
		for _, p := range al.IPs {
			if prev, dup := seen[p.Addr()]; dup {
				t.Errorf("address %v held by %v and %v", p.Addr(), prev, al.Attachment)
			}
			seen[p.Addr()] = al.Attachment
			i, _ := a.setOf(p.Addr())
			perSet[i]++
			if perSet[i] > 1 {
				t.Errorf("%v holds %d addresses of range set %d: %v", al.Attachment, perSet[i], i, al.IPs)
			}
		}
	}
	return seen
}

func crc32c(s string) uint32 { return crc32.Checksum([]byte(s), crcTable()) }
