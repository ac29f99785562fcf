// Package scaleplot records the figures of podroute's scale benchmarks (test/agentbench) in a JSON file and draws
// them as an SVG plot of node join time and agent memory against cluster size, both meant to be checked in.
package scaleplot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// File names inside the directory given to Record.
const (
	DataFile = "scale.json"
	PlotFile = "scale.svg"
)

// Point is one benchmark run's figures at one cluster size.
type Point struct {
	Topology   string             `json:"topology"`          // "full mesh" or "route reflectors"
	Nodes      int                `json:"nodes"`             // cluster size
	JoinMedian float64            `json:"joinMedianSeconds"` // a new Node created -> its pod CIDR routed on every other node, median
	JoinWorst  float64            `json:"joinWorstSeconds"`
	MemoryMiB  map[string]float64 `json:"memoryMiB"` // steady VmRSS per role: "agent" (mesh), "reflector", "client"
	Commit     string             `json:"commit,omitempty"`
	Date       string             `json:"date"` // YYYY-MM-DD
	Machine    string             `json:"machine,omitempty"`
}

// Record adds p to dir/scale.json (replacing a point with the same Topology and Nodes), keeps the file sorted by
// topology then nodes, and redraws dir/scale.svg from every recorded point. The JSON is indented, stable,
// diff-friendly. An empty p.Date is today's date (UTC). Nothing is written if the recorded points cannot be read
// or drawn.
func Record(dir string, p Point) error {
	if p.Date == "" {
		p.Date = time.Now().UTC().Format(time.DateOnly)
	}
	if err := p.validate(); err != nil {
		return fmt.Errorf("record scale point: %w", err)
	}
	dataPath := filepath.Join(dir, DataFile)
	points, err := load(dataPath)
	if err != nil {
		return err
	}
	points = merge(points, p)

	data, err := json.MarshalIndent(points, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", dataPath, err)
	}
	data = append(data, '\n')
	var svg bytes.Buffer
	if err := Render(&svg, points); err != nil {
		return fmt.Errorf("render %s: %w", filepath.Join(dir, PlotFile), err)
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("record scale point: %w", err)
	}
	if err := writeFile(dataPath, data); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, PlotFile), svg.Bytes())
}

func (p Point) validate() error {
	if p.Topology == "" {
		return errors.New("no topology")
	}
	if p.Nodes <= 0 {
		return fmt.Errorf("%s: %d nodes", p.Topology, p.Nodes)
	}
	if _, err := time.Parse(time.DateOnly, p.Date); err != nil {
		return fmt.Errorf("%s, %d nodes: date %q is not YYYY-MM-DD", p.Topology, p.Nodes, p.Date)
	}
	return nil
}

// load reads the recorded points; a missing file is no points yet.
func load(path string) ([]Point, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var points []Point
	if err := json.Unmarshal(data, &points); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	for i, p := range points {
		if err := p.validate(); err != nil {
			return nil, fmt.Errorf("%s: point %d: %w", path, i, err)
		}
	}
	return points, nil
}

// merge replaces the point of p's topology and size, or adds p, and sorts by topology then nodes.
func merge(points []Point, p Point) []Point {
	out := make([]Point, 0, len(points)+1)
	for _, q := range points {
		if q.Topology != p.Topology || q.Nodes != p.Nodes {
			out = append(out, q)
		}
	}
	out = append(out, p)
	sortPoints(out)
	return out
}

func sortPoints(points []Point) {
	sort.SliceStable(points, func(i, j int) bool {
		if points[i].Topology != points[j].Topology {
			return points[i].Topology < points[j].Topology
		}
		return points[i].Nodes < points[j].Nodes
	})
}

// writeFile replaces path through a rename, so an interrupted benchmark never leaves half a file behind.
func writeFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
