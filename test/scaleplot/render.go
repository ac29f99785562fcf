package scaleplot

import (
	"bytes"
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// The goals the benchmarks are held to, drawn as dashed lines.
const (
	joinGoalSeconds  = 2
	agentGoalMiB     = 64
	reflectorGoalMiB = 256
)

const (
	plotWidth    = 10 * vg.Inch
	plotHeight   = 4.5 * vg.Inch
	captionSpace = 24 // points above the panels
	legendRow    = 14 // points per legend row
	// legendWidth is about the width of a panel's data area, which legends fill.
	legendWidth = (plotWidth - 60) / 2
)

// palette is Okabe and Ito's, told apart with most kinds of colour blindness.
var palette = []color.Color{
	color.RGBA{0x00, 0x72, 0xb2, 0xff}, // blue
	color.RGBA{0xe6, 0x9f, 0x00, 0xff}, // orange
	color.RGBA{0x00, 0x9e, 0x73, 0xff}, // green
	color.RGBA{0xcc, 0x79, 0xa7, 0xff}, // purple
	color.RGBA{0xd5, 0x5e, 0x00, 0xff}, // vermillion
	color.RGBA{0x56, 0xb4, 0xe9, 0xff}, // sky blue
	color.RGBA{0x00, 0x00, 0x00, 0xff},
}

var (
	goalColor = color.Gray{0x55}
	gridColor = color.Gray{0xdd}
	glyphs    = []draw.GlyphDrawer{draw.CircleGlyph{}, draw.PyramidGlyph{}, draw.BoxGlyph{}, draw.RingGlyph{}, draw.TriangleGlyph{}, draw.SquareGlyph{}}
	dashes    = []vg.Length{vg.Points(4), vg.Points(3)}
)

// Render draws the SVG from the points (exported so a test can call it).
func Render(w io.Writer, points []Point) (err error) {
	if len(points) == 0 {
		return errors.New("no points to plot")
	}
	pts := append([]Point(nil), points...)
	sortPoints(pts)
	for _, p := range pts {
		if p.Nodes <= 0 {
			return fmt.Errorf("%s: %d nodes cannot be placed on a log axis", p.Topology, p.Nodes)
		}
	}
	// gonum/plot reports some bad input (an empty range on a log axis, a font it cannot measure) by panicking.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("draw plot: %v", r)
		}
	}()

	topologies, topoColor := topologyColors(pts)
	xmin, xmax := nodeRange(pts)
	join, joinLegend, err := joinPanel(pts, topologies, topoColor, xmin, xmax)
	if err != nil {
		return err
	}
	mem, memLegend, err := memoryPanel(pts, topologies, topoColor, xmin, xmax)
	if err != nil {
		return err
	}

	canvas := vgsvg.New(plotWidth, plotHeight)
	dc := draw.New(canvas)
	// An opaque background keeps the black text readable on a dark page.
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	dc.FillText(textStyle(10, text.XCenter, text.YTop), vg.Point{X: plotWidth / 2, Y: plotHeight - 6}, caption(pts))

	rows := max(legendRows(joinLegend), legendRows(memLegend))
	panels := draw.Crop(dc, 0, 0, vg.Length(rows*legendRow)+8, -captionSpace)
	plots := [][]*plot.Plot{{join, mem}}
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: 24, PadLeft: 6, PadRight: 12, PadTop: 2, PadBottom: 2}
	canvases := plot.Align(plots, tiles, panels)
	for i, p := range plots[0] {
		p.Draw(canvases[0][i])
		data := p.DataCanvas(canvases[0][i])
		drawLegend(dc, []legendEntry{joinLegend, memLegend}[i], data.Min.X, data.Max.X, dc.Min.Y+vg.Length(rows*legendRow)+4)
	}

	var buf bytes.Buffer
	if _, err := canvas.WriteTo(&buf); err != nil {
		return fmt.Errorf("write svg: %w", err)
	}
	// Liberation Sans has Arial's metrics: a viewer without it still lays the text out as measured here.
	out := bytes.ReplaceAll(buf.Bytes(), []byte("font-family:Liberation Sans;"),
		[]byte("font-family:'Liberation Sans',Arial,Helvetica,sans-serif;"))
	if _, err := w.Write(out); err != nil {
		return fmt.Errorf("write svg: %w", err)
	}
	return nil
}

