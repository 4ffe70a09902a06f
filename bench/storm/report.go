package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/shirou/gopsutil/v3/cpu"
)

type stats struct {
	N                   int
	P50, P95, P99, Mean float64
}

func summarize(v []float64) stats {
	if len(v) == 0 {
		return stats{}
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	pct := func(p float64) float64 {
		i := int(p*float64(len(s))+0.5) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	return stats{N: len(s), P50: pct(0.50), P95: pct(0.95), P99: pct(0.99), Mean: sum / float64(len(s))}
}

type counts struct {
	OK, Rejected, Timeout, Other, CutOff int
}

func (c counts) Failed() int { return c.Rejected + c.Timeout + c.Other }

func count(ops []op) counts {
	var c counts
	for _, o := range ops {
		switch o.Outcome {
		case ok:
			c.OK++
		case rejected:
			c.Rejected++
		case timedOut:
			c.Timeout++
		case cutOff:
			c.CutOff++
		default:
			c.Other++
		}
	}
	return c
}

// modeResult is what one mode measured.
type modeResult struct {
	Name      string
	Transport string // git or ssh
	Policy    string
	Wall      float64 // seconds from storm start to the last clone's end

	// Load is /proc/loadavg's 1-minute load at the start and the end of
	// the storm: the machine is shared, and other work on it shows here.
	Load [2]float64

	Clones       counts
	CloneLatency stats // seconds, successful clones
	ProbeIdle    stats // ms
	ProbeStorm   stats // ms, successful probes during the storm
	ProbeFailed  int   // probes that failed during the storm
	OOMKills     int64
	PeakMem      int64

	AgentCPU         float64 // seconds over the storm
	AgentRSS         int64   // peak sampled
	AgentRejected    float64 // sluice_commands_total{outcome="rejected"}
	AgentDropped     map[string]float64
	AgentUploadPacks float64
	AgentPackObjects float64
	Backoffs         int
	// QuotaPeriods and QuotaThrottled are the CFS periods of sluice's
	// parent cgroup and how many were throttled (cgroup modes).
	QuotaPeriods, QuotaThrottled float64
	DaemonSluiceLines            int // `sluice:` lines in git daemon's log
	AgentLog                     string

	CloneOps      []op
	ProbeIdleOps  []op
	ProbeStormOps []op
	Samples       []sample

	agentLogText string
}

func (r *modeResult) summarize() {
	r.Clones = count(r.CloneOps)
	var lat []float64
	for _, o := range r.CloneOps {
		if o.Outcome == ok {
			lat = append(lat, o.Seconds)
		}
	}
	r.CloneLatency = summarize(lat)
	ms := func(ops []op) (stats, int) {
		var v []float64
		bad := 0
		for _, o := range ops {
			if o.Outcome == ok {
				v = append(v, o.Seconds*1000)
			} else {
				bad++
			}
		}
		return summarize(v), bad
	}
	r.ProbeIdle, _ = ms(r.ProbeIdleOps)
	r.ProbeStorm, r.ProbeFailed = ms(r.ProbeStormOps)
}

type report struct {
	Started, Finished time.Time
	Options           options `json:"-"`
	Repo              repoParams
	RepoSize          int64
	CPUs              int
	Modes             []*modeResult
}

func (r *report) write(dir, logDir string, plots bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// The agents' logs go outside the report (they are long): for reading
	// why a mode did what it did, not for committing.
	for _, m := range r.Modes {
		if m.agentLogText == "" || logDir == "" {
			continue
		}
		if err := os.MkdirAll(logDir, 0o755); err != nil {
			return err
		}
		name := filepath.Join(logDir, "sluiced-"+fileName(m.label())+".log")
		if err := os.WriteFile(name, []byte(m.agentLogText+"\n"), 0o644); err != nil {
			return err
		}
		m.AgentLog = name
	}
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "storm.json"), b, 0o644); err != nil {
		return err
	}
	var pngs []string
	if plots {
		for _, m := range r.Modes {
			if strings.HasPrefix(m.Name, "adaptive") {
				name := "storm-" + fileName(m.label()) + ".png"
				if err := plotMode(m, r.Options.memLimit, filepath.Join(dir, name)); err != nil {
					return fmt.Errorf("plot %s: %w", m.label(), err)
				}
				pngs = append(pngs, name)
			}
		}
	}
	md := r.markdown(pngs)
	fmt.Print(md)
	return os.WriteFile(filepath.Join(dir, "storm.md"), []byte(md), 0o644)
}

