package scaleplot

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// samplePoints is a plausible set of runs: a full mesh of 3 to 50 agents, route reflectors for 200 to 1,000 nodes.
func samplePoints() []Point {
	var pts []Point
	for _, n := range []int{3, 5, 10, 20, 30, 50} {
		pts = append(pts, Point{
			Topology: "full mesh", Nodes: n,
			JoinMedian: 0.4 + 0.02*float64(n), JoinWorst: 0.7 + 0.05*float64(n),
			MemoryMiB: map[string]float64{"agent": 38 + 0.6*float64(n)},
			Commit:    "18c3124", Date: "2026-12-03", Machine: "2 vCPU",
		})
	}
	for _, n := range []int{200, 400, 600, 800, 1000} {
		pts = append(pts, Point{
			Topology: "route reflectors", Nodes: n,
			JoinMedian: 0.6 + 0.0008*float64(n), JoinWorst: 1.1 + 0.002*float64(n),
			MemoryMiB: map[string]float64{"reflector": 60 + 0.25*float64(n), "client": 36 + 0.01*float64(n)},
			Commit:    "18c3124", Date: "2026-12-04", Machine: "2 vCPU",
		})
	}
	return pts
}

func readPoints(t *testing.T, dir string) []Point {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, DataFile))
	if err != nil {
		t.Fatal(err)
	}
	var pts []Point
	if err := json.Unmarshal(data, &pts); err != nil {
		t.Fatalf("%s: %v", DataFile, err)
	}
	return pts
}

// checkSVG decodes the whole document as XML and returns the text of its <text> elements.
func checkSVG(t *testing.T, svg []byte) []string {
	t.Helper()
	if !bytes.HasPrefix(svg, []byte("<?xml ")) {
		t.Errorf("svg does not start with an XML declaration: %.40q", svg)
	}
	dec := xml.NewDecoder(bytes.NewReader(svg))
	var texts []string
	var root *xml.StartElement
	inText := false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("svg is not well-formed XML: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == nil {
				root = &tok
			}
			inText = tok.Name.Local == "text"
		case xml.EndElement:
			inText = false
		case xml.CharData:
			if inText {
				texts = append(texts, string(tok))
			}
		}
	}
	if root == nil || root.Name.Local != "svg" {
		t.Fatalf("root element is %v, want svg", root)
	}
	attrs := map[string]string{}
	for _, a := range root.Attr {
		attrs[a.Name.Local] = a.Value
	}
	if attrs["width"] != "720pt" || attrs["height"] != "324pt" {
		t.Errorf("svg size %q x %q, want 720pt x 324pt", attrs["width"], attrs["height"])
	}
	return texts
}

