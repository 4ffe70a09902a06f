package main

import (
	"errors"
	"os"
	"sync"
	"time"

	"github.com/shirou/gopsutil/v3/mem"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/cgroup"
	"github.com/sluicehq/sluice/policy"
)

// watchers builds the pressure watchers [adaptive] asks for.
func watchers(ad *policy.Adaptive) []cgroup.Watcher {
	var out []cgroup.Watcher
	for _, name := range ad.Watchers {
		switch name {
		case "memory":
			w := &cgroup.MemoryWatcher{Threshold: ad.MemoryThreshold, Host: hostMemory}
			if ad.MemorySignal == policy.MemoryAnon {
				w.Anon, w.Threshold = true, ad.AnonThreshold
			}
			out = append(out, w)
		case "oom":
			out = append(out, &cgroup.OOMWatcher{})
		case "cpu_throttle":
			out = append(out, &cgroup.ThrottleWatcher{Threshold: ad.CPUThrottleThreshold})
		case "psi_memory":
			out = append(out, &cgroup.PSIWatcher{Resource: "memory", Full: true, Threshold: ad.PSIMemoryFullThreshold})
		case "psi_cpu":
			out = append(out, &cgroup.PSIWatcher{Resource: "cpu", Threshold: ad.PSICPUSomeThreshold})
		}
	}
	if ad.IncreaseMaxPSICPU > 0 {
		out = append(out, &saturationGate{cgroup.PSIWatcher{Resource: "cpu", Threshold: ad.IncreaseMaxPSICPU}})
	}
	return out
}

// saturationGate watches CPU PSI "some" for [adaptive] increase_max_psi_cpu:
// a CPU this contended gains nothing from more concurrency, so it holds
// additive increases back — it never decreases a limit.
type saturationGate struct{ cgroup.PSIWatcher }

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

// pressureSource samples what the watchers protect and runs them over it:
// sluice's parent cgroup (with the buckets' OOM kills added, since a v1
// parent does not count its children's); without sluice cgroups, the
// agent's own memory cgroup when it has a limit (it stands for the Git
// server's cgroup when sluiced runs beside the server); else the host.
// It also turns the kernel's memory notifications into kicks for the
// calibrator.
type pressureSource struct {
	a   *agent.Agent
	cg  cgroup.Manager    // sluice's hierarchy; nil without
	own *cgroup.OwnCgroup // the agent's own limited cgroup when cg is nil; nil: the host
	exp interface{ WatcherError(string) }
	log *zap.Logger
	// kick wakes the calibrator for an immediate sample (buffer 1:
	// notifications coalesce).
	kick chan struct{}

	mu       sync.Mutex // guards the fields below
	pol      *policy.Config
	ws       []cgroup.Watcher
	reported map[string]bool // missing signals already logged
	oomNote  string          // an OOM notification not yet sampled
	events   *cgroup.EventListener
	// eventsFor is the bucket count the listener was registered for (-1:
	// not registered).
	eventsFor int
}

// newPressureSource decides what is watched and says so in the log, and
// registers the kernel's memory notifications when [adaptive]
// kernel_events is on.
func newPressureSource(a *agent.Agent, cg cgroup.Manager, exp interface{ WatcherError(string) }, cfg *policy.Config, log *zap.Logger) *pressureSource {
	p := &pressureSource{a: a, cg: cg, exp: exp, log: log, kick: make(chan struct{}, 1), reported: map[string]bool{}, eventsFor: -1}
	switch {
	case cg != nil:
		log.Info("adaptive: watching sluice's parent cgroup and its buckets", zap.String("cgroup", cg.ParentPath()),
			zap.Int64("memory_limit_bytes", cfg.Cgroups.MemoryBytes))
	default:
		own, err := cgroup.FindOwnCgroup(cfg.Cgroups.Mountpoint, "")
		switch {
		case err != nil:
			log.Warn("adaptive: cannot read the agent's own memory cgroup; watching the host's memory", zap.Error(err))
		case own == nil:
			log.Info("adaptive: no sluice cgroups and no memory limit on the agent's own cgroup: watching the host's memory")
		default:
			p.own = own
			log.Info("adaptive: no sluice cgroups: watching the agent's own memory cgroup, which has a limit (it stands for the Git server's)",
				zap.String("cgroup", own.Path), zap.Bool("v2", own.V2), zap.Uint64("memory_limit_bytes", own.Limit))
		}
	}
	p.mu.Lock()
	p.syncEventsLocked(cfg)
	p.mu.Unlock()
	// Prime the rate watchers (OOM kills, throttled periods, PSI totals)
	// with a baseline now, so an OOM kill before the first tick is not
	// taken for the baseline and missed. Level signals (memory) are read
	// again at the first tick, so nothing is lost by discarding this one.
	p.sample(time.Now())
	return p
}

// pressureLevels are the v1 vmpressure levels that wake the watchers:
// "medium" (the kernel reclaims actively) is early enough to catch the
// working set crossing its threshold, "critical" is the last warning
// before OOM. They only make the watchers look; the thresholds decide.
var pressureLevels = []string{"medium", "critical"}

