package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/shirou/gopsutil/v3/cpu"
)

type counts struct {
	OK, Rejected, HungUp, Timeout, Other, CutOff int
}

func (c counts) Failed() int { return c.Rejected + c.HungUp + c.Timeout + c.Other }

func (c *counts) add(o outcome) {
	switch o {
	case ok:
		c.OK++
	case rejected:
		c.Rejected++
	case hungUp:
		c.HungUp++
	case timedOut:
		c.Timeout++
	case cutOff:
		c.CutOff++
	default:
		c.Other++
	}
}

// runResult is one mode of one scenario over one transport, raw and
// summarised.
type runResult struct {
	Scenario, Transport, Mode string
	Repeat                    int  // ABBA pass, 0-based; -1 for sweep runs
	Sweep                     bool // a sweep run
	Limit                     int  // host-wide pack-objects limit of sweep and best-static runs
	Source                    string
	Policy                    string
	Clients, Addresses        int
	Pushers                   int
	MemLimit                  int64
	Window, Drain             float64 // seconds
	Wall                      float64 // storm start to the last operation's end

	// Load is /proc/loadavg's 1-minute load at the start and end of the
	// storm (the machine is shared; each sample has it too).
	Load [2]float64

	OOMKills int64
	PeakMem  int64 // the server cgroup's memory.max_usage_in_bytes over the storm (page cache included)

	AgentCPU          float64 // seconds over the storm
	AgentRSS          int64   // peak sampled
	AgentRejected     float64 // sluice_commands_total{outcome="rejected"}
	Backoffs          int     // adaptive decreases logged
	Agent             *agentSaw
	AgentLogHead      string `json:",omitempty"`
	AgentLog          string `json:",omitempty"` // where the whole log was kept (not committed)
	ServerSluiceLines int    // `sluice:` lines in the server's log (git daemon, sshd, fcgiwrap)

	// ClientCPU and ServerCPU are the CPU seconds each side used over the
	// storm (cpuacct.usage of its cgroup, from the start of the storm to
	// the end of the last operation: Wall); ClientCPUs and ServerCPUs the
	// CPUs it may use (0: not measured).
	ClientCPU, ServerCPU   float64
	ClientCPUs, ServerCPUs int
	// Counters is the agent's /metrics at the end of the window minus at
	// its start (nil without sluice).
	Counters *agentCounters `json:",omitempty"`
	// PackCache: the policy enables [pack_cache].
	PackCache bool `json:",omitempty"`

	S summary

	Ops           []op
	ProbeIdleOps  []op
	ProbeStormOps []op
	Samples       []sample
}

// summary is what the report reads of a run.
type summary struct {
	GoodKinds []opKind
	Goodput   float64 // completed goodput operations per minute of window
	GoodOps   int
	MiBPerMin float64 // pack MiB received per minute by completed operations
	Outcomes  counts  // goodput operations
	Failed    int
	ByKind    map[opKind]counts
	ByRepo    map[string]int // completed goodput operations by repository
	Causes    map[string]int // failures (all client operations, pushes included) by cause
	PushOK    int
	// PushFailed counts pushes that failed (pushes cut off by the end of
	// the window are not failures).
	PushFailed  int
	OpLatency   stats // seconds, completed goodput operations
	ProbeIdle   stats // ms
	ProbeStorm  stats // ms
	ProbeFailed int
	// Fairness across the client addresses (pushers and the probe
	// excluded) of completed goodput operations.
	Jain, WorstShare fnum
	AddrsServed      int // client addresses with at least one completed operation
	LoadMax          float64
}

func (r *runResult) summarize(sc scenario) {
	s := summary{GoodKinds: sc.goodputKinds(), ByKind: map[opKind]counts{}, ByRepo: map[string]int{}, Causes: map[string]int{}}
	perAddr := map[string]float64{}
	for i := 0; i < r.Addresses; i++ {
		perAddr[clientAddr(i)] = 0
	}
	var lat []float64
	var bytes int64
	for _, o := range r.Ops {
		c := s.ByKind[o.Kind]
		c.add(o.Outcome)
		s.ByKind[o.Kind] = c
		if o.Outcome != ok && o.Outcome != cutOff {
			s.Causes[string(o.Kind)+": "+causeOf(o)]++
		}
		if o.Kind == kPush {
			switch o.Outcome {
			case ok:
				s.PushOK++
			case cutOff:
			default:
				s.PushFailed++
			}
			continue
		}
		if !slices.Contains(s.GoodKinds, o.Kind) {
			continue
		}
		s.Outcomes.add(o.Outcome)
		if o.Outcome == ok {
			s.GoodOps++
			s.ByRepo[o.Repo]++
			perAddr[o.Addr]++
			lat = append(lat, o.Seconds)
			bytes += o.Bytes
		}
	}
	s.Failed = s.Outcomes.Failed()
	minutes := (r.Window + r.Drain) / 60
	s.Goodput = float64(s.GoodOps) / minutes
	s.MiBPerMin = float64(bytes) / (1 << 20) / minutes
	s.OpLatency = summarize(lat)
	var x []float64
	for _, v := range perAddr {
		x = append(x, v)
		if v > 0 {
			s.AddrsServed++
		}
	}
	s.Jain, s.WorstShare = fnum(jain(x)), fnum(worstShare(x))
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
	s.ProbeIdle, _ = ms(r.ProbeIdleOps)
	s.ProbeStorm, s.ProbeFailed = ms(r.ProbeStormOps)
	s.LoadMax = max(r.Load[0], r.Load[1])
	for _, sm := range r.Samples {
		s.LoadMax = max(s.LoadMax, sm.Load1)
	}
	r.S = s
}

