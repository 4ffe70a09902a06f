package adaptive

import (
	"errors"
	"fmt"
	"time"

	"github.com/shirou/gopsutil/v3/mem"

	"github.com/sluicehq/sluice/cgroup"
	"github.com/sluicehq/sluice/policy"
)

// ErrSignalMissing is returned by a watcher whose signal this host does
// not provide (no PSI file, no CFS quota accounting, …).
var ErrSignalMissing = errors.New("signal not available")

// Verdict is one watcher's reading of one sample.
type Verdict struct {
	// Pressure is true when the reading crossed the watcher's threshold.
	Pressure bool
	// Detail gives the numbers compared, for logs ("working set 1.8 GiB =
	// 0.93 of limit 2 GiB >= 0.90").
	Detail string
}

// Watcher turns successive stats samples of the watched cgroup into
// pressure verdicts. Watchers keep the previous sample where their signal
// is a rate (OOM kills, throttled periods, PSI stall time): they measure
// over the sample interval from raw counters, never from the kernel's
// 10-second PSI averages, which lag a sudden stall by seconds.
// A Watcher is used from one goroutine.
type Watcher interface {
	// Name is the `watcher` metric label.
	Name() string
	// Observe reads sample s taken at now.
	Observe(s cgroup.Stats, now time.Time) (Verdict, error)
}

// HostMemory reports the host's memory in bytes: used (total minus
// available) and total. The memory watcher falls back to it when the
// watched cgroup has no memory limit.
type HostMemory func() (used, total uint64, err error)

// MemoryWatcher compares the cgroup's memory with its limit: the working
// set (usage minus inactive page cache, which the kernel can evict) when
// Anon is false — Gitaly's documented rule, threshold 0.9 — or anonymous
// memory when Anon is true — Gitaly's 2026 rule, threshold 0.6, which does
// not fire on page cache. Without a limit it compares the host's used
// memory with its total.
type MemoryWatcher struct {
	Anon      bool
	Threshold float64
	Host      HostMemory
}

func (w *MemoryWatcher) Name() string { return "memory" }

func (w *MemoryWatcher) Observe(s cgroup.Stats, _ time.Time) (Verdict, error) {
	if s.MemoryLimit == 0 {
		if w.Host == nil {
			return Verdict{}, fmt.Errorf("memory: the watched cgroup has no memory limit and no host fallback: %w", ErrSignalMissing)
		}
		used, total, err := w.Host()
		if err != nil || total == 0 {
			return Verdict{}, fmt.Errorf("memory: host memory: %v", err)
		}
		r := float64(used) / float64(total)
		return Verdict{Pressure: r >= w.Threshold,
			Detail: fmt.Sprintf("host memory used %s = %.2f of %s >= %.2f", mib(used), r, mib(total), w.Threshold)}, nil
	}
	what, v := "working set", s.MemoryUsage-min(s.InactiveFile, s.MemoryUsage)
	if w.Anon {
		what, v = "anonymous memory", s.Anon
	}
	r := float64(v) / float64(s.MemoryLimit)
	return Verdict{Pressure: r >= w.Threshold,
		Detail: fmt.Sprintf("%s %s = %.2f of limit %s (threshold %.2f)", what, mib(v), r, mib(s.MemoryLimit), w.Threshold)}, nil
}

// OOMWatcher reports pressure as soon as the OOM killer has killed a
// process in the watched cgroups since the last sample, or a kernel OOM
// notification arrived ([OOMWatcher.Notify]).
type OOMWatcher struct {
	seen bool
	last uint64
	// pending is the detail of a notification not yet reported.
	pending string
	// absorbUntil: a notification was reported before the kill counter
	// moved (v1 notifies before it kills); the increase that follows
	// until then is the same kill and is not reported again.
	absorbUntil time.Time
}

func (w *OOMWatcher) Name() string { return "oom" }

// oomAbsorbWindow bounds how long after a reported notification a counter
// increase counts as the same kill.
const oomAbsorbWindow = 2 * time.Second

// Notify records a kernel OOM notification (v1 eventfd on
// memory.oom_control) for the next Observe, which reports it at once
// rather than waiting for memory.oom_control's oom_kill to move.
func (w *OOMWatcher) Notify(detail string) {
	if w.pending == "" {
		w.pending = detail
	}
}

func (w *OOMWatcher) Observe(s cgroup.Stats, now time.Time) (Verdict, error) {
	prev, seen := w.last, w.seen
	w.last, w.seen = s.OOMKills, true
	grew := seen && s.OOMKills > prev
	if w.pending != "" {
		d := w.pending
		w.pending = ""
		if !grew {
			w.absorbUntil = now.Add(oomAbsorbWindow)
		}
		return Verdict{Pressure: true, Detail: d}, nil
	}
	if !grew {
		return Verdict{}, nil
	}
	if now.Before(w.absorbUntil) {
		w.absorbUntil = time.Time{}
		return Verdict{}, nil // the kill already reported by its notification
	}
	return Verdict{Pressure: true, Detail: fmt.Sprintf("%d OOM kill(s) since the last sample", s.OOMKills-prev)}, nil
}

