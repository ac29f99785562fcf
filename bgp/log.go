package bgp

import (
	"context"
	"log/slog"
)

// peerProblemHandler sits between GoBGP's slog logger and podroute's handler. It passes
// every record on unchanged, and shows warnings and errors about a peer to onPeerProblem
// so PeerState can report the last one, even when the handler's level drops them.
// GoBGP's per-peer logger carries Topic=Peer and Key=<neighbor address> (added with
// With, so they arrive through WithAttrs).
type peerProblemHandler struct {
	next          slog.Handler
	attrs         []slog.Attr // from WithAttrs, outside any group
	grouped       bool        // WithGroup was called: later attributes are not top-level
	onPeerProblem func(key, msg string, attrs map[string]any)
}

func newPeerProblemHandler(next slog.Handler, onPeerProblem func(key, msg string, attrs map[string]any)) *peerProblemHandler {
	return &peerProblemHandler{next: next, onPeerProblem: onPeerProblem}
}

func (h *peerProblemHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= slog.LevelWarn || h.next.Enabled(ctx, level)
}

func (h *peerProblemHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		attrs := make(map[string]any, len(h.attrs)+r.NumAttrs())
		for _, a := range h.attrs {
			attrs[a.Key] = a.Value.Resolve().Any()
		}
		if !h.grouped {
			r.Attrs(func(a slog.Attr) bool {
				attrs[a.Key] = a.Value.Resolve().Any()
				return true
			})
		}
		if key, ok := attrs["Key"].(string); ok && attrs["Topic"] == "Peer" {
			h.onPeerProblem(key, r.Message, attrs)
		}
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *peerProblemHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(as)
	if !h.grouped {
		c.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	}
	return &c
}

func (h *peerProblemHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.next = h.next.WithGroup(name)
	c.grouped = true
	return &c
}
