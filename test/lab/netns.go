package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

const netnsDir = "/var/run/netns"

// NetNS is a named network namespace (ip netns), so that `ip netns exec NAME` and
// `ip -n NAME` work on it from a shell as well.
type NetNS struct {
	Name string
	Path string

	once   sync.Once
	handle ns.NetNS
	err    error
	del    sync.Once
	delErr error
}

// CreateNetNS creates a named namespace with its loopback up.
func CreateNetNS(name string) (*NetNS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	n := &NetNS{Name: name, Path: filepath.Join(netnsDir, name)}
	if err := n.IP([]string{"link", "set", "lo", "up"}); err != nil {
		_ = n.Delete()
		return nil, err
	}
	return n, nil
}

// NS returns a handle for running Go code inside the namespace (see Do).
func (n *NetNS) NS() (ns.NetNS, error) {
	n.once.Do(func() { n.handle, n.err = ns.GetNS(n.Path) })
	return n.handle, n.err
}

// Do runs f on an OS thread switched into the namespace. Sockets opened in f stay in the
// namespace after f returns; processes started in f inherit it.
func (n *NetNS) Do(f func() error) error {
	h, err := n.NS()
	if err != nil {
		return err
	}
	return h.Do(func(ns.NetNS) error { return f() })
}

// IP runs `ip -n NAME args...` for each argument list, stopping at the first failure.
func (n *NetNS) IP(cmds ...[]string) error {
	for _, args := range cmds {
		if _, err := n.IPOutput(args...); err != nil {
			return err
		}
	}
	return nil
}

// IPOutput runs `ip -n NAME args...` and returns its standard output.
func (n *NetNS) IPOutput(args ...string) (string, error) {
	full := append([]string{"-n", n.Name}, args...)
	cmd := exec.Command("ip", full...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %v: %s", strings.Join(full, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Exec runs a command inside the namespace (ip netns exec) and returns its combined output.
func (n *NetNS) Exec(ctx context.Context, name string, args ...string) (string, error) {
	full := append([]string{"netns", "exec", n.Name, name}, args...)
	out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %v: %s", name, strings.Join(args, " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Delete kills what still runs in the namespace and deletes it. Idempotent.
func (n *NetNS) Delete() error {
	n.del.Do(func() {
		if n.handle != nil {
			_ = n.handle.Close()
		}
		var out []byte
		for range 5 {
			out, n.delErr = exec.Command("ip", "netns", "del", n.Name).CombinedOutput()
			if n.delErr == nil {
				return
			}
			if _, err := os.Stat(n.Path); errors.Is(err, os.ErrNotExist) {
				n.delErr = nil
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		n.delErr = fmt.Errorf("ip netns del %s: %v: %s", n.Name, n.delErr, strings.TrimSpace(string(out)))
	})
	return n.delErr
}

// killAll SIGKILLs every process whose network namespace is this one. Only for namespaces
// of dead lab runs: a live lab stops its own processes.
func (n *NetNS) killAll() {
	out, err := exec.Command("ip", "netns", "pids", n.Name).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