// topologyColors gives each topology, in sorted order, a colour used in both panels.
func topologyColors(pts []Point) ([]string, map[string]color.Color) {
	var topologies []string
	colors := map[string]color.Color{}
	for _, p := range pts {
		if _, ok := colors[p.Topology]; !ok {
			colors[p.Topology] = palette[len(topologies)%len(palette)]
			topologies = append(topologies, p.Topology)
		}
	}
	return topologies, colors
}

// nodeRange spans 3 to 1,000 nodes at least, so plots of a partial run keep the scale of the full one.
func nodeRange(pts []Point) (float64, float64) {
	lo, hi := 3.0, 1000.0
	for _, p := range pts {
		lo = min(lo, float64(p.Nodes))
		hi = max(hi, float64(p.Nodes))
	}
	return lo / 1.3, hi * 1.3
}

func joinPanel(pts []Point, topologies []string, topoColor map[string]color.Color, xmin, xmax float64) (*plot.Plot, legendEntry, error) {
	p := newPanel("Node join: created -> routed on every node (s)", "seconds")
	var legend legendEntry
	values := []float64{joinGoalSeconds}
	for i, topo := range topologies {
		var median, worst plotter.XYs
		for _, pt := range pts {
			if pt.Topology != topo {
				continue
			}
			if usable(pt.JoinMedian) {
				median = append(median, plotter.XY{X: float64(pt.Nodes), Y: pt.JoinMedian})
			}
			if usable(pt.JoinWorst) {
				worst = append(worst, plotter.XY{X: float64(pt.Nodes), Y: pt.JoinWorst})
			}
		}
		if len(median) == 0 && len(worst) == 0 {
			continue
		}
		glyph := glyphs[i%len(glyphs)]
		thumbs := addSeries(p, median, topoColor[topo], glyph, nil)
		addSeries(p, worst, topoColor[topo], glyph, dashes)
		legend.add(topo, thumbs)
		for _, xy := range append(median, worst...) {
			values = append(values, xy.Y)
		}
	}
	legend.add("median", sampleThumbs(nil))
	legend.add("worst", sampleThumbs(dashes))

	if err := addGoal(p, joinGoalSeconds, "goal 2 s", xmin, xmax); err != nil {
		return nil, legendEntry{}, err
	}
	setY(p, values, 30)
	setX(p, xmin, xmax)
	return p, legend, nil
}

func memoryPanel(pts []Point, topologies []string, topoColor map[string]color.Color, xmin, xmax float64) (*plot.Plot, legendEntry, error) {
	p := newPanel("Steady VmRSS (MiB)", "MiB")
	var legend legendEntry
	values := []float64{agentGoalMiB, reflectorGoalMiB}
	next := len(topologies) // colours past the topologies' go to a topology's second and later roles
	series := 0
	for _, topo := range topologies {
		for r, role := range roles(pts, topo) {
			var xys plotter.XYs
			for _, pt := range pts {
				if v, ok := pt.MemoryMiB[role]; ok && pt.Topology == topo && usable(v) {
					xys = append(xys, plotter.XY{X: float64(pt.Nodes), Y: v})
					values = append(values, v)
				}
			}
			if len(xys) == 0 {
				continue
			}
			c := topoColor[topo]
			if r > 0 {
				c = palette[next%len(palette)]
				next++
			}
			thumbs := addSeries(p, xys, c, glyphs[series%len(glyphs)], nil)
			series++
			legend.add(topo+": "+role, thumbs)
		}
	}
	if err := addGoal(p, agentGoalMiB, "agent goal 64 MiB", xmin, xmax); err != nil {
		return nil, legendEntry{}, err
	}
	if err := addGoal(p, reflectorGoalMiB, "reflector goal 256 MiB", xmin, xmax); err != nil {
		return nil, legendEntry{}, err
	}
	setY(p, values, 10)
	setX(p, xmin, xmax)
	return p, legend, nil
}

