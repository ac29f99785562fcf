package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"sigs.k8s.io/yaml"

	"github.com/podroute/podroute/agentapi"
)

// Output formats of -o.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

var formats = []string{formatTable, formatJSON, formatYAML}

func parseFormat(s string) (string, error) {
	f := strings.ToLower(strings.TrimSpace(s))
	if slices.Contains(formats, f) {
		return f, nil
	}
	return "", fmt.Errorf("unknown output format %q: use one of %s", s, strings.Join(formats, ", "))
}

// writeStructured prints v as JSON or YAML. The YAML goes through the JSON encoding, so both
// use the API's field names.
func writeStructured(w io.Writer, format string, v any) error {
	var out []byte
	var err error
	switch format {
	case formatJSON:
		out, err = json.MarshalIndent(v, "", "  ")
		out = append(out, '\n')
	case formatYAML:
		out, err = yaml.Marshal(v)
	default:
		return fmt.Errorf("format %q is not a structured format", format)
	}
	if err != nil {
		return fmt.Errorf("encoding the output as %s: %w", format, err)
	}
	_, err = w.Write(out)
	return err
}

// renderNeighbors prints the BGP peers, ordered by address.
func renderNeighbors(w io.Writer, format string, ns []agentapi.Neighbor, now time.Time) error {
	ns = slices.Clone(ns)
	slices.SortStableFunc(ns, func(a, b agentapi.Neighbor) int { return compareAddrs(a.Address, b.Address) })
	if format != formatTable {
		if ns == nil {
			ns = []agentapi.Neighbor{}
		}
		return writeStructured(w, format, ns)
	}
	if len(ns) == 0 {
		_, err := fmt.Fprintln(w, "no BGP neighbors configured")
		return err
	}
	// BFD is off by default: its column only shows when some session runs it, "-" for the
	// others.
	withBFD := slices.ContainsFunc(ns, func(n agentapi.Neighbor) bool { return n.BFD != "" })
	head := []string{"PEER", "ASN", "KIND", "NODE", "STATE", "SINCE"}
	if withBFD {
		head = append(head, "BFD")
	}
	head = append(head, "RECEIVED", "ACCEPTED")
	// Advertised counts are only there when asked for (--advertised).
	withAdvertised := slices.ContainsFunc(ns, func(n agentapi.Neighbor) bool { return n.Advertised != nil })
	if withAdvertised {
		head = append(head, "ADVERTISED")
	}
	t := newTable(w, append(head, "INFO")...)
	for _, n := range ns {
		row := []string{n.Address, strconv.FormatUint(uint64(n.ASN), 10), dash(n.Kind), dash(n.Node), dash(n.State), ago(n.Since, now)}
		if withBFD {
			row = append(row, dash(n.BFD))
		}
		row = append(row, u64(n.Received), u64(n.Accepted))
		if withAdvertised {
			adv := "-"
			if n.Advertised != nil {
				adv = u64(*n.Advertised)
			}
			row = append(row, adv)
		}
		t.row(append(row, neighborInfo(n))...)
	}
	return t.flush()
}

// neighborInfo is what an operator needs to know beyond the state: why a session is down,
// or that its routes are kept through a restart.
func neighborInfo(n agentapi.Neighbor) string {
	var parts []string
	if n.Restarting {
		parts = append(parts, "graceful restart")
	}
	if n.LastError != "" && !strings.EqualFold(n.State, "established") {
		parts = append(parts, n.LastError)
	}
	return strings.Join(parts, "; ")
}

