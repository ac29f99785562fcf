package bgp

import (
	"fmt"
	"os"
	"testing"
)

// TestMain runs the test binary as a child speaker when a test started it so (restart and
// BFD tests need speakers in processes or namespaces of their own), else the tests.
func TestMain(m *testing.M) {
	if raw := os.Getenv(helperEnv); raw != "" {
		helperSpeaker(exitFataler{}, raw)
		os.Exit(0)
	}
	if raw := os.Getenv(bfdHelperEnv); raw != "" {
		helperBFDSpeaker(exitFataler{}, raw)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fataler is what a child speaker needs of a test: a way to give up.
type fataler interface {
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// exitFataler gives up by printing to stderr, which the parent test shows, and exiting.
type exitFataler struct{}

func (exitFataler) Fatal(args ...any) {
	fmt.Fprintln(os.Stderr, args...)
	os.Exit(2)
}

func (exitFataler) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(2)
}