// roles lists the memory roles of a topology: agent, reflector, client first, then any other by name.
func roles(pts []Point, topo string) []string {
	rank := map[string]int{"agent": 0, "reflector": 1, "client": 2}
	seen := map[string]bool{}
	var out []string
	for _, p := range pts {
		if p.Topology != topo {
			continue
		}
		for role := range p.MemoryMiB {
			if !seen[role] {
				seen[role] = true
				out = append(out, role)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		ri, iok := rank[out[i]]
		rj, jok := rank[out[j]]
		switch {
		case iok && jok:
			return ri < rj
		case iok != jok:
			return iok
		}
		return out[i] < out[j]
	})
	return out
}

func usable(v float64) bool { return v > 0 && !math.IsInf(v, 0) && !math.IsNaN(v) }

func newPanel(title, ylabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle = textStyle(11, text.XCenter, text.YTop)
	p.Title.Padding = 6
	p.X.Label.Text = "nodes"
	p.Y.Label.Text = ylabel
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = sans(10)
		a.Tick.Label.Font = sans(9)
	}
	grid := plotter.NewGrid()
	grid.Vertical.Color, grid.Horizontal.Color = gridColor, gridColor
	p.Add(grid)
	return p
}

// addSeries draws xys with markers, joined by a line when there are two points or more, and returns the legend's
// thumbnails for it.
func addSeries(p *plot.Plot, xys plotter.XYs, c color.Color, glyph draw.GlyphDrawer, dash []vg.Length) []plot.Thumbnailer {
	if len(xys) == 0 {
		return nil
	}
	line, scatter := seriesStyle(xys, c, glyph, dash)
	if len(xys) > 1 {
		p.Add(line)
	}
	p.Add(scatter)
	return []plot.Thumbnailer{line, scatter}
}

func seriesStyle(xys plotter.XYs, c color.Color, glyph draw.GlyphDrawer, dash []vg.Length) (*plotter.Line, *plotter.Scatter) {
	line := &plotter.Line{XYs: xys, LineStyle: draw.LineStyle{Color: c, Width: vg.Points(1.5), Dashes: dash}}
	radius := vg.Points(2.5)
	if dash != nil {
		radius = vg.Points(1.8) // the worst marks stay smaller than the medians they share the colour with
	}
	scatter := &plotter.Scatter{XYs: xys, GlyphStyle: draw.GlyphStyle{Color: c, Radius: radius, Shape: glyph}}
	return line, scatter
}

// sampleThumbs is a grey legend sample telling the solid median line from the dashed worst one.
func sampleThumbs(dash []vg.Length) []plot.Thumbnailer {
	line, _ := seriesStyle(nil, color.Gray{0x44}, nil, dash)
	return []plot.Thumbnailer{line}
}

func addGoal(p *plot.Plot, goal float64, label string, xmin, xmax float64) error {
	line := &plotter.Line{
		XYs:       plotter.XYs{{X: xmin, Y: goal}, {X: xmax, Y: goal}},
		LineStyle: draw.LineStyle{Color: goalColor, Width: vg.Points(1), Dashes: []vg.Length{vg.Points(2), vg.Points(2)}},
	}
	// At the small end of the axis, where the lines run lowest, so the label rarely sits on one.
	labels, err := plotter.NewLabels(plotter.XYLabels{XYs: plotter.XYs{{X: xmin, Y: goal}}, Labels: []string{label}})
	if err != nil {
		return fmt.Errorf("goal label %q: %w", label, err)
	}
	sty := textStyle(8, text.XLeft, text.YBottom)
	sty.Color = goalColor
	labels.TextStyle[0] = sty
	labels.Offset = vg.Point{X: 3, Y: 2}
	p.Add(line, labels)
	return nil
}

func setX(p *plot.Plot, xmin, xmax float64) {
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.TickerFunc(ticks125)
	p.X.Min, p.X.Max = xmin, xmax
}

// setY spans the values and goals: from zero, or on a log scale when the largest is more than logRatio times the
// smallest.
func setY(p *plot.Plot, values []float64, logRatio float64) {
	lo, hi := values[0], values[0]
	for _, v := range values {
		lo, hi = min(lo, v), max(hi, v)
	}
	if hi/lo > logRatio {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.TickerFunc(ticks125)
		p.Y.Min, p.Y.Max = lo/1.4, hi*1.4
		return
	}
	p.Y.Min, p.Y.Max = 0, hi*1.15
	p.Y.Tick.Marker = plot.TickerFunc(linearTicks)
}

// linearTicks are gonum's default ticks, labelled 250 rather than 250.00.
func linearTicks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i, t := range ticks {
		if t.Label != "" {
			// Six significant digits drop the float noise of steps such as 0.1*3.
			v, err := strconv.ParseFloat(strconv.FormatFloat(t.Value, 'g', 6, 64), 64)
			if err == nil {
				ticks[i].Label = formatNumber(v)
			}
		}
	}
	return ticks
}

