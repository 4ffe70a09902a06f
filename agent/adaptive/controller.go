package adaptive

import (
	"context"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/agent/limiter"
	"github.com/sluicehq/sluice/cgroup"
	"github.com/sluicehq/sluice/policy"
)

// Pressure is one watcher's report that the host is under pressure now.
type Pressure struct {
	// Watcher names the signal ("memory", "oom", "cpu_throttle",
	// "psi_memory", "psi_cpu"); it is the `watcher` metric label.
	Watcher string
	// Detail gives the numbers that triggered it, for the log.
	Detail string
	// HoldOnly marks saturation rather than pressure: it holds additive
	// increases back (see Controller) and never decreases a limit.
	HoldOnly bool
}

// Source is where the controller's samples come from: a [Sensor] on a
// real host, a simulated host in tests.
type Source interface {
	// Sample runs every watcher once at now and returns the pressures
	// seen. It is called from one goroutine, once per sample.
	Sample(now time.Time) []Pressure
	// Kicks receives when a sample should be taken at once (a kernel
	// memory notification); nil never does.
	Kicks() <-chan struct{}
}

// Adjustable is what the controller reads and moves on one rule's limit;
// *limiter.Limiter implements it.
type Adjustable interface {
	Stats() limiter.Stats
	SetLimit(n int)
}

// Limits is the controller's view of the limits it adapts: the policy in
// force (its [adaptive] section and which rules are adaptive) and each
// rule's limiter. The agent implements it; it is read at every sample, so
// a reload's rules and limiters are used from the next sample on.
type Limits interface {
	Policy() *policy.Config
	// Limiter returns rule's limiter, nil when a reload removed the rule.
	Limiter(rule string) Adjustable
}

// Options configure a Controller.
type Options struct {
	// Limits are the limits adapted; required.
	Limits Limits
	// Log receives the decisions (backoff, increase, held increase); nil
	// discards them.
	Log *zap.Logger
	// OnBackoff counts one sample in which watcher saw pressure (the
	// `watcher` label of the backoff metric); nil counts nothing.
	OnBackoff func(watcher string)
	// Budget is stepped at every sample with the sample's pressures and
	// stats (the host budget's controllers); nil: none.
	Budget BudgetStepper
}

// BudgetStepper adapts the host budget at every sample. The agent
// implements it over its [BudgetController]s.
type BudgetStepper interface {
	// StepBudget applies one sample: its pressures, the watched cgroup's
	// stats (nil when the source has none) and the [adaptive] settings.
	StepBudget(now time.Time, pressures []Pressure, st *cgroup.Stats, ad *policy.Adaptive)
}

// StatsSource is a Source that also reports the stats its last sample
// read (the Sensor does), for the budget controller.
type StatsSource interface {
	LastStats() (cgroup.Stats, bool)
}

// Controller runs AIMD over the adaptive rules. Limits are per rule and
// apply to every key of the rule, as in Gitaly.
//
//   - Multiplicative decrease: as soon as a sample shows pressure, every
//     adaptive limit is multiplied by backoff_factor (rounded down, never
//     below min_limit). A cool-down follows: pressure seen within cooldown
//     of the last decrease is ignored, so one episode costs one decrease
//     rather than one per sample. Lowering a limit never stops running
//     commands; the limiter admits nobody until in-flight drops below it.
//   - Additive increase: once per calibration_interval without pressure,
//     +1 up to max_limit — but only for a rule in use (its busiest key
//     runs at least half the limit, or something waits), so an idle host
//     does not climb to max_limit and have no protection when a storm
//     arrives; and only when the host has headroom: when at least half
//     the samples since the last increase saw saturation (HoldOnly, CPU
//     PSI over [adaptive] increase_max_psi_cpu), the increase is held. On
//     a saturated CPU more concurrency only stretches every command and
//     costs memory (measured in the clone-storm benchmark), yet halving
//     on CPU contention alone throttled a healthy storm (psi_cpu as a
//     backoff watcher), so saturation stops the climb without a cut.
type Controller struct {
	limits    Limits
	log       *zap.Logger
	onBackoff func(watcher string)
	budget    BudgetStepper

	mu    sync.Mutex // guards the fields below
	rules map[string]*adaptiveState
	// lastBackoff is the time of the last decrease (any rule): the
	// cool-down is global, as the pressure is.
	lastBackoff time.Time
}

type adaptiveState struct {
	// samples and saturated count the samples since the last increase
	// check, and those that saw saturation.
	samples, saturated int
	lastIncrease       time.Time
	lastBackoff        time.Time
	lastBackoffReason  string
}

// NewController returns a controller over opts.Limits. It starts from the
// limits as they are (initial_limit after a start) and does nothing until
// Run or Step.
func NewController(opts Options) *Controller {
	c := &Controller{limits: opts.Limits, log: opts.Log, onBackoff: opts.OnBackoff, budget: opts.Budget, rules: make(map[string]*adaptiveState)}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	if c.onBackoff == nil {
		c.onBackoff = func(string) {}
	}
	return c
}

// stateLocked returns the state of rule name, creating it at now.
func (c *Controller) stateLocked(name string, now time.Time) *adaptiveState {
	st := c.rules[name]
	if st == nil {
		st = &adaptiveState{lastIncrease: now}
		c.rules[name] = st
	}
	return st
}

