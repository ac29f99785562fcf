package cniutil

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// Invocation is one direct run of a plugin binary: the CNI_* environment and the config on
// stdin, exactly as a runtime would hand them over, without libcni in between.
type Invocation struct {
	Command     string // CNI_COMMAND
	ContainerID string // CNI_CONTAINERID
	NetNS       string // CNI_NETNS
	IfName      string // CNI_IFNAME
	Args        string // CNI_ARGS
	Path        string // CNI_PATH; PluginPath() when empty
	Stdin       []byte

	// Unset lists CNI_* variables to leave out of the environment altogether.
	Unset []string

	// KillAfter, when positive, SIGKILLs the plugin that long after it started.
	KillAfter time.Duration
}

// ForPod fills in the container ID, netns, interface name and args of p.
func (inv Invocation) ForPod(p *Pod) Invocation {
	inv.ContainerID = p.ContainerID
	inv.NetNS = p.NS.Path()
	inv.IfName = p.IfName
	inv.Args = p.CNIArgs()
	return inv
}

// Outcome is what a direct plugin run produced.
type Outcome struct {
	Stdout, Stderr []byte
	ExitCode       int  // -1 when killed by a signal
	Killed         bool // ended by the KillAfter SIGKILL
	Err            *types.Error
}

// Output is stdout and stderr together, for failure messages and panic checks.
func (o *Outcome) Output() string {
	return "stdout: " + string(o.Stdout) + "\nstderr: " + string(o.Stderr)
}

// Env builds the environment of the run: the caller's PATH and the CNI_* variables.
func (inv Invocation) Env() []string {
	path := inv.Path
	if path == "" {
		path = strings.Join(PluginPath(), ":")
	}
	vars := map[string]string{
		"CNI_COMMAND":     inv.Command,
		"CNI_CONTAINERID": inv.ContainerID,
		"CNI_NETNS":       inv.NetNS,
		"CNI_IFNAME":      inv.IfName,
		"CNI_ARGS":        inv.Args,
		"CNI_PATH":        path,
	}
	for _, u := range inv.Unset {
		delete(vars, u)
	}
	env := []string{"PATH=" + os.Getenv("PATH")}
	for _, k := range []string{"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"} {
		if v, ok := vars[k]; ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// Exec runs the plugin binary at path inside the node namespace. A non-zero exit is not an
// error: it is reported in the Outcome, with the CNI error decoded from stdout when there is one.
// The returned error is for failures to run the binary at all.
func (n *Node) Exec(ctx context.Context, path string, inv Invocation) (*Outcome, error) {
	var out *Outcome
	err := n.Do(func() error {
		var err error
		out, err = runPlugin(ctx, path, inv)
		return err
	})
	return out, err
}

func runPlugin(ctx context.Context, path string, inv Invocation) (*Outcome, error) {
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = inv.Env()
	cmd.Stdin = bytes.NewReader(inv.Stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	var killTimer *time.Timer
	if inv.KillAfter > 0 {
		killTimer = time.AfterFunc(inv.KillAfter, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
	}
	waitErr := cmd.Wait()
	if killTimer != nil {
		killTimer.Stop()
	}
	out := &Outcome{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), ExitCode: cmd.ProcessState.ExitCode()}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		out.Killed = true
	}
	if waitErr != nil && out.ExitCode > 0 && len(bytes.TrimSpace(out.Stdout)) > 0 {
		var e types.Error
		if err := json.Unmarshal(out.Stdout, &e); err == nil {
			out.Err = &e
		}
	}
	return out, nil
}
