package ipam

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Tests that need several processes re-execute this test binary with
// helperEnv set; TestMain then runs the helper instead of the tests.
const (
	helperEnv  = "PODROUTE_IPAM_TEST_HELPER" // "alloc" or "crash"
	confEnv    = "PODROUTE_IPAM_TEST_CONF"   // ipam JSON, dataDir included
	idEnv      = "PODROUTE_IPAM_TEST_ID"     // container ID (crash) or prefix (alloc)
	countEnv   = "PODROUTE_IPAM_TEST_COUNT"  // allocations per alloc helper
	goFileEnv  = "PODROUTE_IPAM_TEST_GO"     // alloc helpers start once this file exists
	opEnv      = "PODROUTE_IPAM_TEST_OP"     // crash helper: allocate, release or gc
	crashEnv   = "PODROUTE_IPAM_TEST_CRASH"  // crash helper: "point" or "point#n"
	validEnv   = "PODROUTE_IPAM_TEST_VALID"  // crash helper, gc: comma-separated container IDs
	exitNoHit  = 3                           // crash point never reached
	helperNet  = "net"
	helperWait = 30 * time.Second
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "alloc":
		os.Exit(allocHelper())
	case "crash":
		os.Exit(crashHelper())
	default:
		fmt.Fprintln(os.Stderr, "unknown helper mode")
		os.Exit(2)
	}
}

func helperAllocator() (*Allocator, error) {
	cfg, err := ParseConfig([]byte(os.Getenv(confEnv)))
	if err != nil {
		return nil, err
	}
	return Open(cfg, helperNet)
}

// allocHelper performs count allocations and prints one line per attempt:
// "ok <containerID> <addr>" or "exhausted <containerID>".
func allocHelper() int {
	a, err := helperAllocator()
	if err != nil {
		fmt.Println("err", err)
		return 1
	}
	count, _ := strconv.Atoi(os.Getenv(countEnv))
	err = wait.PollUntilContextTimeout(context.Background(), time.Millisecond, helperWait, true, func(context.Context) (bool, error) {
		_, err := os.Stat(os.Getenv(goFileEnv))
		return err == nil, nil
	})
	if err != nil {
		fmt.Println("err start signal never came")
		return 1
	}
	for j := 0; j < count; j++ {
		at := Attachment{ContainerID: fmt.Sprintf("%s-%d", os.Getenv(idEnv), j), IfName: "eth0"}
		al, err := a.Allocate(at)
		switch {
		case err == nil:
			fmt.Println("ok", at.ContainerID, al.IPs[0].Addr())
		case errors.Is(err, ErrExhausted):
			fmt.Println("exhausted", at.ContainerID)
		default:
			fmt.Println("err", err)
			return 1
		}
	}
	return 0
}

// crashHelper runs one operation and SIGKILLs itself at the chosen crash point.
func crashHelper() int {
	a, err := helperAllocator()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	at := Attachment{ContainerID: os.Getenv(idEnv), IfName: "eth0"}
	op := os.Getenv(opEnv)
	if op != "allocate" {
		// Release and GC need something to remove; this part must not crash.
		if _, err := a.Allocate(at); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	point, nth := os.Getenv(crashEnv), 1
	if p, n, ok := strings.Cut(point, "#"); ok {
		point = p
		nth, _ = strconv.Atoi(n)
	}
	hits := 0
	crashHook = func(p string) {
		if p == point {
			if hits++; hits == nth {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // the signal is on its way
			}
		}
	}
	switch op {
	case "allocate":
		_, err = a.Allocate(at)
	case "release":
		err = a.Release(at)
	case "gc":
		var valid []Attachment
		for _, id := range strings.Split(os.Getenv(validEnv), ",") {
			if id != "" {
				valid = append(valid, Attachment{ContainerID: id, IfName: "eth0"})
			}
		}
		_, err = a.GC(valid)
	}
	fmt.Fprintf(os.Stderr, "%s finished without reaching %s (err %v)\n", op, os.Getenv(crashEnv), err)
	return exitNoHit
}
