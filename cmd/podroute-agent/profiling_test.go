package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// --profiling serves the heap profile, the one an operator asks for when the agent grows.
func TestProfiling(t *testing.T) {
	mux := http.NewServeMux()
	mountProfiling(mux.Handle)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/pprof/heap?debug=1", nil))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "heap profile") {
		t.Errorf("heap profile: %d %.200s", rec.Code, rec.Body.String())
	}
	if o := mustParse(t, "--cluster-cidrs=10.244.0.0/16"); o.profiling {
		t.Error("profiling on by default")
	}
	if o := mustParse(t, "--cluster-cidrs=10.244.0.0/16", "--profiling"); !o.profiling {
		t.Error("--profiling not taken")
	}
}