func TestRecord(t *testing.T) {
	dir := t.TempDir()
	pts := samplePoints()
	// Out of order, as benchmarks may run.
	for _, i := range []int{10, 0, 5, 7, 1, 2, 3, 4, 6, 8, 9} {
		if err := Record(dir, pts[i]); err != nil {
			t.Fatalf("Record %s/%d: %v", pts[i].Topology, pts[i].Nodes, err)
		}
	}
	// A rerun at 20 nodes replaces the first.
	rerun := pts[3]
	rerun.JoinMedian, rerun.JoinWorst, rerun.Date = 0.9, 1.4, "2026-12-05"
	rerun.MemoryMiB = map[string]float64{"agent": 51.5}
	if err := Record(dir, rerun); err != nil {
		t.Fatal(err)
	}
	want := samplePoints()
	want[3] = rerun
	if got := readPoints(t, dir); !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got %+v\nwant %+v", DataFile, got, want)
	}

	data, err := os.ReadFile(filepath.Join(dir, DataFile))
	if err != nil {
		t.Fatal(err)
	}
	// Indented, one field a line, map keys sorted, a final newline: small diffs when a point changes.
	for _, s := range []string{
		"[\n  {\n    \"topology\": \"full mesh\",\n    \"nodes\": 3,\n",
		"\"memoryMiB\": {\n      \"client\": 38,\n      \"reflector\": 110\n    },",
		"\"joinMedianSeconds\": 0.9,\n    \"joinWorstSeconds\": 1.4,",
	} {
		if !strings.Contains(string(data), s) {
			t.Errorf("%s lacks %q:\n%s", DataFile, s, data)
		}
	}
	if !strings.HasSuffix(string(data), "}\n]\n") {
		t.Errorf("%s does not end with a newline after the array", DataFile)
	}

	svg, err := os.ReadFile(filepath.Join(dir, PlotFile))
	if err != nil {
		t.Fatal(err)
	}
	texts := strings.Join(checkSVG(t, svg), "\n")
	for _, s := range []string{
		"Node join: created -> routed on every node (s)", "Steady VmRSS (MiB)",
		"full mesh", "route reflectors", "median", "worst",
		"full mesh: agent", "route reflectors: reflector", "route reflectors: client",
		"goal 2 s", "agent goal 64 MiB", "reflector goal 256 MiB",
		"measured 2026-12-03 to 2026-12-05, 2 vCPU, at 18c3124", "1,000",
	} {
		if !strings.Contains(texts, s) {
			t.Errorf("svg text lacks %q; texts:\n%s", s, texts)
		}
	}

	// Recording the same point again rewrites both files unchanged.
	if err := Record(dir, rerun); err != nil {
		t.Fatal(err)
	}
	again, err := os.ReadFile(filepath.Join(dir, PlotFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(svg, again) {
		t.Error("svg differs after re-recording an unchanged point")
	}
	data2, err := os.ReadFile(filepath.Join(dir, DataFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, data2) {
		t.Errorf("%s differs after re-recording an unchanged point", DataFile)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 2 {
		t.Errorf("dir holds %v (%v), want only %s and %s", entries, err, DataFile, PlotFile)
	}
}

func TestRenderDeterministic(t *testing.T) {
	pts := samplePoints()
	var a, b bytes.Buffer
	if err := Render(&a, pts); err != nil {
		t.Fatal(err)
	}
	// Reversed input, fresh maps: the same picture.
	rev := make([]Point, len(pts))
	for i, p := range pts {
		rev[len(pts)-1-i] = p
	}
	if err := Render(&b, rev); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two renderings of the same points differ")
	}
	checkSVG(t, a.Bytes())
}

func TestRenderSinglePoint(t *testing.T) {
	p := Point{Topology: "full mesh", Nodes: 3, JoinMedian: 0.5, JoinWorst: 0.8,
		MemoryMiB: map[string]float64{"agent": 40}, Date: "2026-12-03"}
	var buf bytes.Buffer
	if err := Render(&buf, []Point{p}); err != nil {
		t.Fatal(err)
	}
	texts := strings.Join(checkSVG(t, buf.Bytes()), "\n")
	for _, s := range []string{"full mesh", "full mesh: agent", "measured 2026-12-03"} {
		if !strings.Contains(texts, s) {
			t.Errorf("svg text lacks %q", s)
		}
	}
	// The point's marker is drawn even though there is no line to draw through it.
	if n := strings.Count(buf.String(), "<path"); n < 10 {
		t.Errorf("only %d paths in the svg of one point", n)
	}
}

func TestRenderNoPoints(t *testing.T) {
	if err := Render(io.Discard, nil); err == nil {
		t.Error("Render of no points succeeded")
	}
}

func TestRecordMalformed(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, DataFile)
	bad := []byte("[{\"topology\": \"full mesh\", \"nodes\": 3,\n")
	if err := os.WriteFile(path, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	err := Record(dir, samplePoints()[0])
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Record over a malformed %s: %v, want an error naming it", path, err)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, bad) {
		t.Errorf("malformed file changed to %q (%v)", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, PlotFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s written despite the error: %v", PlotFile, err)
	}
}

func TestRecordInvalidPoint(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []Point{
		{Nodes: 3, Date: "2026-12-03"},
		{Topology: "full mesh", Nodes: 0, Date: "2026-12-03"},
		{Topology: "full mesh", Nodes: 3, Date: "3 Dec 2026"},
	} {
		if err := Record(dir, p); err == nil {
			t.Errorf("Record(%+v) succeeded", p)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("invalid points left files: %v", entries)
	}
}

func TestFormatNumber(t *testing.T) {
	for v, want := range map[float64]string{0.5: "0.5", 2: "2", 500: "500", 1000: "1,000", 20000: "20,000", 1e6: "1,000,000"} {
		if got := formatNumber(v); got != want {
			t.Errorf("formatNumber(%v) = %q, want %q", v, got, want)
		}
	}
}
