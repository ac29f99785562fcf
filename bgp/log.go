package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// slogAdapter feeds GoBGP's logger interface into log/slog. Level is owned by the slog
// handler; GoBGP's SetLevel is ignored.
type slogAdapter struct {
	l *slog.Logger
	// onPeerProblem sees warnings and errors about a peer (GoBGP puts the neighbor
	// address in the "Key" field) so PeerState can report the last one.
	onPeerProblem func(key, msg string, fields gobgplog.Fields)
}

var _ gobgplog.Logger = (*slogAdapter)(nil)

func (a *slogAdapter) emit(level slog.Level, msg string, fields gobgplog.Fields) {
	if level >= slog.LevelWarn && a.onPeerProblem != nil {
		if key, ok := fields["Key"].(string); ok && fields["Topic"] == "Peer" {
			a.onPeerProblem(key, msg, fields)
		}
	}
	ctx := context.Background()
	if !a.l.Enabled(ctx, level) {
		return
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	attrs := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		v := fields[k]
		if err, ok := v.(error); ok {
			v = err.Error()
		}
		attrs = append(attrs, slog.Any(k, v))
	}
	a.l.LogAttrs(ctx, level, msg, attrs...)
}

// Panic and Fatal mark internal invariant violations in GoBGP. They are logged and then
// panic (in GoBGP's goroutine, as its own logger would exit), keeping the stack trace.
func (a *slogAdapter) Panic(msg string, fields gobgplog.Fields) {
	a.emit(slog.LevelError, msg, fields)
	panic(fmt.Sprintf("gobgp: %s %v", msg, fields))
}

func (a *slogAdapter) Fatal(msg string, fields gobgplog.Fields) {
	a.emit(slog.LevelError, msg, fields)
	panic(fmt.Sprintf("gobgp: fatal: %s %v", msg, fields))
}

func (a *slogAdapter) Error(msg string, fields gobgplog.Fields) { a.emit(slog.LevelError, msg, fields) }
func (a *slogAdapter) Warn(msg string, fields gobgplog.Fields)  { a.emit(slog.LevelWarn, msg, fields) }
func (a *slogAdapter) Info(msg string, fields gobgplog.Fields)  { a.emit(slog.LevelInfo, msg, fields) }
func (a *slogAdapter) Debug(msg string, fields gobgplog.Fields) { a.emit(slog.LevelDebug, msg, fields) }

func (a *slogAdapter) SetLevel(gobgplog.LogLevel) {}

// GetLevel lets GoBGP skip building debug messages the handler would drop.
func (a *slogAdapter) GetLevel() gobgplog.LogLevel {
	if a.l.Enabled(context.Background(), slog.LevelDebug) {
		return gobgplog.DebugLevel
	}
	return gobgplog.InfoLevel
}
