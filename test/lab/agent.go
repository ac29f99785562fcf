package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Agent is a node's podroute-agent process, run inside the node's namespace with
// `ip netns exec`. Its output goes to Node.AgentLog; each start appends to it.
type Agent struct {
	node  *Node
	extra []string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	starts  int
}

func newAgent(n *Node, extra []string) *Agent { return &Agent{node: n, extra: extra} }

// Args is the agent's command line (after the binary).
func (a *Agent) Args() []string {
	n := a.node
	var cidrs []string
	for _, p := range n.lab.opts.ClusterCIDRs {
		cidrs = append(cidrs, p.String())
	}
	args := []string{
		"--kubeconfig", n.lab.Kubeconfig,
		"--node-name", n.Name,
		"--cluster-cidrs", strings.Join(cidrs, ","),
		"--cni-conf-dir", n.ConfDir,
		"--cni-bin-dir", n.BinDir,
		"--cni-plugin", filepath.Join(n.lab.bin, "podroute"),
		"--data-dir", n.DataDir,
		"--socket", n.Socket,
		"--health-address", HealthAddress,
		"--hold-time", "3s",
		"--keepalive", "1s",
	}
	args = append(args, n.lab.opts.AgentArgs...)
	return append(args, a.extra...)
}

// Start starts the agent. It is an error if it runs already.
func (a *Agent) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil && !exited(a.done) {
		return fmt.Errorf("agent of %s is running", a.node.Name)
	}
	n := a.node
	logf, err := os.OpenFile(n.AgentLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	a.starts++
	bin := filepath.Join(n.lab.bin, "podroute-agent")
	args := a.Args()
	fmt.Fprintf(logf, "=== lab: start #%d at %s: %s %s\n", a.starts, time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.NetNS.Name, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// ip netns exec execs the agent in place: the process is the agent itself, and dies
	// with the test process.
	done := make(chan struct{})
	if err := startTied(cmd, logf, func(err error) {
		a.mu.Lock()
		a.waitErr = err
		a.mu.Unlock()
		fmt.Fprintf(logf, "=== lab: agent exited at %s: %v\n", time.Now().Format(time.RFC3339Nano), errOrOK(err))
		close(done)
	}); err != nil {
		return fmt.Errorf("start agent of %s: %w", n.Name, err)
	}
	a.cmd, a.done = cmd, done
	return nil
}

func errOrOK(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

func exited(done chan struct{}) bool {
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// Running reports whether the agent process is alive.
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cmd != nil && !exited(a.done)
}

// Kill SIGKILLs the agent (a crash) and waits for it to be gone.
func (a *Agent) Kill() error { return a.signal(syscall.SIGKILL, 0) }

// Stop SIGTERMs the agent and waits up to 10 s before killing it. Stopping a stopped agent
// is not an error.
func (a *Agent) Stop() error { return a.signal(syscall.SIGTERM, 10*time.Second) }

// Restart is Stop then Start.
func (a *Agent) Restart() error {
	if err := a.Stop(); err != nil {
		return err
	}
	return a.Start()
}

func (a *Agent) signal(sig syscall.Signal, grace time.Duration) error {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil || exited(done) {
		return nil
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	if grace > 0 {
		select {
		case <-done:
			return nil
		case <-time.After(grace):
			_ = cmd.Process.Kill()
		}
	}
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("agent of %s (pid %d) still running 10s after SIGKILL", a.node.Name, cmd.Process.Pid)
	}
}

// Log returns the agent's log so far (every run).
func (a *Agent) Log() string {
	b, err := os.ReadFile(a.node.AgentLog)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

// LogSize is the current length of the log, to look only at what comes after (LogSince).
func (a *Agent) LogSize() int64 {
	st, err := os.Stat(a.node.AgentLog)
	if err != nil {
		return 0
	}
	return st.Size()
}

// LogSince returns the log from byte offset off.
func (a *Agent) LogSince(off int64) string {
	s := a.Log()
	if off > int64(len(s)) {
		return ""
	}
	return s[off:]
}

// PID is the agent process's ID (the agent itself: ip netns exec execs it in place), or 0
// when it is not running.
func (a *Agent) PID() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil || exited(a.done) {
		return 0
	}
	return a.cmd.Process.Pid
}