// ticks125 labels 1, 2 and 5 of each decade and marks the other integers of it, for log axes.
func ticks125(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for d := math.Floor(math.Log10(lo)); d <= math.Ceil(math.Log10(hi)); d++ {
		base := math.Pow(10, d)
		for m := 1; m <= 9; m++ {
			v := float64(m) * base
			if v < lo || v > hi {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 || m == 2 || m == 5 {
				t.Label = formatNumber(v)
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}

// formatNumber writes 0.5, 20 or 1,000.
func formatNumber(v float64) string {
	s := strconv.FormatFloat(v, 'f', -1, 64)
	if v < 1000 {
		return s
	}
	whole, frac, _ := strings.Cut(s, ".")
	var b strings.Builder
	for i, r := range whole {
		if i > 0 && (len(whole)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if frac != "" {
		b.WriteString("." + frac)
	}
	return b.String()
}

// caption says when, where and at which commit the points were measured.
func caption(pts []Point) string {
	var dates, machines, commits []string
	for _, p := range pts {
		dates = append(dates, p.Date)
		machines = append(machines, p.Machine)
		commits = append(commits, p.Commit)
	}
	dates, machines, commits = distinct(dates), distinct(machines), distinct(commits)
	s := "podroute scale benchmarks, measured " + dates[0]
	if len(dates) > 1 {
		s += " to " + dates[len(dates)-1]
	}
	if len(machines) > 0 {
		s += ", " + strings.Join(machines, "; ")
	}
	switch {
	case len(commits) == 1:
		s += ", at " + commits[0]
	case len(commits) > 1 && len(commits) <= 3:
		s += ", at " + strings.Join(commits, ", ")
	case len(commits) > 3:
		s += fmt.Sprintf(", at %d commits", len(commits))
	}
	return s
}

// distinct sorts the non-empty strings and drops repeats.
func distinct(in []string) []string {
	sort.Strings(in)
	var out []string
	for _, s := range in {
		if s != "" && (len(out) == 0 || out[len(out)-1] != s) {
			out = append(out, s)
		}
	}
	return out
}

// legendEntry is one panel's legend, laid out in a grid under the panel rather than over its lines.
type legendEntry struct {
	names  []string
	thumbs [][]plot.Thumbnailer
}

func (l *legendEntry) add(name string, thumbs []plot.Thumbnailer) {
	l.names = append(l.names, name)
	l.thumbs = append(l.thumbs, thumbs)
}

func legendRows(l legendEntry) int { return (len(l.names) + legendCols(l) - 1) / legendCols(l) }

// legendCols is two columns of entries, or one when an entry would not fit in half a panel.
func legendCols(l legendEntry) int {
	style := textStyle(9, text.XLeft, text.YBottom)
	for _, name := range l.names {
		if style.Width(name)+vg.Points(24+12) > legendWidth/2 {
			return 1
		}
	}
	return 2
}

// drawLegend fills rows of legendCols(l) entries from top (just under the panel's axis) down, between x0 and x1.
func drawLegend(dc draw.Canvas, l legendEntry, x0, x1, top vg.Length) {
	cols := legendCols(l)
	colW := (x1 - x0) / vg.Length(cols)
	for i, name := range l.names {
		row, col := i/cols, i%cols
		cell := draw.Canvas{Canvas: dc.Canvas, Rectangle: vg.Rectangle{
			Min: vg.Point{X: x0 + vg.Length(col)*colW, Y: top - vg.Length((row+1)*legendRow)},
			Max: vg.Point{X: x0 + vg.Length(col+1)*colW, Y: top - vg.Length(row*legendRow)},
		}}
		leg := plot.NewLegend()
		leg.TextStyle = textStyle(9, text.XLeft, text.YBottom)
		leg.Top, leg.Left = true, true
		leg.ThumbnailWidth = vg.Points(24)
		leg.Add(name, l.thumbs[i]...)
		leg.Draw(cell)
	}
}

func sans(size vg.Length) font.Font {
	return font.Font{Typeface: "Liberation", Variant: "Sans", Size: size}
}

func textStyle(size vg.Length, x text.XAlignment, y text.YAlignment) text.Style {
	return text.Style{Font: sans(size), XAlign: x, YAlign: y, Handler: plot.DefaultTextHandler}
}