// packOps counts the completed operations that ran a pack-objects on the
// server: clones, shallow clones and fetches (ls-remote and pushes run
// none; the probe is not in Ops).
func (r *runResult) packOps() int {
	n := 0
	for _, o := range r.Ops {
		if o.Outcome == ok && (o.Kind == kClone || o.Kind == kShallow || o.Kind == kFetch) {
			n++
		}
	}
	return n
}

// busyPct is a side's CPU use over the storm in percent of what its CPUs
// could give; NaN when not measured.
func busyPct(cpuSeconds float64, cpus int, wall float64) float64 {
	if cpus <= 0 || wall <= 0 {
		return math.NaN()
	}
	return cpuSeconds / (wall * float64(cpus)) * 100
}

func (r *runResult) clientBusy() float64 { return busyPct(r.ClientCPU, r.ClientCPUs, r.Wall) }
func (r *runResult) serverBusy() float64 { return busyPct(r.ServerCPU, r.ServerCPUs, r.Wall) }

// cmdCPU is the CPU seconds of the agent's finished commands of a
// subcommand over the window; NaN without sluice, and where no command of
// it was admitted (a policy no rule of which matches it: the sweep's
// leaves upload-pack alone).
func (r *runResult) cmdCPU(subcmd string) float64 {
	if r.Counters == nil || (r.Counters.CPU[subcmd] == 0 && r.Counters.Finished[subcmd] == 0) {
		return math.NaN()
	}
	return r.Counters.CPU[subcmd]
}

// perOp divides by a count of operations; NaN for none.
func perOp(v float64, n int) float64 {
	if n <= 0 {
		return math.NaN()
	}
	return v / float64(n)
}

// spreadOfRuns is the spread of a per-run value, runs where it is
// undefined left out.
func spreadOfRuns(runs []*runResult, f func(*runResult) float64) spread {
	var v []float64
	for _, r := range runs {
		if x := f(r); !math.IsNaN(x) && !math.IsInf(x, 0) {
			v = append(v, x)
		}
	}
	return spreadOf(v)
}

// pairResult is one scenario over one transport: its sweep and its modes.
type pairResult struct {
	Scenario, Transport string
	Doc                 string
	Pushers             int
	Sweep               []*runResult
	Best                int
	BestWhy             string
	Runs                []*runResult
}

type report struct {
	Started, Finished time.Time
	Opts              optsRecord
	CPUs              int
	Repos             map[string]int64
	RepoParams        map[string]repoParams
	Pairs             []*pairResult
	// ProbeCgroup: the probe ran in a cpu cgroup of its own (since
	// 2026-12-02 10:45; earlier runs shared the clients').
	ProbeCgroup bool
}

// modeAgg is a mode's runs of one pair, aggregated over repeats.
type modeAgg struct {
	Name                             string
	Runs                             []*runResult
	Goodput, PeakMiB, ProbeP99, Jain spread
	OOMKills, PushFailed, Failed     int
}

func (p *pairResult) modes() []*modeAgg {
	var out []*modeAgg
	idx := map[string]*modeAgg{}
	for _, r := range p.Runs {
		a := idx[r.Mode]
		if a == nil {
			a = &modeAgg{Name: r.Mode}
			idx[r.Mode] = a
			out = append(out, a)
		}
		a.Runs = append(a.Runs, r)
	}
	for _, a := range out {
		var g, m, pr, j []float64
		for _, r := range a.Runs {
			g = append(g, r.S.Goodput)
			m = append(m, float64(r.PeakMem)/(1<<20))
			pr = append(pr, r.S.ProbeStorm.P99)
			if !math.IsNaN(float64(r.S.Jain)) {
				j = append(j, float64(r.S.Jain))
			}
			a.OOMKills += int(r.OOMKills)
			a.PushFailed += r.S.PushFailed
			a.Failed += r.S.Failed
		}
		a.Goodput, a.PeakMiB, a.ProbeP99, a.Jain = spreadOf(g), spreadOf(m), spreadOf(pr), spreadOf(j)
	}
	return out
}

// idleProbe pools the idle phase of every run of the pair: a few probes
// per run, too few alone for a p99.
func (p *pairResult) idleProbe() stats {
	var v []float64
	for _, r := range append(slices.Clone(p.Sweep), p.Runs...) {
		for _, o := range r.ProbeIdleOps {
			if o.Outcome == ok {
				v = append(v, o.Seconds*1000)
			}
		}
	}
	return summarize(v)
}

