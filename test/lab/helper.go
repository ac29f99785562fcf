package lab

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
)

// A helper process is this very test executable started again inside a network namespace to
// play a part there (a plain GoBGP speaker, say), told apart from the tests by an environment
// variable naming its configuration file: the package that owns the part calls RunHelper from
// an init function, which runs the part instead of the tests.

// Helper is a running helper process.
type Helper struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// StartHelper starts the test executable again in the namespace named ns, with env set to
// cfgPath, its output going to logPath. It is killed when the calling process dies, and by
// Stop.
func StartHelper(ns, env, cfgPath, logPath string) (*Helper, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	h := &Helper{log: logPath, done: make(chan struct{})}
	h.cmd = exec.Command("ip", "netns", "exec", ns, exe, "-test.run=^$")
	h.cmd.Env = append(os.Environ(), env+"="+cfgPath)
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	if err := startTied(h.cmd, logf, func(error) { close(h.done) }); err != nil {
		return nil, fmt.Errorf("start helper in %s: %w", ns, err)
	}
	return h, nil
}

// Stop kills the helper and waits for it to exit. Idempotent.
func (h *Helper) Stop() {
	select {
	case <-h.done:
		return
	default:
	}
	_ = h.cmd.Process.Kill()
	<-h.done
}

// Exited is closed when the helper has exited.
func (h *Helper) Exited() <-chan struct{} { return h.done }

// PID is the helper's process ID (ip netns exec execs it in place).
func (h *Helper) PID() int { return h.cmd.Process.Pid }

// Log is the helper's output so far.
func (h *Helper) Log() string {
	b, _ := os.ReadFile(h.log)
	return string(b)
}

// RunHelper, from an init function: if env names a configuration file, run the part with it
// and exit (status 1 with the error on standard error if it fails); otherwise return, and the
// tests run.
func RunHelper(env, name string, run func(cfgPath string) error) {
	path := os.Getenv(env)
	if path == "" {
		return
	}
	if err := run(path); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// startTied starts cmd so that it is SIGKILLed if the test process dies. The parent-death
// signal fires when the thread that forked the child exits, so the start and the wait run on
// one goroutine locked to its thread for the child's whole life. Once the child has exited,
// exited gets Wait's result; then out (the child's output file) is closed. out is closed too
// if the start fails.
func startTied(cmd *exec.Cmd, out io.Closer, exited func(error)) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			out.Close()
			started <- err
			return
		}
		started <- nil
		exited(cmd.Wait())
		out.Close()
	}()
	return <-started
}