// ThrottleWatcher reports pressure when the cgroup was CPU-throttled in at
// least Threshold of the CFS periods of the sample window
// (nr_throttled/nr_periods: already normalised, unlike throttled time,
// which is summed over CPUs).
type ThrottleWatcher struct {
	Threshold         float64
	seen              bool
	periods, throttle uint64
}

func (w *ThrottleWatcher) Name() string { return "cpu_throttle" }

func (w *ThrottleWatcher) Observe(s cgroup.Stats, _ time.Time) (Verdict, error) {
	pp, pt, seen := w.periods, w.throttle, w.seen
	w.periods, w.throttle, w.seen = s.CPUPeriods, s.CPUThrottledPeriods, true
	if !seen || s.CPUPeriods <= pp {
		return Verdict{}, nil // no quota enforced in this window
	}
	dp, dt := s.CPUPeriods-pp, s.CPUThrottledPeriods-min(pt, s.CPUThrottledPeriods)
	r := float64(dt) / float64(dp)
	return Verdict{Pressure: r >= w.Threshold,
		Detail: fmt.Sprintf("throttled in %d of %d CFS periods = %.2f (threshold %.2f)", dt, dp, r, w.Threshold)}, nil
}

// PSIWatcher reports pressure when the stall time of one PSI line grew by
// at least Threshold of the wall time since the last sample: memory "full"
// (every task stalled on memory) or cpu "some" (some task waited for a CPU).
type PSIWatcher struct {
	// Resource is "memory" or "cpu"; Full selects the "full" line.
	Resource  string
	Full      bool
	Threshold float64

	seen  bool
	stall time.Duration
	at    time.Time
}

func (w *PSIWatcher) Name() string { return "psi_" + w.Resource }

func (w *PSIWatcher) Observe(s cgroup.Stats, now time.Time) (Verdict, error) {
	p := s.CPUPressure
	if w.Resource == "memory" {
		p = s.MemoryPressure
	}
	if p == nil {
		return Verdict{}, fmt.Errorf("%s: no %s pressure file (PSI needs CONFIG_PSI and psi=1): %w", w.Name(), w.Resource, ErrSignalMissing)
	}
	total, line := p.SomeTotal, "some"
	if w.Full {
		total, line = p.FullTotal, "full"
	}
	prevStall, prevAt, seen := w.stall, w.at, w.seen
	w.stall, w.at, w.seen = total, now, true
	elapsed := now.Sub(prevAt)
	if !seen || elapsed <= 0 || total < prevStall {
		return Verdict{}, nil
	}
	r := float64(total-prevStall) / float64(elapsed)
	return Verdict{Pressure: r >= w.Threshold,
		Detail: fmt.Sprintf("%s %s stalled %.2f of the last %s (threshold %.2f)", w.Resource, line, r, elapsed.Round(time.Millisecond), w.Threshold)}, nil
}

func mib(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// newWatchers builds the watchers [adaptive] asks for, in its order, and
// the saturation gate when increase_max_psi_cpu is set. host is the memory
// watcher's fallback when the watched cgroup has no memory limit.
func newWatchers(ad *policy.Adaptive, host HostMemory) []Watcher {
	var out []Watcher
	for _, name := range ad.Watchers {
		switch name {
		case "memory":
			w := &MemoryWatcher{Threshold: ad.MemoryThreshold, Host: host}
			if ad.MemorySignal == policy.MemoryAnon {
				w.Anon, w.Threshold = true, ad.AnonThreshold
			}
			out = append(out, w)
		case "oom":
			out = append(out, &OOMWatcher{})
		case "cpu_throttle":
			out = append(out, &ThrottleWatcher{Threshold: ad.CPUThrottleThreshold})
		case "psi_memory":
			out = append(out, &PSIWatcher{Resource: "memory", Full: true, Threshold: ad.PSIMemoryFullThreshold})
		case "psi_cpu":
			out = append(out, &PSIWatcher{Resource: "cpu", Threshold: ad.PSICPUSomeThreshold})
		}
	}
	if ad.IncreaseMaxPSICPU > 0 {
		out = append(out, &saturationGate{PSIWatcher{Resource: "cpu", Threshold: ad.IncreaseMaxPSICPU}})
	}
	return out
}

// saturationGate watches CPU PSI "some" for [adaptive] increase_max_psi_cpu:
// a CPU this contended gains nothing from more concurrency, so it holds
// additive increases back — it never decreases a limit.
type saturationGate struct{ PSIWatcher }

// Name is distinct from the psi_cpu watcher's, for the missing-signal log.
func (g *saturationGate) Name() string { return "increase_gate_psi_cpu" }

// hostMemory is the host's used (total minus available) and total memory.
func hostMemory() (uint64, uint64, error) {
	v, err := mem.VirtualMemory()
	if err != nil {
		return 0, 0, err
	}
	return v.Total - v.Available, v.Total, nil
}