func modeNamed(aggs []*modeAgg, name string) *modeAgg {
	for _, a := range aggs {
		if a.Name == name {
			return a
		}
	}
	return nil
}

func (p *pairResult) mode(name string) *modeAgg {
	for _, a := range p.modes() {
		if a.Name == name {
			return a
		}
	}
	return nil
}

func (r *report) write(dir string, plots bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
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
		for _, p := range r.Pairs {
			if len(p.Sweep) > 0 {
				name := fmt.Sprintf("sweep-%s-%s.png", p.Scenario, p.Transport)
				if err := plotSweep(p, filepath.Join(dir, name)); err != nil {
					return fmt.Errorf("plot %s: %w", name, err)
				}
				pngs = append(pngs, name)
			}
			for _, run := range p.Runs {
				if run.Repeat == 0 && run.Policy != "" && !strings.HasPrefix(run.Mode, sweepPrefix) && run.Mode != "tuned" {
					name := fmt.Sprintf("run-%s-%s-%s.png", p.Scenario, p.Transport, fileName(run.Mode))
					if err := plotMode(run, filepath.Join(dir, name)); err != nil {
						return fmt.Errorf("plot %s: %w", name, err)
					}
					pngs = append(pngs, name)
				}
			}
		}
	}
	md := r.markdown(pngs)
	fmt.Print(md)
	return os.WriteFile(filepath.Join(dir, "storm.md"), []byte(md), 0o644)
}

func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "—"
	}
	return fmt.Sprintf("×%.2f", a/b)
}

func num(v float64, f string) string {
	if math.IsNaN(v) {
		return "—"
	}
	return fmt.Sprintf(f, v)
}

func (s spread) show(f string) string {
	if s.N == 0 {
		return "—"
	}
	if s.N == 1 || s.Min == s.Max {
		return fmt.Sprintf(f, s.Mean)
	}
	return fmt.Sprintf(f+" ["+f+"–"+f+"]", s.Mean, s.Min, s.Max)
}