// Step applies one sample's pressures at now. Run calls it once per
// sample; a simulated host may call it directly.
func (c *Controller) Step(now time.Time, pressures []Pressure) {
	pol := c.limits.Policy()
	ad := pol.Adaptive
	c.mu.Lock()
	defer c.mu.Unlock()
	var saturation []Pressure
	n := 0
	for _, p := range pressures {
		if p.HoldOnly {
			saturation = append(saturation, p)
		} else {
			pressures[n] = p
			n++
		}
	}
	pressures = pressures[:n]
	c.eachAdaptiveLocked(pol, now, func(_ *policy.Limit, _ Adjustable, st *adaptiveState) {
		st.samples++
		if len(saturation) > 0 {
			st.saturated++
		}
	})
	if len(pressures) > 0 {
		for _, p := range pressures {
			c.onBackoff(p.Watcher)
		}
		if !c.lastBackoff.IsZero() && now.Sub(c.lastBackoff) < ad.Cooldown.Duration {
			return // the same episode: already backed off
		}
		c.lastBackoff = now
		reason := describePressures(pressures)
		c.eachAdaptiveLocked(pol, now, func(r *policy.Limit, lim Adjustable, st *adaptiveState) {
			old := lim.Stats().Limit
			next := int(math.Floor(float64(old) * ad.BackoffFactor))
			next = max(next, r.MinLimit)
			st.lastBackoff, st.lastBackoffReason = now, reason
			st.lastIncrease = now // the increase clock restarts after a decrease
			st.samples, st.saturated = 0, 0
			if next != old {
				lim.SetLimit(next)
			}
			c.log.Warn("adaptive limit backed off", zap.String("limit", r.Name),
				zap.Int("old", old), zap.Int("new", next), zap.String("reason", reason))
		})
		return
	}
	c.eachAdaptiveLocked(pol, now, func(r *policy.Limit, lim Adjustable, st *adaptiveState) {
		if now.Sub(st.lastIncrease) < ad.CalibrationInterval.Duration {
			return
		}
		st.lastIncrease = now
		samples, saturated := st.samples, st.saturated
		st.samples, st.saturated = 0, 0
		s := lim.Stats()
		if s.Limit >= r.MaxLimit || !inUse(s) {
			return
		}
		if samples > 0 && 2*saturated >= samples {
			detail := ""
			if len(saturation) > 0 {
				detail = describePressures(saturation)
			}
			c.log.Info("adaptive limit increase held: the host is saturated", zap.String("limit", r.Name),
				zap.Int("limit_now", s.Limit), zap.Int("saturated_samples", saturated), zap.Int("samples", samples),
				zap.String("last", detail))
			return
		}
		lim.SetLimit(s.Limit + 1)
		c.log.Info("adaptive limit increased", zap.String("limit", r.Name),
			zap.Int("old", s.Limit), zap.Int("new", s.Limit+1),
			zap.Int("busiest_key_running", s.MaxKeyRunning), zap.Int("queued", s.Queued))
	})
}

// eachAdaptiveLocked calls f for every adaptive rule of pol that still
// has a limiter, with its state.
func (c *Controller) eachAdaptiveLocked(pol *policy.Config, now time.Time, f func(*policy.Limit, Adjustable, *adaptiveState)) {
	for i := range pol.Limits {
		r := &pol.Limits[i]
		if !r.Adaptive {
			continue
		}
		if lim := c.limits.Limiter(r.Name); lim != nil {
			f(r, lim, c.stateLocked(r.Name, now))
		}
	}
}

// inUse reports whether a rule's limit is being used enough to justify
// raising it: its busiest key runs at least half the limit, or requests
// wait.
func inUse(s limiter.Stats) bool {
	return s.Queued > 0 || 2*s.MaxKeyRunning >= s.Limit
}

func describePressures(ps []Pressure) string {
	parts := make([]string, 0, len(ps))
	for _, p := range ps {
		parts = append(parts, p.Watcher+": "+p.Detail)
	}
	return strings.Join(parts, "; ")
}

// LastBackoff returns rule name's last decrease and why (zero when it
// never backed off), for `sluice status`.
func (c *Controller) LastBackoff(name string) (time.Time, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.rules[name]; st != nil {
		return st.lastBackoff, st.lastBackoffReason
	}
	return time.Time{}, ""
}

// Run samples src every [adaptive] sample_interval and adapts the limits
// of adaptive rules until ctx ends. Without adaptive rules it still runs
// (a reload may add some) but does nothing.
//
// A receive on src.Kicks() samples at once instead of at the next tick:
// the kernel's memory notifications (OOM, vmpressure, v2 memory.events)
// arrive on it, so a backoff follows an OOM within milliseconds rather
// than up to one sample interval later. The cool-down still applies, so
// one episode costs one decrease however many notifications it raises.
// The sender rate-limits what it sends (a vmpressure burst is hundreds of
// events); every sample restarts the interval.
func (c *Controller) Run(ctx context.Context, src Source) {
	kick := src.Kicks()
	for {
		interval := c.limits.Policy().Adaptive.SampleInterval.Duration
		if interval <= 0 {
			interval = time.Second
		}
		timer := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case <-kick:
			timer.Stop()
		}
		pol := c.limits.Policy()
		if !Enabled(pol) {
			continue
		}
		now := time.Now()
		ps := src.Sample(now)
		if c.budget != nil && pol.Budget.Enabled {
			var st *cgroup.Stats
			if ss, ok := src.(StatsSource); ok {
				if s, ok := ss.LastStats(); ok {
					st = &s
				}
			}
			c.budget.StepBudget(now, slices.Clone(ps), st, &pol.Adaptive)
		}
		c.Step(now, ps)
	}
}

// Enabled reports whether cfg has an adaptive rule or the host budget:
// without either, nothing is sampled and no kernel notification is
// registered.
func Enabled(cfg *policy.Config) bool {
	if cfg.Budget.Enabled {
		return true
	}
	for _, r := range cfg.Limits {
		if r.Adaptive {
			return true
		}
	}
	return false
}