func (r *report) markdown(pngs []string) string {
	var b strings.Builder
	o := r.Options
	p := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	p("# Clone storm — %s\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"))
	p("`go run ./bench/storm -bin %s -modes %s -transport %s -clients %d -duration %v -mem %d` on %d CPUs; total %v.\n\n",
		o.bin, o.modes, o.transport, o.clients, o.duration, o.memLimit, r.CPUs, r.Finished.Sub(r.Started).Round(time.Second))
	p("- Repository: %d files × %d B under two directory levels, then %d commits changing %d files each "+
		"(git fast-import, one pack; %.0f MiB on disk), served on 127.0.0.1 by `git daemon --max-connections=0` (git://) "+
		"or by sshd with git-shell as the forced command (ssh; MaxStartups raised above the client count; an ssh connection costs ~0.3 s of CPU here).\n",
		r.Repo.Files, r.Repo.Bytes, r.Repo.Commits, r.Repo.Changes, float64(r.RepoSize)/(1<<20))
	p("- The small host: a cgroup v1 memory cgroup limited to %.0f MiB holding the server (git daemon or sshd), every git it runs, and sluiced with its bucket cgroups. "+
		"The `+cgroups` modes also put a CPU quota of %.1f CPUs on sluice's parent cgroup (where admitted git runs); the other modes have no CPU limit.\n",
		float64(o.memLimit)/(1<<20), float64(cpuQuotaUs)/1e5)
	p("- Load: %d clients each running `git clone --bare` in a loop for %v (per-clone timeout %v; clones still running %v after the end are stopped and counted as *unfinished*, neither ok nor failed); "+
		"a probe runs `git ls-remote` of a small repository once per second, for %v idle before the storm (baseline) and through it.\n",
		o.clients, o.duration, o.cloneTimeout, o.drain, o.idle)
	p("- Policies were fixed in the source before the measured run (bench/storm/server.go) and are listed below; nothing was tuned on this run.\n\n")

	p("| mode | clones ok | failed: sluice `sluice:` / agent rejected | timeout | other | unfinished at end | OOM kills | peak server MiB | clone p50 / p95 / p99 / mean s | probe p50 / p95 / p99 / mean ms | probe failed | agent CPU s | agent RSS MiB | load 1m start → end |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, m := range r.Modes {
		c := m.Clones
		agentCol := "—"
		cpuCol, rssCol := "—", "—"
		if m.Policy != "" {
			agentCol = fmt.Sprintf("%d / %.0f", c.Rejected, m.AgentRejected)
			cpuCol, rssCol = fmt.Sprintf("%.2f", m.AgentCPU), fmt.Sprintf("%.1f", float64(m.AgentRSS)/(1<<20))
		} else if c.Rejected > 0 {
			agentCol = fmt.Sprintf("%d / —", c.Rejected)
		}
		p("| %s | %d | %s | %d | %d | %d | %d | %.0f | %.2f / %.2f / %.2f / %.2f | %.0f / %.0f / %.0f / %.0f | %d | %s | %s | %.1f → %.1f |\n",
			m.label(), c.OK, agentCol, c.Timeout, c.Other, c.CutOff, m.OOMKills, float64(m.PeakMem)/(1<<20),
			m.CloneLatency.P50, m.CloneLatency.P95, m.CloneLatency.P99, m.CloneLatency.Mean,
			m.ProbeStorm.P50, m.ProbeStorm.P95, m.ProbeStorm.P99, m.ProbeStorm.Mean, m.ProbeFailed, cpuCol, rssCol, m.Load[0], m.Load[1])
	}
	p("\nIdle probe (baseline, before each storm):\n\n| mode | probes | p50 ms | p95 ms | p99 ms | mean ms |\n|---|---|---|---|---|---|\n")
	allIdle := map[string][]float64{} // by transport
	var transports []string
	for _, m := range r.Modes {
		p("| %s | %d | %.1f | %.1f | %.1f | %.1f |\n", m.label(), m.ProbeIdle.N, m.ProbeIdle.P50, m.ProbeIdle.P95, m.ProbeIdle.P99, m.ProbeIdle.Mean)
		if _, ok := allIdle[m.Transport]; !ok {
			transports = append(transports, m.Transport)
		}
		allIdle[m.Transport] = append(allIdle[m.Transport], nil...)
		for _, o := range m.ProbeIdleOps {
			if o.Outcome == ok {
				allIdle[m.Transport] = append(allIdle[m.Transport], o.Seconds*1000)
			}
		}
	}
	idle := map[string]stats{}
	for _, tr := range transports {
		idle[tr] = summarize(allIdle[tr])
		st := idle[tr]
		p("| all over %s | %d | %.1f | %.1f | %.1f | %.1f |\n", tr, st.N, st.P50, st.P95, st.P99, st.Mean)
	}

	ratio := func(a, b float64) string {
		if b == 0 {
			return "—"
		}
		return fmt.Sprintf("×%.2f", a/b)
	}
	// Each sluice mode against no sluice, and each adaptive mode against
	// its like-for-like static mode.
	against := map[string][]string{
		"static":         {"adaptive", "adaptive-ws", "adaptive-anon"},
		"static+cgroups": {"adaptive+cgroups"},
	}
	for _, base := range []string{"none", "static", "static+cgroups"} {
		var rows []*modeResult
		for _, m := range r.Modes {
			if r.find(base, m.Transport) == nil || m.Name == base {
				continue
			}
			if base == "none" || slices.Contains(against[base], m.Name) {
				rows = append(rows, m)
			}
		}
		if len(rows) == 0 {
			continue
		}
		p("\nRatios against `%s` over the same transport (same run):\n\n| mode | clones ok | clone p50 | clone p99 | probe p50 | probe p99 | peak memory | OOM kills |\n|---|---|---|---|---|---|---|---|\n", base)
		for _, m := range rows {
			none := r.find(base, m.Transport)
			p("| %s | %s | %s | %s | %s | %s | %s | %d vs %d |\n", m.label(),
				ratio(float64(m.Clones.OK), float64(none.Clones.OK)),
				ratio(m.CloneLatency.P50, none.CloneLatency.P50), ratio(m.CloneLatency.P99, none.CloneLatency.P99),
				ratio(m.ProbeStorm.P50, none.ProbeStorm.P50), ratio(m.ProbeStorm.P99, none.ProbeStorm.P99),
				ratio(float64(m.PeakMem), float64(none.PeakMem)), m.OOMKills, none.OOMKills)
		}
	}
	p("\nProbe p99 during the storm against the idle probe p99 of the same transport (all modes):")
	for _, m := range r.Modes {
		if st := idle[m.Transport]; st.P99 > 0 {
			p(" %s ×%.1f (of %.1f ms);", m.label(), m.ProbeStorm.P99/st.P99, st.P99)
		}
	}
	p("\n\nWhat the agent counted (per mode, fresh agent):\n\n| mode | upload-pack | pack-objects | rejected | dropped max_size / max_time / unavailable | limit decreases (per rule) | `sluice:` lines in server log | CPU quota: throttled / periods (parent) |\n|---|---|---|---|---|---|---|---|\n")
	for _, m := range r.Modes {
		if m.Policy == "" {
			continue
		}
		quota := "no quota"
		if m.QuotaPeriods > 0 {
			quota = fmt.Sprintf("%.0f / %.0f = %.2f", m.QuotaThrottled, m.QuotaPeriods, m.QuotaThrottled/m.QuotaPeriods)
		}
		p("| %s | %.0f | %.0f | %.0f | %.0f / %.0f / %.0f | %d | %d | %s |\n", m.label(), m.AgentUploadPacks, m.AgentPackObjects, m.AgentRejected,
			m.AgentDropped["max_size"], m.AgentDropped["max_time"], m.AgentDropped["unavailable"], m.Backoffs, m.DaemonSluiceLines, quota)
	}
	p("\nFailure columns: `sluice:` = the client saw sluice's message (pack-objects rejections reach git:// clients as `remote: sluice: …`); " +
		"agent rejected = every rejection the agent counted (an upload-pack rejection over git:// reaches the client only as a hang-up, so it lands under \"other\" on the client side); " +
		"other = hung up or errors (OOM kills among them); timeout = the per-clone timeout.\n")
	for _, png := range pngs {
		p("\n![%s](%s)\n", png, png)
	}
	p("\n## Policies\n\n")
	seen := map[string]bool{}
	for _, m := range r.Modes {
		if seen[m.Name] {
			continue // the same policy over another transport
		}
		seen[m.Name] = true
		if m.Policy == "" {
			p("`%s`: no sluice; the server runs the real git.\n\n", m.Name)
			continue
		}
		p("`%s` (plus `[agent]` socket/metrics, `[git] bin = \"/usr/bin/git\"`, `[ebpf] enabled = false`):\n\n```toml\n%s\n```\n\n", m.Name, m.Policy)
	}
	return b.String()
}

