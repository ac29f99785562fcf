package agentapi

import (
	"errors"
	"net/http"
)

// Kinds of error a Source returns (through MarkError) to choose the answer's HTTP status;
// any other error is a 500. The client's errors match them too (errors.Is), by status.
var (
	// ErrBadRequest: the question is malformed (400).
	ErrBadRequest = errors.New("bad request")
	// ErrNotFound: what the question names does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrUnavailable: the agent cannot answer yet, or does not do what is asked (503).
	ErrUnavailable = errors.New("unavailable")
)

// MarkError gives err a kind (ErrBadRequest, ErrNotFound, ErrUnavailable) without changing
// its message; errors.Is matches both the kind and err's own chain.
func MarkError(kind, err error) error {
	if err == nil {
		return nil
	}
	return &kindError{kind: kind, err: err}
}

type kindError struct{ kind, err error }

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func kindOf(code int) error {
	switch code {
	case http.StatusBadRequest:
		return ErrBadRequest
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusServiceUnavailable:
		return ErrUnavailable
	}
	return nil
}
