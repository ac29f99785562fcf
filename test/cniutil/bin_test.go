package cniutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestGoBuild: what the tests exec is what the tree holds now. A changed source is rebuilt
// and replaces the old binary; an unchanged one is left in place, not rewritten; a
// compile error is an error carrying the compiler's message.
func TestGoBuild(t *testing.T) {
	root, out := t.TempDir(), t.TempDir()
	write := func(path, text string) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	hello := func(says string) string {
		return "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Print(\"" + says + "\") }\n"
	}
	run := func() string {
		t.Helper()
		b, err := exec.Command(filepath.Join(out, "hello")).Output()
		if err != nil {
			t.Fatalf("run the built binary: %v", err)
		}
		return string(b)
	}
	inode := func() uint64 {
		t.Helper()
		st, err := os.Stat(filepath.Join(out, "hello"))
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}
	build := func() error {
		t.Helper()
		names, err := goBuild(root, out, []string{"./cmd/hello"})
		if err == nil && (len(names) != 1 || names[0] != "hello") {
			t.Fatalf("built %q, want hello", names)
		}
		return err
	}
	write("go.mod", "module example.com/hello\n\ngo 1.22\n")
	write("cmd/hello/main.go", hello("one"))
	if err := build(); err != nil {
		t.Fatal(err)
	}
	if got := run(); got != "one" {
		t.Fatalf("first build says %q, want one", got)
	}
	first := inode()

	if err := build(); err != nil {
		t.Fatal(err)
	}
	if inode() != first {
		t.Error("an unchanged binary was replaced")
	}

	write("cmd/hello/main.go", hello("two"))
	if err := build(); err != nil {
		t.Fatal(err)
	}
	if got := run(); got != "two" {
		t.Fatalf("after a change the binary says %q, want two: a stale binary", got)
	}

	write("cmd/hello/main.go", "package main\n\nfunc main() { undefinedThing() }\n")
	err := build()
	if err == nil || !strings.Contains(err.Error(), "undefinedThing") {
		t.Fatalf("build of broken code: %v, want the compiler's error", err)
	}
	if got := run(); got != "two" {
		t.Errorf("a failed build left %q, want the last good binary", got)
	}
}

// TestBinaries: the directory the tests exec from holds every binary they use, built.
func TestBinaries(t *testing.T) {
	if os.Getenv(BinDirEnv) != "" {
		t.Skipf("%s is set", BinDirEnv)
	}
	dir, err := Binaries()
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(dir) != "testbin" {
		t.Errorf("binaries in %s, want build/testbin", dir)
	}
	for _, name := range []string{"podroute", "podroute-ipam", "podroute-agent", "podroutectl"} {
		if err := executable(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if l, err := os.Readlink(filepath.Join(dir, "podroute-ipam")); err != nil || l != "podroute" {
		t.Errorf("podroute-ipam links to %q (%v), want podroute", l, err)
	}
	if executable(filepath.Join(RefDir(), "portmap")) == nil {
		if err := executable(filepath.Join(dir, "portmap")); err != nil {
			t.Errorf("portmap beside the agent: %v", err)
		}
	}
	// The agent is this tree's: it knows the flags this tree gives it.
	b, err := exec.Command(filepath.Join(dir, "podroute-agent"), "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(b), "--kube-proxy-metrics-address") {
		t.Errorf("podroute-agent --help: %v\n%s", err, b)
	}
}