// syncEventsLocked (re)registers the kernel notifications for cfg: at
// start, and after a reload that changes kernel_events or the bucket count.
func (p *pressureSource) syncEventsLocked(cfg *policy.Config) {
	want := -1
	if cfg.Adaptive.KernelEvents && hasAdaptive(cfg) && (p.cg != nil || p.own != nil) {
		want = 0
		if p.cg != nil {
			want = cfg.Cgroups.Repositories.Count
		}
	}
	if want == p.eventsFor {
		return
	}
	if p.events != nil {
		p.events.Close()
		p.events = nil
	}
	p.eventsFor = want
	if want < 0 {
		if !cfg.Adaptive.KernelEvents {
			p.log.Info("adaptive: kernel memory notifications off ([adaptive] kernel_events = false): polling every sample_interval")
		}
		return
	}
	var targets []cgroup.EventTarget
	if p.cg != nil {
		targets = cgroup.EventTargets(p.cg, pressureLevels)
	} else {
		targets = p.own.EventTargets(pressureLevels)
	}
	l, errs := cgroup.ListenEvents(targets)
	if l == nil {
		p.log.Warn("adaptive: kernel memory notifications unavailable: polling every sample_interval instead",
			zap.Error(errors.Join(errs...)), zap.String("fix", "cgroup v1 needs write access to cgroup.event_control; v2 needs the memory controller (memory.events)"))
		return
	}
	if len(errs) > 0 {
		p.log.Warn("adaptive: some kernel memory notifications could not be registered; those are polled",
			zap.Error(errors.Join(errs...)))
	}
	p.log.Info("adaptive: kernel memory notifications registered", zap.Int("registrations", l.Registrations()))
	p.events = l
	go p.forward(l)
}

func hasAdaptive(cfg *policy.Config) bool {
	for _, r := range cfg.Limits {
		if r.Adaptive {
			return true
		}
	}
	return false
}

// minKickGap bounds how often notifications other than OOM make the
// calibrator sample: reclaim raises vmpressure events by the hundred, and
// one sample per gap sees all they could show. An OOM notification kicks
// at once.
const minKickGap = 50 * time.Millisecond

// forward turns l's notifications into kicks until l is closed.
func (p *pressureSource) forward(l *cgroup.EventListener) {
	var last time.Time
	for {
		select {
		case ev, ok := <-l.C():
			if !ok {
				return
			}
			if ev.Kind == cgroup.EventOOM {
				if _, err := os.Stat(ev.Dir); err != nil {
					// v1 signals the eventfd once more when the cgroup is
					// removed (a bucket pruned by a reload): not an OOM.
					continue
				}
				p.mu.Lock()
				if p.oomNote == "" {
					p.oomNote = "kernel OOM notification for " + ev.Dir
				}
				p.mu.Unlock()
			} else if time.Since(last) < minKickGap {
				continue
			}
			last = time.Now()
			p.log.Debug("adaptive: kernel memory notification", zap.Stringer("kind", ev.Kind), zap.String("cgroup", ev.Dir), zap.String("level", ev.Level))
			select {
			case p.kick <- struct{}{}:
			default:
			}
		case <-l.Done():
			return
		}
	}
}

// close unregisters the kernel notifications.
func (p *pressureSource) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.events != nil {
		p.events.Close()
		p.events = nil
	}
}

func (p *pressureSource) stats() (cgroup.Stats, error) {
	if p.cg == nil {
		if p.own != nil {
			return p.own.Stats()
		}
		return cgroup.HostStats(), nil
	}
	t := cgroup.ReadTree(p.cg)
	if t.ParentErr != nil {
		return t.Parent, t.ParentErr
	}
	s := t.Parent
	s.OOMKills += t.Buckets.OOMKills
	return s, nil
}

// sample implements agent.PressureFunc.
func (p *pressureSource) sample(now time.Time) []agent.Pressure {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pol := p.a.Policy(); pol != p.pol { // first call, or a reload
		p.pol = pol
		p.ws = watchers(&pol.Adaptive)
		p.syncEventsLocked(pol)
	}
	if p.oomNote != "" {
		for _, w := range p.ws {
			if o, ok := w.(*cgroup.OOMWatcher); ok {
				o.Notify(p.oomNote)
			}
		}
		p.oomNote = ""
	}
	s, err := p.stats()
	if err != nil {
		p.log.Warn("adaptive: reading cgroup stats", zap.Error(err))
		return nil
	}
	var out []agent.Pressure
	for _, w := range p.ws {
		v, err := w.Observe(s, now)
		if err != nil {
			if errors.Is(err, cgroup.ErrSignalMissing) {
				if !p.reported[w.Name()] {
					p.reported[w.Name()] = true
					p.exp.WatcherError(w.Name())
					p.log.Warn("adaptive: a pressure signal is missing and is ignored", zap.String("watcher", w.Name()), zap.Error(err))
				}
				continue
			}
			p.exp.WatcherError(w.Name())
			p.log.Warn("adaptive: watcher error", zap.String("watcher", w.Name()), zap.Error(err))
			continue
		}
		if v.Pressure {
			_, hold := w.(*saturationGate)
			out = append(out, agent.Pressure{Watcher: w.Name(), Detail: v.Detail, HoldOnly: hold})
		}
	}
	return out
}
