package ipam

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestConcurrentGoroutines(t *testing.T) {
	dir := t.TempDir()
	conf := `{"ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.150"}]]}` // 150 addresses
	// Several Allocators on one store, shared by many goroutines: exercises
	// both the in-process queue and flock between descriptors of one process.
	allocs := []*Allocator{openTest(t, dir, conf), openTest(t, dir, conf), openTest(t, dir, conf), openTest(t, dir, conf)}
	const workers = 200
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		got       = map[netip.Addr]Attachment{}
		exhausted int
		failures  []error
	)
	start := make(chan struct{})
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			at := att(i)
			al, err := allocs[i%len(allocs)].Allocate(at)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, ErrExhausted):
				exhausted++
			case err != nil:
				failures = append(failures, err)
			default:
				if prev, dup := got[al.IPs[0].Addr()]; dup {
					failures = append(failures, fmt.Errorf("%v handed to %v and %v", al.IPs[0], prev, at))
				}
				got[al.IPs[0].Addr()] = at
			}
		}()
	}
	close(start)
	wg.Wait()
	for _, err := range failures {
		t.Error(err)
	}
	if len(got) != 150 || exhausted != workers-150 {
		t.Errorf("%d successes and %d exhausted, want 150 and %d", len(got), exhausted, workers-150)
	}
	list, err := allocs[0].List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(got) {
		t.Errorf("store holds %d allocations, callers got %d", len(list), len(got))
	}
	for _, al := range list {
		if got[al.IPs[0].Addr()] != al.Attachment {
			t.Errorf("store says %v owns %v, callers say %v", al.Attachment, al.IPs[0], got[al.IPs[0].Addr()])
		}
	}
}

func TestConcurrentProcesses(t *testing.T) {
	dir := t.TempDir()
	const procs, perProc, pool = 16, 10, 100
	conf := fmt.Sprintf(`{"dataDir":%q,"ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.%d"}]]}`, dir, pool)
	goFile := filepath.Join(dir, "go")

	type proc struct {
		cmd *exec.Cmd
		out bytes.Buffer
	}
	ps := make([]*proc, procs)
	for k := range ps {
		p := &proc{cmd: exec.Command(os.Args[0])}
		p.cmd.Env = append(os.Environ(), helperEnv+"=alloc", confEnv+"="+conf,
			fmt.Sprintf("%s=p%02d", idEnv, k), fmt.Sprintf("%s=%d", countEnv, perProc), goFileEnv+"="+goFile)
		p.cmd.Stdout = &p.out
		p.cmd.Stderr = os.Stderr
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ps[k] = p
	}
	if err := os.WriteFile(goFile, nil, 0o644); err != nil { // all start at once
		t.Fatal(err)
	}
	owner := map[string]string{} // address -> container ID
	exhausted := 0
	for k, p := range ps {
		if err := p.cmd.Wait(); err != nil {
			t.Errorf("helper %d: %v\n%s", k, err, p.out.String())
			continue
		}
		sc := bufio.NewScanner(&p.out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 3 && f[0] == "ok":
				if prev, dup := owner[f[2]]; dup {
					t.Errorf("%s handed to %s and %s", f[2], prev, f[1])
				}
				owner[f[2]] = f[1]
			case len(f) == 2 && f[0] == "exhausted":
				exhausted++
			default:
				t.Errorf("helper %d: %q", k, sc.Text())
			}
		}
	}
	if len(owner) != pool || exhausted != procs*perProc-pool {
		t.Errorf("%d successes and %d exhausted, want %d and %d", len(owner), exhausted, pool, procs*perProc-pool)
	}
	// Every reservation on disk is one a helper reported, and vice versa.
	a := openTest(t, dir, conf)
	list, err := a.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(owner) {
		t.Errorf("store holds %d allocations, helpers reported %d", len(list), len(owner))
	}
	for _, al := range list {
		if addr := al.IPs[0].Addr().String(); owner[addr] != al.ContainerID {
			t.Errorf("store: %s owned by %s, helpers: %q", addr, al.ContainerID, owner[addr])
		}
	}
	checkNoSharing(t, a, list)
}
