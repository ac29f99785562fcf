package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/podroute/podroute/agentapi"
)

func TestAgo(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "just now"},
		{999 * time.Millisecond, "just now"},
		{42*time.Second + 900*time.Millisecond, "42s ago"},
		{5*time.Minute + 12*time.Second, "5m12s ago"},
		{3*time.Hour + 4*time.Minute + 59*time.Second, "3h4m ago"},
		{50*time.Hour + 30*time.Minute, "2d2h ago"},
		{-10 * time.Second, "in 10s"},
	} {
		if got := ago(now.Add(-tc.d), now); got != tc.want {
			t.Errorf("ago(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
	if got := ago(time.Time{}, now); got != "-" {
		t.Errorf("zero time: %q", got)
	}
}

// Text from peers and the kernel cannot break the table or reach the terminal as escapes.
func TestCellSanitizes(t *testing.T) {
	for in, want := range map[string]string{
		"plain":                    "plain",
		"two\nlines\tand tab":      "two lines and tab",
		"bell\a and \x1b[31mred":   "bell? and ?[31mred",
		"tabwriter \xff escape":    "tabwriter ? escape",
		"  spaced\r\n  out  ":      "spaced out",
		"unicode ok: naïve résumé": "unicode ok: naïve résumé",
		"ÿ is a letter":            "ÿ is a letter",
	} {
		if got := cell(in); got != want {
			t.Errorf("cell(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOrdering(t *testing.T) {
	ns := []agentapi.Neighbor{{Address: "fe80::1%eth0"}, {Address: "not-an-ip"}, {Address: "10.0.0.10"}, {Address: "2001:db8::1"}, {Address: "10.0.0.9"}}
	var b bytes.Buffer
	if err := renderNeighbors(&b, formatTable, ns, now); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n")[1:] {
		got = append(got, strings.Fields(l)[0])
	}
	want := "10.0.0.9 10.0.0.10 2001:db8::1 fe80::1%eth0 not-an-ip"
	if strings.Join(got, " ") != want {
		t.Errorf("order %v, want %s", got, want)
	}
	if ns[0].Address != "fe80::1%eth0" {
		t.Error("rendering reordered the caller's slice")
	}

	rs := sortRoutes(agentapi.Routes{Routes: []agentapi.Route{{Prefix: "10.0.0.0/16"}, {Prefix: "10.0.0.0/8"}, {Prefix: "9.0.0.0/8"}, {Prefix: "::/0"}}})
	var ps []string
	for _, r := range rs.Routes {
		ps = append(ps, r.Prefix)
	}
	if got := strings.Join(ps, " "); got != "9.0.0.0/8 10.0.0.0/8 10.0.0.0/16 ::/0" {
		t.Errorf("prefix order: %s", got)
	}
}

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]string{"table": "table", "JSON": "json", " yaml ": "yaml"} {
		if got, err := parseFormat(in); err != nil || got != want {
			t.Errorf("parseFormat(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "wide", "yml"} {
		if _, err := parseFormat(in); err == nil {
			t.Errorf("parseFormat(%q) accepted", in)
		}
	}
}

func TestRenderStatusProblems(t *testing.T) {
	var b strings.Builder
	st := agentapi.Status{Node: "n1", Problems: []string{"BGPPeer tor-a ignored: spec.peerASN: Invalid value: 0", "CRDs not installed"}}
	if err := renderStatus(&b, formatTable, st, time.Now()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"Problems:", "BGPPeer tor-a ignored: spec.peerASN", "CRDs not installed"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "Problems:") != 1 {
		t.Errorf("the label must appear once:\n%s", out)
	}
}