// renderRoutes prints learned routes by prefix, then what the import filter refused, then
// what this node advertises.
func renderRoutes(w io.Writer, format string, rs agentapi.Routes, now time.Time) error {
	rs = sortRoutes(rs)
	if format != formatTable {
		return writeStructured(w, format, rs)
	}

	var b bytes.Buffer
	fmt.Fprintf(&b, "Learned routes (%d):\n", len(rs.Routes))
	if len(rs.Routes) == 0 {
		fmt.Fprintln(&b, "no routes learned from BGP peers")
	} else {
		withErr := slices.ContainsFunc(rs.Routes, func(r agentapi.Route) bool { return r.InstallError != "" })
		head := []string{"PREFIX", "NEXT HOPS", "AS PATH", "FROM", "INSTALLED"}
		if withErr {
			head = append(head, "ERROR")
		}
		t := newTable(&b, head...)
		for _, r := range rs.Routes {
			row := []string{r.Prefix, dash(strings.Join(r.NextHops, ",")), asPath(r.ASPath), dash(r.SourcePeer), yesNo(r.Installed)}
			if withErr {
				row = append(row, r.InstallError)
			}
			t.row(row...)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}

	fmt.Fprintf(&b, "\nRefused by the import filter (%d):\n", len(rs.Refused))
	if len(rs.Refused) == 0 {
		fmt.Fprintln(&b, "no announcements refused")
	} else {
		t := newTable(&b, "PREFIX", "PEER", "REASON", "COUNT", "LAST SEEN")
		for _, r := range rs.Refused {
			t.row(r.Prefix, dash(r.Peer), dash(r.Reason), u64(r.Count), ago(r.LastSeen, now))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}

	fmt.Fprintf(&b, "\nAdvertised by this node (%d):\n", len(rs.Advertised))
	if len(rs.Advertised) == 0 {
		fmt.Fprintln(&b, "this node advertises no prefixes")
	} else {
		t := newTable(&b, "PREFIX")
		for _, p := range rs.Advertised {
			t.row(p)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}

	fmt.Fprintf(&b, "\nService addresses advertised to external peers (%d):\n", len(rs.Services))
	if len(rs.Services) == 0 {
		fmt.Fprintln(&b, "this node advertises no Service address")
	} else {
		t := newTable(&b, "PREFIX", "CLASS", "SERVICES", "COMMUNITIES", "PREPEND")
		for _, s := range rs.Services {
			prepend := "-"
			if s.ASPathPrepend > 0 {
				prepend = strconv.Itoa(int(s.ASPathPrepend))
			}
			t.row(s.Prefix, s.Class, dash(strings.Join(s.Services, ",")), dash(strings.Join(s.Communities, " ")), prepend)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// sortRoutes orders a copy, so output is stable across runs whatever order the agent keeps.
func sortRoutes(rs agentapi.Routes) agentapi.Routes {
	out := agentapi.Routes{
		Routes:     slices.Clone(rs.Routes),
		Refused:    slices.Clone(rs.Refused),
		Advertised: slices.Clone(rs.Advertised),
		Services:   slices.Clone(rs.Services),
	}
	slices.SortStableFunc(out.Routes, func(a, b agentapi.Route) int { return comparePrefixes(a.Prefix, b.Prefix) })
	slices.SortStableFunc(out.Refused, func(a, b agentapi.Refusal) int {
		return cmp.Or(comparePrefixes(a.Prefix, b.Prefix), compareAddrs(a.Peer, b.Peer))
	})
	slices.SortStableFunc(out.Advertised, comparePrefixes)
	// [] rather than null in JSON and YAML, as the agent sends them.
	if out.Routes == nil {
		out.Routes = []agentapi.Route{}
	}
	if out.Refused == nil {
		out.Refused = []agentapi.Refusal{}
	}
	slices.SortStableFunc(out.Services, func(a, b agentapi.ServiceRoute) int { return comparePrefixes(a.Prefix, b.Prefix) })
	if out.Services == nil {
		out.Services = []agentapi.ServiceRoute{}
	}
	if out.Advertised == nil {
		out.Advertised = []string{}
	}
	return out
}

// renderStatus prints the node's state as key/value lines.
func renderStatus(w io.Writer, format string, st agentapi.Status, now time.Time) error {
	if format != formatTable {
		return writeStructured(w, format, st)
	}
	node := dash(st.Node)
	if st.NodeProblem != "" {
		node += " (problem: " + st.NodeProblem + ")"
	}
	cidrs := strings.Join(st.PodCIDRs, ", ")
	if cidrs == "" {
		cidrs = "none assigned"
	}
	cni := "not written yet"
	if st.CNIConfig != "" {
		cni = st.CNIConfig + " (written: " + yesNo(st.CNIConfigWritten) + ")"
	}
	watch := "healthy"
	if !st.APIWatchHealthy {
		watch = "unhealthy"
		if st.APIWatchError != "" {
			watch += ": " + st.APIWatchError
		}
	}
	bgp := "started"
	if !st.BGPStarted {
		bgp = "not started"
	}
	ready := "yes"
	if !st.Ready {
		ready = "no"
		if len(st.NotReadyReasons) > 0 {
			ready += ": " + strings.Join(st.NotReadyReasons, "; ")
		}
	}
	r := st.Routes
	routes := fmt.Sprintf("learned %d, installed %d, advertised %d, refused %d, failed %d",
		r.Learned, r.Installed, r.Advertised, r.Refused, r.Failed)
	reconcile := "never"
	if !st.LastReconcile.IsZero() {
		reconcile = ago(st.LastReconcile, now)
	}
	if st.LastReconcileErr != "" {
		reconcile += ", failed: " + st.LastReconcileErr
	}
	kubeProxy := "-"
	if st.KubeProxyMode != "" {
		kubeProxy = st.KubeProxyMode + " mode"
	}
	asn := "-"
	if st.ASN != 0 {
		asn = strconv.FormatUint(uint64(st.ASN), 10)
	}

	t := newTable(w)
	for _, kv := range [][2]string{
		{"Node", node},
		{"Pod CIDRs", cidrs},
		{"AS", asn},
		{"Router ID", dash(st.RouterID)},
		{"CNI config", cni},
		{"API watch", watch},
		{"BGP", bgp},
		{"Kube-proxy", kubeProxy},
		{"Ready", ready},
		{"Routes", routes},
		{"Last reconcile", reconcile},
		{"Agent version", dash(st.Version)},
	} {
		t.row(kv[0]+":", kv[1])
	}
	for i, p := range st.Problems {
		label := ""
		if i == 0 {
			label = "Problems:"
		}
		t.row(label, p)
	}
	return t.flush()
}

// renderPools lists the LoadBalancerIPPools under the status; a failure to list them is said
// there, not as the command's error: the node's own state above is what status is for.
func renderPools(w io.Writer, lp agentapi.LoadBalancerPools, err error) error {
	var b bytes.Buffer
	switch {
	case err != nil:
		fmt.Fprintf(&b, "\nLoadBalancer pools: unknown (%v)\n", err)
	case !lp.Installed:
		fmt.Fprintln(&b, "\nLoadBalancer pools: none (the LoadBalancerIPPool CRD is not installed)")
	case len(lp.Pools) == 0:
		fmt.Fprintln(&b, "\nLoadBalancer pools: none")
	default:
		fmt.Fprintf(&b, "\nLoadBalancer pools (%d):\n", len(lp.Pools))
		t := newTable(&b, "NAME", "IPV4 USED", "IPV6 USED", "VALID", "ADDRESSES")
		for _, p := range lp.Pools {
			valid := dash(p.Valid)
			if p.Message != "" {
				valid += ": " + p.Message
			}
			t.row(p.Name, usage(p.IPv4), usage(p.IPv6), valid, dash(strings.Join(p.Addresses, ",")))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	_, err = w.Write(b.Bytes())
	return err
}

// usage is "allocated/total" of one family of a pool.
func usage(u *agentapi.PoolUsage) string {
	if u == nil {
		return "-"
	}
	return fmt.Sprintf("%d/%d", u.Allocated, u.Total)
}

// versionInfo is the output of podroutectl version.
type versionInfo struct {
	Client     clientVersion `json:"client"`
	Agent      *agentVersion `json:"agent,omitempty"`
	AgentError string        `json:"agentError,omitempty"`
}

type clientVersion struct {
	Version   string `json:"version"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

type agentVersion struct {
	Version string `json:"version"`
	Node    string `json:"node"`
}

func renderVersion(w io.Writer, format string, v versionInfo) error {
	if format != formatTable {
		return writeStructured(w, format, v)
	}
	t := newTable(w)
	t.row("Client:", fmt.Sprintf("%s (%s, %s)", v.Client.Version, v.Client.GoVersion, v.Client.Platform))
	switch {
	case v.Agent != nil:
		t.row("Agent:", fmt.Sprintf("%s (node %s)", dash(v.Agent.Version), dash(v.Agent.Node)))
	case v.AgentError != "":
		t.row("Agent:", "unavailable: "+v.AgentError)
	}
	return t.flush()
}

// table is a tabwriter whose cells cannot break the layout.
type table struct {
	dst io.Writer
	buf bytes.Buffer
	tw  *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{dst: w}
	t.tw = tabwriter.NewWriter(&t.buf, 0, 8, 2, ' ', 0)
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if i > 0 {
			io.WriteString(t.tw, "\t")
		}
		io.WriteString(t.tw, cell(c))
	}
	io.WriteString(t.tw, "\n")
}

// flush writes the table without the padding tabwriter leaves after an empty last cell.
func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return err
	}
	var out strings.Builder
	for l := range strings.Lines(t.buf.String()) {
		out.WriteString(strings.TrimRight(l, " \n"))
		out.WriteString("\n")
	}
	t.buf.Reset()
	_, err := io.WriteString(t.dst, out.String())
	return err
}

// cell makes a value safe for one table cell: errors and reasons come from BGP peers and
// the kernel, and a tab, newline or terminal escape in them must not reach the screen.
func cell(s string) string {
	// Invalid UTF-8 could hold tabwriter's escape byte (0xff).
	s = strings.ToValidUTF8(s, "?")
	if !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return s
	}
	s = strings.Map(func(r rune) rune {
		switch {
		case unicode.IsSpace(r):
			return ' '
		case !unicode.IsPrint(r):
			return '?'
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func u64(n uint64) string { return strconv.FormatUint(n, 10) }

func asPath(p []uint32) string {
	if len(p) == 0 {
		return "-"
	}
	s := make([]string, len(p))
	for i, a := range p {
		s[i] = strconv.FormatUint(uint64(a), 10)
	}
	return strings.Join(s, " ")
}

// ago is how long before now t was, "5m12s ago"; "-" for an unset time.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < -time.Second:
		// The agent's clock is ahead of ours; say so rather than print a negative age.
		return "in " + shortDuration(-d)
	case d < time.Second:
		return "just now"
	}
	return shortDuration(d) + " ago"
}

// shortDuration keeps the two largest units: 42s, 5m12s, 3h4m, 2d5h.
func shortDuration(d time.Duration) string {
	d = d.Truncate(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%dd%dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
}

// compareAddrs orders addresses numerically (10.0.0.9 before 10.0.0.10, IPv4 before IPv6);
// anything unparsable goes last, by text.
func compareAddrs(a, b string) int {
	pa, ea := netip.ParseAddr(a)
	pb, eb := netip.ParseAddr(b)
	switch {
	case ea == nil && eb == nil:
		return cmp.Or(pa.Compare(pb), strings.Compare(a, b))
	case ea == nil:
		return -1
	case eb == nil:
		return 1
	}
	return strings.Compare(a, b)
}

// comparePrefixes orders prefixes by address, then length; unparsable ones go last, by text.
func comparePrefixes(a, b string) int {
	pa, ea := netip.ParsePrefix(a)
	pb, eb := netip.ParsePrefix(b)
	switch {
	case ea == nil && eb == nil:
		return cmp.Or(pa.Addr().Compare(pb.Addr()), cmp.Compare(pa.Bits(), pb.Bits()), strings.Compare(a, b))
	case ea == nil:
		return -1
	case eb == nil:
		return 1
	}
	return strings.Compare(a, b)
}
