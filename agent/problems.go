package agent

import (
	"log/slog"
	"sync"
)

// problemLog says each problem once while it lasts, not on every pass. Problems come in
// kinds (the BGP configuration, node overrides, this node, peers, the pass, status writes),
// and each report of a kind is the whole of it: a problem no longer reported has cleared and
// is forgotten, so if it comes back it is logged again.
type problemLog struct {
	log *slog.Logger

	mu      sync.Mutex
	current map[string]map[string]bool // kind -> problems last reported
}

func newProblemLog(log *slog.Logger) *problemLog {
	return &problemLog{log: log, current: map[string]map[string]bool{}}
}

// set makes problems the current problems of kind. Each one that was not current already is
// logged as a warning: msg, then args, then attr with the problem.
func (l *problemLog) set(kind string, problems []string, msg, attr string, args ...any) {
	now := make(map[string]bool, len(problems))
	var fresh []string
	l.mu.Lock()
	before := l.current[kind]
	for _, p := range problems {
		if !now[p] && !before[p] {
			fresh = append(fresh, p)
		}
		now[p] = true
	}
	if len(now) == 0 {
		delete(l.current, kind)
	} else {
		l.current[kind] = now
	}
	l.mu.Unlock()
	for _, p := range fresh {
		l.log.Warn(msg, append(args[:len(args):len(args)], attr, p)...)
	}
}

// setErr is set for a kind that has at most one problem, an error (nil: none).
func (l *problemLog) setErr(kind string, err error, msg, attr string, args ...any) {
	var problems []string
	if err != nil {
		problems = []string{err.Error()}
	}
	l.set(kind, problems, msg, attr, args...)
}