func (r *report) find(name, transport string) *modeResult {
	for _, m := range r.Modes {
		if m.Name == name && m.Transport == transport {
			return m
		}
	}
	return nil
}

// label names the mode in the report, with the transport when not git://.
func (m *modeResult) label() string {
	return mode{Name: m.Name, Transport: m.Transport}.label()
}

// smokeCheck fails on anything a working harness on a tiny repository
// would not do: a mode without completed clones, any failure, a probe that
// never answered, sluice modes whose git never went through the shim.
func (r *report) smokeCheck() error {
	var errs []error
	for _, m := range r.Modes {
		if m.Clones.OK == 0 {
			errs = append(errs, fmt.Errorf("%s: no clone completed", m.Name))
		}
		if m.Clones.Failed() > 0 || m.Clones.CutOff > 0 {
			errs = append(errs, fmt.Errorf("%s: %d clones failed, %d unfinished (first: %s)", m.Name, m.Clones.Failed(), m.Clones.CutOff, firstErr(m.CloneOps)))
		}
		if m.ProbeIdle.N == 0 || m.ProbeStorm.N == 0 || m.ProbeFailed > 0 {
			errs = append(errs, fmt.Errorf("%s: probe idle %d ok, storm %d ok, %d failed (%s)", m.Name, m.ProbeIdle.N, m.ProbeStorm.N, m.ProbeFailed, firstErr(m.ProbeStormOps)))
		}
		if len(m.Samples) == 0 || m.PeakMem == 0 {
			errs = append(errs, fmt.Errorf("%s: no server memory samples", m.Name))
		}
		if m.Policy == "" {
			continue
		}
		if m.AgentUploadPacks < float64(m.Clones.OK) || m.AgentPackObjects < float64(m.Clones.OK) {
			errs = append(errs, fmt.Errorf("%s: the agent saw %.0f upload-pack and %.0f pack-objects for %d clones: the shim wiring is broken",
				m.Name, m.AgentUploadPacks, m.AgentPackObjects, m.Clones.OK))
		}
		scraped := false
		for _, s := range m.Samples {
			scraped = scraped || (s.Limit["upload-pack"] > 0 && s.Limit["pack-objects"] > 0)
		}
		if !scraped {
			errs = append(errs, fmt.Errorf("%s: no current limits scraped from the agent's /metrics", m.Name))
		}
	}
	if len(r.Modes) == 0 {
		errs = append(errs, errors.New("no mode ran"))
	}
	return errors.Join(errs...)
}

func firstErr(ops []op) string {
	for _, o := range ops {
		if o.Outcome != ok {
			return string(o.Outcome) + ": " + o.Stderr
		}
	}
	return ""
}

func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func numCPU() int {
	n, _ := cpu.Counts(true)
	return n
}

// loadAvg1 is the 1-minute load average (0 when unreadable).
func loadAvg1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var l float64
	fmt.Sscanf(string(b), "%f", &l)
	return l
}
