package kube

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Eventually polls f every 100 ms until it returns nil, and fails the test with f's last
// error when timeout passes first: the wait of every test that drives an API server.
func Eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		last = f()
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: not within %v: %v", what, timeout, last)
	}
}

// TestLogger logs through t.Log, each line prefixed with prefix when it is not empty, from
// level up: the log of a component under test, shown with the test's output.
func TestLogger(t testing.TB, level slog.Level, prefix string) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t, prefix}, &slog.HandlerOptions{Level: level}))
}

type testWriter struct {
	t      testing.TB
	prefix string
}

func (w testWriter) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\n")
	if w.prefix != "" {
		line = w.prefix + ": " + line
	}
	w.t.Log(line)
	return len(p), nil
}
