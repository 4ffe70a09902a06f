package main

import (
	"fmt"
	"image/color"
	"os"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
}

// plotMode draws one run over time, as three aligned panels sharing the
// time axis: each rule's current limit, in-flight and queued; the server
// cgroup's memory against its limit; the probe's latency.
func plotMode(m *runResult, path string) error {
	memLimit := m.MemLimit
	series := func(get func(sample) (float64, bool)) plotter.XYs {
		var xy plotter.XYs
		for _, s := range m.Samples {
			if v, ok := get(s); ok {
				xy = append(xy, plotter.XY{X: s.T, Y: v})
			}
		}
		return xy
	}
	addLine := func(p *plot.Plot, name string, xy plotter.XYs, c color.Color, dashed bool) error {
		if len(xy) == 0 {
			return nil
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return err
		}
		l.Color, l.Width = c, vg.Points(1.3)
		if dashed {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		p.Add(l)
		p.Legend.Add(name, l)
		return nil
	}

	lim := plot.New()
	lim.Title.Text = fmt.Sprintf("%s over %s, mode %s: limits, in flight, queued", m.Scenario, m.Transport, m.Mode)
	lim.Y.Label.Text = "commands"
	lim.Legend.Top, lim.Legend.Left = true, false
	i := 0
	rules := map[string]bool{}
	for _, s := range m.Samples {
		for k := range s.Limit {
			rules[k] = rules[k] || s.InFlight[k] > 0 || s.Queued[k] > 0
		}
	}
	for _, rule := range slices.Sorted(mapKeys(rules)) {
		if !rules[rule] {
			continue // a rule nothing in this storm used
		}
		for _, k := range []struct {
			what   string
			get    func(sample) map[string]float64
			dashed bool
		}{
			{"limit", func(s sample) map[string]float64 { return s.Limit }, true},
			{"in flight", func(s sample) map[string]float64 { return s.InFlight }, false},
			{"queued", func(s sample) map[string]float64 { return s.Queued }, false},
		} {
			xy := series(func(s sample) (float64, bool) {
				mp := k.get(s)
				if mp == nil {
					return 0, false
				}
				return mp[rule], true
			})
			if err := addLine(lim, rule+" "+k.what, xy, palette[i%len(palette)], k.dashed); err != nil {
				return err
			}
			i++
		}
	}

	mem := plot.New()
	mem.Y.Label.Text = "server memory MiB"
	mem.Y.Min = 0
	mem.Legend.Top = true
	memXY := series(func(s sample) (float64, bool) { return float64(s.MemBytes) / (1 << 20), true })
	if err := addLine(mem, "usage (cgroup)", memXY, palette[0], false); err != nil {
		return err
	}
	if len(memXY) > 0 {
		limXY := plotter.XYs{{X: memXY[0].X, Y: float64(memLimit) / (1 << 20)}, {X: memXY[len(memXY)-1].X, Y: float64(memLimit) / (1 << 20)}}
		if err := addLine(mem, "limit", limXY, palette[1], true); err != nil {
			return err
		}
	}

	pr := plot.New()
	pr.X.Label.Text = "seconds since the storm started"
	pr.Y.Label.Text = "probe ls-remote ms"
	pr.Y.Min = 0
	pr.Legend.Top = true
	var okXY, badXY plotter.XYs
	for _, o := range m.ProbeStormOps {
		pt := plotter.XY{X: o.Start.Seconds() + o.Seconds, Y: o.Seconds * 1000}
		if o.Outcome == ok {
			okXY = append(okXY, pt)
		} else {
			badXY = append(badXY, pt)
		}
	}
	if err := addLine(pr, "latency", okXY, palette[2], false); err != nil {
		return err
	}
	if len(badXY) > 0 {
		sc, err := plotter.NewScatter(badXY)
		if err != nil {
			return err
		}
		sc.Color = palette[1]
		pr.Add(sc)
		pr.Legend.Add("failed", sc)
	}
	// One time axis for all panels.
	maxT := 0.0
	for _, p := range []*plot.Plot{lim, mem, pr} {
		maxT = max(maxT, p.X.Max)
	}
	for _, p := range []*plot.Plot{lim, mem, pr} {
		p.X.Min, p.X.Max = 0, maxT
		p.Add(plotter.NewGrid())
	}

	const w, h = 11 * vg.Inch, 10 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 3, Cols: 1, PadX: vg.Millimeter, PadY: 3 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 2 * vg.Millimeter}
	plots := [][]*plot.Plot{{lim}, {mem}, {pr}}
	canvases := plot.Align(plots, tiles, dc)
	for r := range plots {
		plots[r][0].Draw(canvases[r][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// plotSweep draws a scenario's sweep: goodput and peak server memory
// against the host-wide pack-objects limit, with the modes' goodput as
// horizontal reference lines.
func plotSweep(pr *pairResult, path string) error {
	gp := plot.New()
	gp.Title.Text = fmt.Sprintf("%s over %s: sweep of one host-wide pack-objects limit", pr.Scenario, pr.Transport)
	gp.Y.Label.Text = "goodput (completed ops / min)"
	gp.Y.Min = 0
	gp.Legend.Top = true
	mib := plot.New()
	mib.Y.Label.Text = "pack MiB received / min"
	mib.Y.Min = 0
	mib.Legend.Top = true
	mem := plot.New()
	mem.X.Label.Text = "pack-objects limit (key = \"global\")"
	mem.Y.Label.Text = "peak server MiB"
	mem.Y.Min = 0
	mem.Legend.Top = true
	var g, b, m plotter.XYs
	for _, r := range pr.Sweep {
		g = append(g, plotter.XY{X: float64(r.Limit), Y: r.S.Goodput})
		b = append(b, plotter.XY{X: float64(r.Limit), Y: r.S.MiBPerMin})
		m = append(m, plotter.XY{X: float64(r.Limit), Y: float64(r.PeakMem) / (1 << 20)})
	}
	for _, c := range []struct {
		p    *plot.Plot
		xy   plotter.XYs
		name string
	}{{gp, g, "sweep goodput"}, {mib, b, "sweep MiB/min"}, {mem, m, "sweep peak memory"}} {
		l, pts, err := plotter.NewLinePoints(c.xy)
		if err != nil {
			return err
		}
		l.Color, pts.Color = palette[0], palette[0]
		c.p.Add(l, pts)
		c.p.Legend.Add(c.name, l, pts)
	}
	if len(g) == 0 {
		return nil
	}
	lo, hi := g[0].X, g[len(g)-1].X
	for i, a := range pr.modes() {
		var mb []float64
		for _, r := range a.Runs {
			mb = append(mb, r.S.MiBPerMin)
		}
		for _, c := range []struct {
			p *plot.Plot
			y float64
		}{{gp, a.Goodput.Mean}, {mib, spreadOf(mb).Mean}, {mem, a.PeakMiB.Mean}} {
			l, err := plotter.NewLine(plotter.XYs{{X: lo, Y: c.y}, {X: hi, Y: c.y}})
			if err != nil {
				return err
			}
			l.Color = palette[(i+1)%len(palette)]
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			c.p.Add(l)
			c.p.Legend.Add(a.Name, l)
		}
	}
	capXY := plotter.XYs{{X: lo, Y: float64(pr.Sweep[0].MemLimit) / (1 << 20)}, {X: hi, Y: float64(pr.Sweep[0].MemLimit) / (1 << 20)}}
	if l, err := plotter.NewLine(capXY); err == nil {
		l.Color, l.Width = color.Black, vg.Points(1.5)
		mem.Add(l)
		mem.Legend.Add("cap", l)
	}
	for _, p := range []*plot.Plot{gp, mib, mem} {
		p.Add(plotter.NewGrid())
	}
	const w, h = 10 * vg.Inch, 11 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 3, Cols: 1, PadX: vg.Millimeter, PadY: 3 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 2 * vg.Millimeter}
	plots := [][]*plot.Plot{{gp}, {mib}, {mem}}
	canvases := plot.Align(plots, tiles, dc)
	for r := range plots {
		plots[r][0].Draw(canvases[r][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
