package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// LBIPAM is podroute-lbipam, the LoadBalancer address allocator, run from the lab's BinDir
// as a process of the test's own namespace against the lab's API server (one replica, no
// leader election).
type LBIPAM struct {
	// Binary is the executable run.
	Binary string
	// Log is its output.
	Log string

	cmd  *exec.Cmd
	done chan struct{}

	mu      sync.Mutex
	waitErr error
}

// StartLBIPAM starts bin/podroute-lbipam with the API server's admin kubeconfig and extra
// flags appended. It is stopped in t.Cleanup.
func (l *Lab) StartLBIPAM(t testing.TB, extra ...string) *LBIPAM {
	t.Helper()
	bin := filepath.Join(l.bin, "podroute-lbipam")
	if !executable(bin) {
		t.Fatalf("lab: %s missing or not executable: run make build", bin)
	}
	a := &LBIPAM{Binary: bin, Log: filepath.Join(l.Dir, "podroute-lbipam.log"), done: make(chan struct{})}
	args := append([]string{"--kubeconfig", l.Kube.Kubeconfig, "--lease-namespace="}, extra...)
	logf, err := os.OpenFile(a.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	fmt.Fprintf(logf, "=== lab: start at %s: %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	a.cmd = exec.Command(bin, args...)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if err := startTied(a.cmd, logf, func(err error) {
		a.mu.Lock()
		a.waitErr = err
		a.mu.Unlock()
		fmt.Fprintf(logf, "=== lab: podroute-lbipam exited at %s: %v\n", time.Now().Format(time.RFC3339Nano), errOrOK(err))
		close(a.done)
	}); err != nil {
		t.Fatalf("lab: start podroute-lbipam: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Stop(); err != nil {
			t.Errorf("lab: %v", err)
		}
		if t.Failed() {
			t.Logf("lab: podroute-lbipam log (%s):\n%s", a.Log, Tail(a.Output(), 40))
		}
	})
	return a
}

func executable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// Running reports whether the allocator is alive; when not, the error it exited with.
func (a *LBIPAM) Running() (bool, error) {
	if !exited(a.done) {
		return true, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return false, fmt.Errorf("podroute-lbipam exited: %s", errOrOK(a.waitErr))
}

// Stop SIGTERMs the allocator and waits up to 10 s before killing it.
func (a *LBIPAM) Stop() error {
	if exited(a.done) {
		return nil
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		return nil
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
	}
	select {
	case <-a.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("podroute-lbipam (pid %d) still running 10s after SIGKILL", a.cmd.Process.Pid)
	}
}

// Output is the allocator's log so far.
func (a *LBIPAM) Output() string {
	b, err := os.ReadFile(a.Log)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}