func (r *report) markdown(pngs []string) string {
	var b strings.Builder
	p := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	o := r.Opts
	p("# Storm v2 — %s\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"))
	p("`go run ./bench/storm %s` on %d CPUs; total %v.\n\n", strings.Join(o.Args, " "), r.CPUs, r.Finished.Sub(r.Started).Round(time.Second))
	p("- **Host**: the server (git daemon `--max-connections=0`, sshd + git-shell with MaxStartups above the client count, or nginx + fcgiwrap with one CGI worker per client + git-http-backend), every git it runs and sluiced live in one cgroup v1 memory cgroup of %.0f MiB", float64(o.Mem)/(1<<20))
	if sc := o.ServerCPUs; sc != "" {
		p(" and one cpuset: **server on CPU %s, harness and every client (git, socat, ssh, HTTP forwarders, the probe) on CPU %v**.\n", sc, o.ClientCPUs)
	} else {
		p("; server and clients share every CPU.\n")
	}
	if o.Shares {
		p("- **CPU weight**: the server's and the clients' side each sit in a cpu cgroup with `cpu.shares` = %s (the most), so on a shared machine other work (builds, tests) takes less of their CPU, and a mode running few processes (a limit of 1) is not starved more than one running many.", maxShares)
		if r.ProbeCgroup {
			p(" The probe's git runs in a cpu cgroup of its own with the same weight (on the clients' CPU), so it measures the server rather than its wait for a CPU behind 48 clients.")
		} else {
			p(" The probe's git shared the clients' cpu cgroup (this run predates the probe's own): its latency includes waiting for a CPU behind 48 clients, so probe ratios here overstate what the server did.")
		}
		p("\n")
	}
	p("- **Clients**: %v clients from %v distinct loopback addresses (127.0.0.2 …; pushers have addresses of their own, the probe 127.0.0.1). git:// binds through `GIT_PROXY_COMMAND` = `socat -t 300 STDIO,shut-close TCP:$1:$2,bind=ADDR` (shut-close: so a client whose server hangs up sees EOF at once instead of after socat's 300 s); ssh through `ssh -o BindAddress=ADDR`; HTTP through a per-address TCP forwarder in the harness (listens on 127.0.0.1, dials nginx from ADDR). The agent's log says which addresses it saw (column *addrs seen*).\n", o.Clients, o.Addresses)
	if o.Client == "discard" {
		p("- **Discarding clients** (`-client discard`): clones, shallow clones and fetches over git:// are spoken by the harness (protocol v2 from the client's own address: ls-refs, then fetch with every branch wanted, the old tip as `have` for fetches, `deepen 1` for shallow clones), and the pack is counted and discarded instead of indexed: the server does the same work, the clients' CPU no longer bounds goodput. *pack MiB* is the pack as received.\n")
	}
	p("- **Window**: %v per run after a %v idle probe phase; no operation starts after the window and operations still running at its end (+ drain %v) are cut off and counted as *unfinished*, neither ok nor failed. Per-operation timeout %v. At most %v operations per client.\n", o.Duration, o.Idle, o.Drain, o.OpTimeout, o.MaxOps)
	p("- **Goodput** = completed clones and fetches (of every sort the scenario runs; for poll, ls-remotes) per minute of window. **Fairness** = Jain's index of completed operations across the client addresses, and the worst address's completed operations over the mean (1 = its fair share, 0 = starved). **Percentiles** are nearest-rank (value at rank ⌈p·n⌉). **Peak** = the server cgroup's `memory.max_usage_in_bytes` over the storm (page cache of the repositories included: ~%.0f MiB is cache of the served repositories). **Probe**: `git ls-remote` of a tiny repository once per second from 127.0.0.1, idle then during the storm.\n", float64(r.repoBytes())/(1<<20))
	p("- **CPU**: *client CPU busy* = the clients' cpuacct cgroup (every client's git with its index-pack, socat, ssh, the HTTP forwarders, the harness itself and the probe's git) over the storm, in %% of ")
	if o.ServerCPUs != "" && o.ClientCPUs != "" {
		p("the %d CPU(s) %s all clients share", cpusetCount(o.ClientCPUs), o.ClientCPUs)
	} else {
		p("every CPU (shared with the server)")
	}
	p(". **Near 100 %% the clients, not the server, bound clones per minute**: every received pack is indexed (index-pack) on the clients' CPU, so no server-side change (a limit, the pack cache) can raise goodput past it. *Server CPU busy* is the same for the server cgroup (server, every git it runs, sluiced and the shims). *pack-objects / upload-pack CPU* = the agent's `sluice_command_cpu_seconds_total` (user + system) of that subcommand at the end of the window minus at its start: finished commands only (one still running when the window closed is not in it), and a command's CPU includes its reaped children's, so upload-pack's includes its pack-objects hook (pack-objects, or the shim streaming a cache hit). *Per op* = per completed clone, shallow clone or fetch. *Hit ratio* = (hits + joins) / (hits + joins + misses) of `sluice_pack_cache_*`.\n")
	p("- **Failures by cause** (client side): `sluice rejection` = the client saw sluice's message; `hung up` = the server went away (OOM kills, and sluice's upload-pack rejections over git:// and HTTP, which reach the client only as a hang-up); `timeout`; `other`. The agent's own count of rejections (limit: reason) and of commands ended by a signal are listed per mode; OOM kills are the cgroups' own count.\n")
	p("- **Modes**: `none` (no sluice), `defaults` (the shipped default policy, untouched: `sluice validate --print-defaults`), `tuned` (the first storm's hand-tuned static), `adaptive` (its adaptive twin), `best-static` (the sweep's winner, run again), `static-gN` (sweep: pack-objects `key = \"global\"`, `max_per_key = N`, queue 1000 / 5 m, nothing else), `pack-cache` (the shipped defaults untouched plus `[pack_cache] enabled = true`: identical fetches share one pack-objects; max_age, max_bytes, min_occurrences as shipped; an empty cache at the start of every run). sluiced runs with the eBPF tracer on (exec-in-place) unless a policy says otherwise; the harness only sets socket, metrics address, `[git] bin`, a unique `[cgroups] hierarchy_root` and, where the policy has a `[pack_cache]` table, its `dir` (a fresh directory per run).\n")
	p("- **Repositories**: ")
	for _, n := range slices.Sorted(mapKeys(r.Repos)) {
		rp := r.RepoParams[n]
		p("%s %.1f MiB (%d files × %d B, %d commits); ", n, float64(r.Repos[n])/(1<<20), rp.Files, rp.Bytes, rp.Commits+1)
	}
	p("16 poll repositories are copies of tool; fetches start from a copy holding 10 %% fewer commits.\n")
	loads := []float64{}
	for _, pr := range r.Pairs {
		for _, run := range append(slices.Clone(pr.Sweep), pr.Runs...) {
			loads = append(loads, run.S.LoadMax)
		}
	}
	ls := spreadOf(loads)
	p("- **Machine load** (1-minute load average, max per run): mean %.1f, %.1f–%.1f over the runs. ", ls.Mean, ls.Min, ls.Max)
	if ls.Max > float64(r.CPUs)+1 {
		p("**The machine was shared with other work (builds, tests): numbers are from a busy machine.**")
	}
	p("\n")
	if rep := o.Repeat; rep < 2 {
		p("- **Noise**: one run per mode (`-repeat 1`): no spread is measured, so no difference is called a tie; read small differences as noise.\n")
	} else {
		p("- **Noise**: %d runs per mode in ABBA order; a value is mean [min–max]; two modes whose goodput ranges overlap are a **tie**.\n", rep)
	}

	for _, pr := range r.Pairs {
		r.pairMarkdown(&b, pr)
	}
	for _, png := range pngs {
		p("\n![%s](%s)\n", png, png)
	}
	p("\n## Policies\n\n")
	seen := map[string]bool{}
	for _, pr := range r.Pairs {
		for _, run := range append(slices.Clone(pr.Sweep), pr.Runs...) {
			if seen[run.Mode] || run.Mode == modeDefaults {
				continue
			}
			seen[run.Mode] = true
			if run.Policy == "" {
				p("`%s`: %s.\n\n", run.Mode, run.Source)
				continue
			}
			p("`%s` (%s):\n\n```toml\n%s\n```\n\n", run.Mode, run.Source, run.Policy)
		}
	}
	p("`defaults`: the output of `sluice validate --print-defaults` of the binary under test (in storm.json, field Policy of each defaults run).\n")
	return b.String()
}

func (r *report) repoBytes() int64 {
	var n int64
	for _, v := range r.Repos {
		n += v
	}
	return n + 15*r.Repos["tool"] // the poll copies (hard links to the same files)
}

func (r *report) pairMarkdown(b *strings.Builder, pr *pairResult) {
	p := func(f string, a ...any) { fmt.Fprintf(b, f, a...) }
	p("\n## %s over %s\n\n%s; %d pushers.\n", pr.Scenario, transportName(pr.Transport), pr.Doc, pr.Pushers)
	if len(pr.Sweep) > 0 {
		p("\n**Sweep** (host-wide pack-objects limit):\n\n| limit | goodput /min | pack MiB /min | ok | failed | unfinished | pushes failed | OOM kills | peak MiB | probe p99 ms | Jain | client / server CPU busy %% |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, s := range pr.Sweep {
			p("| %d | %.1f | %.0f | %d | %d | %d | %d | %d | %.0f | %.0f | %s | %s / %s |\n", s.Limit, s.S.Goodput, s.S.MiBPerMin, s.S.GoodOps, s.S.Failed, s.S.Outcomes.CutOff, s.S.PushFailed, s.OOMKills,
				float64(s.PeakMem)/(1<<20), s.S.ProbeStorm.P99, num(float64(s.S.Jain), "%.2f"), num(s.clientBusy(), "%.0f"), num(s.serverBusy(), "%.0f"))
		}
	}
	if pr.Best > 0 {
		p("\n**best-static = %d** host-wide pack-objects (%s).\n", pr.Best, pr.BestWhy)
	}
	aggs := pr.modes()
	none, best := pr.mode(modeNone), pr.mode(modeBestStatic)
	idle := pr.idleProbe()
	p("\nIdle probe (every run's idle phase pooled, %d probes): p50 %.0f / p95 %.0f / p99 %.0f ms; the × idle ratios below are against this p99.\n", idle.N, idle.P50, idle.P95, idle.P99)
	p("\n| mode | goodput /min | × none | × best-static | pack MiB /min | failed (of ok+failed) | pushes ok / failed | OOM kills | peak MiB (%% of cap) | probe p50 / p95 / p99 ms (× idle p99) | Jain / worst share | client addrs served / seen by agent | agent CPU s / RSS MiB | load 1m |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, a := range aggs {
		r0 := a.Runs[0]
		xNone, xBest := "—", "—"
		if none != nil {
			xNone = ratio(a.Goodput.Mean, none.Goodput.Mean)
		}
		if best != nil {
			xBest = ratio(a.Goodput.Mean, best.Goodput.Mean)
			if a.Name != best.Name && tie(a.Goodput, best.Goodput) {
				xBest += " (tie)"
			}
		}
		var pushOK, pushFail, okN, fail, seen int
		var cpu, rss float64
		var lmax float64
		for _, run := range a.Runs {
			pushOK += run.S.PushOK
			pushFail += run.S.PushFailed
			okN += run.S.GoodOps
			fail += run.S.Failed
			cpu += run.AgentCPU / float64(len(a.Runs))
			rss = max(rss, float64(run.AgentRSS)/(1<<20))
			lmax = max(lmax, run.S.LoadMax)
		}
		agent := "—"
		seenCol := fmt.Sprintf("%d / —", r0.S.AddrsServed)
		if r0.Agent != nil {
			agent = fmt.Sprintf("%.2f / %.1f", cpu, rss)
			for i := 0; i < r0.Addresses; i++ {
				if r0.Agent.RemoteIPs[clientAddr(i)] > 0 {
					seen++
				}
			}
			seenCol = fmt.Sprintf("%d / %d", r0.S.AddrsServed, seen)
		}
		idleP99 := idle.P99
		var mib []float64
		for _, run := range a.Runs {
			mib = append(mib, run.S.MiBPerMin)
		}
		jainCol := num(a.Jain.Mean, "%.2f")
		if okN < len(a.Runs)*r0.Addresses && okN > 0 {
			// Fewer completions than addresses: even a perfectly fair
			// server leaves some address at 0.
			jainCol += fmt.Sprintf(" (≤ %.2f)", float64(okN)/float64(len(a.Runs)*r0.Addresses))
		}
		p("| %s | %s | %s | %s | %s | %d (of %d) | %d / %d | %d | %s (%.0f %%) | %.0f / %.0f / %.0f (%s) | %s / %s | %s | %s | %.1f |\n",
			a.Name, a.Goodput.show("%.1f"), xNone, xBest, spreadOf(mib).show("%.0f"), fail, okN+fail, pushOK, pushFail, a.OOMKills,
			a.PeakMiB.show("%.0f"), a.PeakMiB.Mean/(float64(r0.MemLimit)/(1<<20))*100,
			r0.S.ProbeStorm.P50, r0.S.ProbeStorm.P95, r0.S.ProbeStorm.P99, ratio(r0.S.ProbeStorm.P99, idleP99),
			jainCol, num(float64(r0.S.WorstShare), "%.2f"), seenCol, agent, lmax)
	}
	cpuMarkdown(b, aggs)
	p("\nFailures by cause, agent rejections and signals (first run of each mode):\n\n")
	for _, a := range aggs {
		r0 := a.Runs[0]
		var parts []string
		causes := map[string]int{} // regrouped: reports written before causeOf dropped the ids
		for k, n := range r0.S.Causes {
			causes[dropCorrelationID(k)] += n
		}
		for _, k := range slices.Sorted(mapKeys(causes)) {
			parts = append(parts, fmt.Sprintf("%d × %s", causes[k], k))
		}
		if len(parts) == 0 {
			parts = []string{"no failures"}
		}
		p("- `%s`: %s", a.Name, strings.Join(parts, "; "))
		if r0.S.ProbeFailed > 0 {
			p("; %d probes failed", r0.S.ProbeFailed)
		}
		if ag := r0.Agent; ag != nil {
			var rj, sg []string
			var atStop []string
			for _, k := range slices.Sorted(mapKeys(ag.Rejected)) {
				// unavailable: the agent told queued waiters it was
				// stopping — here only after the window, when the
				// harness stops it; not a failure of the storm.
				if strings.HasSuffix(k, ": unavailable") {
					atStop = append(atStop, fmt.Sprintf("%d × %s", ag.Rejected[k], strings.TrimSuffix(k, ": unavailable")))
					continue
				}
				rj = append(rj, fmt.Sprintf("%d × %s", ag.Rejected[k], k))
			}

			for _, k := range slices.Sorted(mapKeys(ag.Signaled)) {
				sg = append(sg, fmt.Sprintf("%d × signal %s", ag.Signaled[k], k))
			}
			if len(rj) > 0 {
				p(". Agent rejected: %s", strings.Join(rj, ", "))
			}
			if len(sg) > 0 {
				p(". Commands ended by a signal: %s (13 = SIGPIPE: clients cut off at the end of the window)", strings.Join(sg, ", "))
			}
			if len(atStop) > 0 {
				p(". Still queued when the agent was stopped after the window (`unavailable`, not a storm failure): %s", strings.Join(atStop, ", "))
			}
			if r0.Backoffs > 0 {
				p(". Adaptive decreases: %d", r0.Backoffs)
			}
		}
		var kinds []string
		for _, k := range slices.Sorted(mapKeys(r0.S.ByKind)) {
			c := r0.S.ByKind[k]
			kinds = append(kinds, fmt.Sprintf("%s %d ok / %d failed / %d unfinished", k, c.OK, c.Failed(), c.CutOff))
		}
		p(". Operations: %s", strings.Join(kinds, ", "))
		if len(r0.S.ByRepo) > 1 {
			var rp []string
			for _, k := range slices.Sorted(mapKeys(r0.S.ByRepo)) {
				rp = append(rp, fmt.Sprintf("%s %d", k, r0.S.ByRepo[k]))
			}
			p(" (completed by repository: %s)", strings.Join(rp, ", "))
		}
		p(".\n")
	}
	if d := pr.mode(modeDefaults); d != nil {
		p("\n**Do the shipped defaults protect this host from %s over %s?** %s\n", pr.Scenario, transportName(pr.Transport), verdict(d, best, none, idle))
	}
}

// cpuMarkdown is the pair's CPU and pack cache table: where the CPU went
// and what the cache saved, per mode (values over repeats as mean
// [min–max]; the cache's counters of the first run).
func cpuMarkdown(b *strings.Builder, aggs []*modeAgg) {
	p := func(f string, a ...any) { fmt.Fprintf(b, f, a...) }
	p("\nCPU and pack cache (CPU seconds over the window; per op = per completed clone, shallow clone or fetch; see **CPU** above):\n\n")
	p("| mode | clones + fetches ok | client CPU busy %% | server CPU busy %% | server CPU s / op | pack-objects CPU s (/ op) | upload-pack CPU s (/ op) | pack cache hit ratio | hits / joins / misses / fills (first run) | bypasses | cache served / written MiB |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	var bound []string
	for _, a := range aggs {
		r0 := a.Runs[0]
		ops := spreadOfRuns(a.Runs, func(r *runResult) float64 { return float64(r.packOps()) })
		client := spreadOfRuns(a.Runs, (*runResult).clientBusy)
		server := spreadOfRuns(a.Runs, (*runResult).serverBusy)
		serverOp := spreadOfRuns(a.Runs, func(r *runResult) float64 {
			if r.ServerCPUs == 0 {
				return math.NaN()
			}
			return perOp(r.ServerCPU, r.packOps())
		})
		cmd := func(subcmd string) string {
			tot := spreadOfRuns(a.Runs, func(r *runResult) float64 { return r.cmdCPU(subcmd) })
			if tot.N == 0 {
				return "—"
			}
			per := spreadOfRuns(a.Runs, func(r *runResult) float64 { return perOp(r.cmdCPU(subcmd), r.packOps()) })
			return fmt.Sprintf("%s (%s)", tot.show("%.1f"), per.show("%.2f"))
		}
		hit := spreadOfRuns(a.Runs, func(r *runResult) float64 {
			if r.Counters == nil {
				return math.NaN()
			}
			return r.Counters.PackCache.hitRatio()
		})
		counts, byp, mib := "—", "—", "—"
		if r0.Counters != nil && r0.Counters.PackCache != nil {
			pc := r0.Counters.PackCache
			counts = fmt.Sprintf("%.0f / %.0f / %.0f / %.0f", pc.Hits, pc.Joins, pc.Misses, pc.Fills)
			var parts []string
			for _, k := range slices.Sorted(mapKeys(pc.Bypasses)) {
				if pc.Bypasses[k] > 0 {
					parts = append(parts, fmt.Sprintf("%.0f %s", pc.Bypasses[k], k))
				}
			}
			byp = "0"
			if len(parts) > 0 {
				byp = strings.Join(parts, ", ")
			}
			if pc.FillFailures > 0 {
				byp += fmt.Sprintf("; %.0f fills failed", pc.FillFailures)
			}
			mib = fmt.Sprintf("%.0f / %.0f", pc.ServedBytes/(1<<20), pc.WrittenBytes/(1<<20))
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", a.Name, ops.show("%.0f"), client.show("%.0f"), server.show("%.0f"), serverOp.show("%.2f"),
			cmd("pack-objects"), cmd("upload-pack"), hit.show("%.2f"), counts, byp, mib)
		if client.N > 0 && client.Max >= 90 {
			bound = append(bound, fmt.Sprintf("`%s` (%.0f %%)", a.Name, client.Max))
		}
	}
	if c, d := modeNamed(aggs, modePackCache), modeNamed(aggs, modeDefaults); c != nil && d != nil {
		// Issue 18's question, same run: what the cache saved next to
		// the same policy without it.
		perOpOf := func(a *modeAgg, subcmd string) float64 {
			return spreadOfRuns(a.Runs, func(r *runResult) float64 { return perOp(r.cmdCPU(subcmd), r.packOps()) }).Mean
		}
		serverOf := func(a *modeAgg) float64 {
			return spreadOfRuns(a.Runs, func(r *runResult) float64 {
				if r.ServerCPUs == 0 {
					return math.NaN()
				}
				return perOp(r.ServerCPU, r.packOps())
			}).Mean
		}
		p("\n**pack-cache ÷ defaults** (the same policy without the cache, same run): pack-objects CPU s per op %s, server CPU s per op %s, goodput %s.\n",
			ratio(perOpOf(c, "pack-objects"), perOpOf(d, "pack-objects")), ratio(serverOf(c), serverOf(d)), ratio(c.Goodput.Mean, d.Goodput.Mean))
	}
	if len(bound) > 0 {
		p("\n**Client-bound**: the clients' CPU was ≥ 90 %% busy in %s: their clones per minute measure what the clients' CPU can index, not what the server can serve.\n", strings.Join(bound, ", "))
	}
}

// verdict answers, for the defaults mode, the question the storm asks:
// does the host stay up (no OOM kill, memory under 90 % of the cap), do
// pushes survive, do other users still get served (probe p99 ≤ 5× idle),
// and how much useful work is done next to the best static limit.
func verdict(d, best, none *modeAgg, idle stats) string {
	r0 := d.Runs[0]
	var bad []string
	if d.OOMKills > 0 {
		bad = append(bad, fmt.Sprintf("%d OOM kills", d.OOMKills))
	}
	capMiB := float64(r0.MemLimit) / (1 << 20)
	if d.PeakMiB.Max > 0.9*capMiB {
		bad = append(bad, fmt.Sprintf("peak memory %.0f MiB = %.0f %% of the cap", d.PeakMiB.Max, d.PeakMiB.Max/capMiB*100))
	}
	if d.PushFailed > 0 {
		bad = append(bad, fmt.Sprintf("%d pushes failed", d.PushFailed))
	}
	if idle.P99 > 0 && r0.S.ProbeStorm.P99 > 5*idle.P99 {
		bad = append(bad, fmt.Sprintf("probe p99 %.0f ms = ×%.1f idle", r0.S.ProbeStorm.P99, r0.S.ProbeStorm.P99/idle.P99))
	}
	if r0.S.ProbeFailed > 0 {
		bad = append(bad, fmt.Sprintf("%d probes failed", r0.S.ProbeFailed))
	}
	good := ""
	if best != nil && best.Goodput.Mean > 0 {
		good = fmt.Sprintf("goodput %.1f/min = %.0f %% of best-static (%.1f/min)", d.Goodput.Mean, d.Goodput.Mean/best.Goodput.Mean*100, best.Goodput.Mean)
		if d.Goodput.Mean < 0.9*best.Goodput.Mean && !tie(d.Goodput, best.Goodput) {
			bad = append(bad, good)
			good = ""
		}
	}
	if none != nil {
		good += fmt.Sprintf("; none: %.1f/min, %d OOM kills", none.Goodput.Mean, none.OOMKills)
	}
	if len(bad) == 0 {
		return "**Yes**: 0 OOM kills, no failed push, probe within 5× idle; " + good + "."
	}
	if good = strings.TrimPrefix(good, "; "); good != "" {
		good = " (" + good + ".)"
	}
	return "**No**: " + strings.Join(bad, "; ") + "." + good
}

func transportName(t string) string {
	switch t {
	case "git":
		return "git:// (git daemon)"
	case "ssh":
		return "ssh (sshd + git-shell)"
	case "http":
		return "smart HTTP (nginx + fcgiwrap + git-http-backend)"
	}
	return t
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// smokeCheck fails on anything a working harness on tiny repositories
// would not do. Above all the wiring the storm exists to test: every
// client address that completed an operation must appear in the agent's
// log as the remote_ip of an admitted command (all clients seen from one
// address, or none, is broken identity), and a sluice mode must have
// admitted something.
func (r *report) smokeCheck() error {
	var errs []error
	n := 0
	for _, pr := range r.Pairs {
		for _, run := range append(slices.Clone(pr.Sweep), pr.Runs...) {
			n++
			label := fmt.Sprintf("%s@%s %s", run.Scenario, run.Transport, run.Mode)
			if run.S.GoodOps == 0 {
				errs = append(errs, fmt.Errorf("%s: no operation completed (first failure: %s)", label, firstErr(run.Ops)))
			}
			if run.S.Failed > 0 || run.S.PushFailed > 0 {
				errs = append(errs, fmt.Errorf("%s: %d operations and %d pushes failed (first: %s)", label, run.S.Failed, run.S.PushFailed, firstErr(run.Ops)))
			}
			if run.Pushers > 0 && run.S.PushOK == 0 {
				errs = append(errs, fmt.Errorf("%s: no push completed", label))
			}
			if run.S.ProbeIdle.N == 0 || run.S.ProbeStorm.N == 0 || run.S.ProbeFailed > 0 {
				errs = append(errs, fmt.Errorf("%s: probe idle %d ok, storm %d ok, %d failed (%s)", label, run.S.ProbeIdle.N, run.S.ProbeStorm.N, run.S.ProbeFailed, firstErr(run.ProbeStormOps)))
			}
			if len(run.Samples) == 0 || run.PeakMem == 0 {
				errs = append(errs, fmt.Errorf("%s: no server memory samples", label))
			}
			if run.Policy == "" {
				continue
			}
			if run.Counters == nil {
				errs = append(errs, fmt.Errorf("%s: the agent's counters (/metrics) were not read", label))
			} else if run.PackCache {
				pc := run.Counters.PackCache
				switch {
				case pc == nil:
					errs = append(errs, fmt.Errorf("%s: the policy enables the pack cache but the agent exports no sluice_pack_cache_* series (see its log: did the cache start?)", label))
				case run.packOps() > 0 && pc.Hits+pc.Joins+pc.Misses == 0:
					errs = append(errs, fmt.Errorf("%s: %d clones and fetches completed but no pack-objects request reached the pack cache: the shim's cache wiring is broken", label, run.packOps()))
				}
			}
			if err := identityCheck(run); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", label, err))
			}
		}
	}
	if n == 0 {
		errs = append(errs, errors.New("no run"))
	}
	return errors.Join(errs...)
}

// identityCheck compares the addresses the clients used with what the
// agent saw.
func identityCheck(run *runResult) error {
	ag := run.Agent
	if ag == nil || len(ag.Finished) == 0 {
		return errors.New("the agent admitted no command at all: the shim wiring is broken")
	}
	used := map[string]bool{}
	// Clones and fetches always run pack-objects, which every sluice
	// policy of the storm limits; ls-remote and push reach the agent only
	// where upload-pack or receive-pack are limited too.
	for _, o := range run.Ops {
		if o.Outcome == ok && (o.Kind == kClone || o.Kind == kFetch || o.Kind == kShallow) {
			used[o.Addr] = true
		}
	}
	var missing []string
	for a := range used {
		if ag.RemoteIPs[a] == 0 {
			missing = append(missing, a)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		var seen []string
		for ip, c := range ag.RemoteIPs {
			seen = append(seen, fmt.Sprintf("%s×%d", ip, c))
		}
		sort.Strings(seen)
		return fmt.Errorf("clients used %d addresses but the agent never saw %v as remote_ip (it saw %v): client identity is broken", len(used), missing, seen)
	}
	if len(used) < 2 && run.Addresses >= 2 {
		return fmt.Errorf("%d addresses asked for, %d completed an operation: too few to check identity", run.Addresses, len(used))
	}
	return nil
}

func firstErr(ops []op) string {
	for _, o := range ops {
		if o.Outcome != ok && o.Outcome != cutOff {
			return fmt.Sprintf("%s %s from %s: %s: %s", o.Kind, o.Repo, o.Addr, o.Outcome, o.Stderr)
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
