package adaptive

import (
	"errors"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/cgroup"
	"github.com/sluicehq/sluice/policy"
)

// SensorOptions configure a Sensor.
type SensorOptions struct {
	// Policy returns the configuration in force; required. It is read at
	// every sample, so a reload's watchers, thresholds and kernel_events
	// apply from the next sample on.
	Policy func() *policy.Config
	// Tree is sluice's hierarchy; nil without sluice cgroups (disabled or
	// unavailable).
	Tree cgroup.Manager
	// OnWatcherError counts a sample a watcher could not read (the
	// watcher errors metric); nil counts nothing.
	OnWatcherError func(watcher string)
	// Log receives what is watched and why; nil discards it.
	Log *zap.Logger

	// A simulated host (in-package tests only): stats replaces the reading
	// of the watched cgroup, findOwn cgroup.FindOwnCgroup, host the host's
	// memory.
	stats   func() (cgroup.Stats, error)
	findOwn func(mountpoint, procSelfCgroup string) (*cgroup.OwnCgroup, error)
	host    HostMemory
}

// Sensor samples what the watchers protect and runs them over it:
// sluice's parent cgroup (with the buckets' OOM kills added, since a v1
// parent does not count its children's); without sluice cgroups, the
// agent's own memory cgroup when it has a limit (it stands for the Git
// server's cgroup when sluiced runs beside the server); else the host.
// It also turns the kernel's memory notifications into kicks for the
// controller. It is the [Source] of a Controller on a real host.
type Sensor struct {
	policy         func() *policy.Config
	cg             cgroup.Manager    // sluice's hierarchy; nil without
	own            *cgroup.OwnCgroup // the agent's own limited cgroup when cg is nil; nil: the host
	onWatcherError func(string)
	log            *zap.Logger
	read           func() (cgroup.Stats, error) // SensorOptions.stats, or nil
	host           HostMemory
	// kick wakes the controller for an immediate sample (buffer 1:
	// notifications coalesce).
	kick chan struct{}

	mu       sync.Mutex // guards the fields below
	pol      *policy.Config
	ws       []Watcher
	reported map[string]bool // missing signals already logged
	oomNote  string          // an OOM notification not yet sampled
	last     cgroup.Stats    // the last sample's stats
	haveLast bool
	events   *cgroup.EventListener
	// eventsFor is the bucket count the listener was registered for (-1:
	// not registered).
	eventsFor int
}

// NewSensor decides what is watched and says so in the log, and
// registers the kernel's memory notifications when [adaptive]
// kernel_events is on. Close unregisters them.
func NewSensor(o SensorOptions) *Sensor {
	s := &Sensor{policy: o.Policy, cg: o.Tree, onWatcherError: o.OnWatcherError, log: o.Log, read: o.stats, host: o.host,
		kick: make(chan struct{}, 1), reported: map[string]bool{}, eventsFor: -1}
	if s.onWatcherError == nil {
		s.onWatcherError = func(string) {}
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.host == nil {
		s.host = hostMemory
	}
	findOwn := o.findOwn
	if findOwn == nil {
		findOwn = cgroup.FindOwnCgroup
	}
	cfg, cg, log := o.Policy(), o.Tree, s.log
	switch {
	case cg != nil:
		log.Info("adaptive: watching sluice's parent cgroup and its buckets", zap.String("cgroup", cg.ParentPath()),
			zap.Int64("memory_limit_bytes", cfg.Cgroups.MemoryBytes))
	default:
		own, err := findOwn(cfg.Cgroups.Mountpoint, "")
		switch {
		case err != nil:
			log.Warn("adaptive: cannot read the agent's own memory cgroup; watching the host's memory", zap.Error(err))
		case own == nil:
			log.Info("adaptive: no sluice cgroups and no memory limit on the agent's own cgroup: watching the host's memory")
		default:
			s.own = own
			log.Info("adaptive: no sluice cgroups: watching the agent's own memory cgroup, which has a limit (it stands for the Git server's)",
				zap.String("cgroup", own.Path), zap.Bool("v2", own.V2), zap.Uint64("memory_limit_bytes", own.Limit))
		}
	}
	s.mu.Lock()
	s.syncEventsLocked(cfg)
	s.mu.Unlock()
	// Prime the rate watchers (OOM kills, throttled periods, PSI totals)
	// with a baseline now, so an OOM kill before the first tick is not
	// taken for the baseline and missed. Level signals (memory) are read
	// again at the first tick, so nothing is lost by discarding this one.
	s.Sample(time.Now())
	return s
}

// Kicks implements Source: it receives when a kernel notification asks
// for a sample now.
func (s *Sensor) Kicks() <-chan struct{} { return s.kick }

// pressureLevels are the v1 vmpressure levels that wake the watchers:
// "medium" (the kernel reclaims actively) is early enough to catch the
// working set crossing its threshold, "critical" is the last warning
// before OOM. They only make the watchers look; the thresholds decide.
var pressureLevels = []string{"medium", "critical"}

// syncEventsLocked (re)registers the kernel notifications for cfg: at
// start, and after a reload that changes kernel_events or the bucket count.
func (s *Sensor) syncEventsLocked(cfg *policy.Config) {
	want := -1
	if cfg.Adaptive.KernelEvents && Enabled(cfg) && (s.cg != nil || s.own != nil) {
		want = 0
		if s.cg != nil {
			want = cfg.Cgroups.Repositories.Count
		}
	}
	if want == s.eventsFor {
		return
	}
	if s.events != nil {
		s.events.Close()
		s.events = nil
	}
	s.eventsFor = want
	if want < 0 {
		if !cfg.Adaptive.KernelEvents {
			s.log.Info("adaptive: kernel memory notifications off ([adaptive] kernel_events = false): polling every sample_interval")
		}
		return
	}
	var targets []cgroup.EventTarget
	if s.cg != nil {
		targets = cgroup.EventTargets(s.cg, pressureLevels)
	} else {
		targets = s.own.EventTargets(pressureLevels)
	}
	l, errs := cgroup.ListenEvents(targets)
	if l == nil {
		s.log.Warn("adaptive: kernel memory notifications unavailable: polling every sample_interval instead",
			zap.Error(errors.Join(errs...)), zap.String("fix", "cgroup v1 needs write access to cgroup.event_control; v2 needs the memory controller (memory.events)"))
		return
	}
	if len(errs) > 0 {
		s.log.Warn("adaptive: some kernel memory notifications could not be registered; those are polled",
			zap.Error(errors.Join(errs...)))
	}
	s.log.Info("adaptive: kernel memory notifications registered", zap.Int("registrations", l.Registrations()))
	s.events = l
	go s.forward(l.C(), l.Done())
}

// minKickGap bounds how often notifications other than OOM make the
// controller sample: reclaim raises vmpressure events by the hundred, and
// one sample per gap sees all they could show. An OOM notification kicks
// at once.
const minKickGap = 50 * time.Millisecond

// forward turns a listener's notifications into kicks until it is closed
// (done).
func (s *Sensor) forward(events <-chan cgroup.Event, done <-chan struct{}) {
	var last time.Time
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return
			}
			if ev.Kind == cgroup.EventOOM {
				if _, err := os.Stat(ev.Dir); err != nil {
					// v1 signals the eventfd once more when the cgroup is
					// removed (a bucket pruned by a reload): not an OOM.
					continue
				}
				s.mu.Lock()
				if s.oomNote == "" {
					s.oomNote = "kernel OOM notification for " + ev.Dir
				}
				s.mu.Unlock()
			} else if time.Since(last) < minKickGap {
				continue
			}
			last = time.Now()
			s.log.Debug("adaptive: kernel memory notification", zap.Stringer("kind", ev.Kind), zap.String("cgroup", ev.Dir), zap.String("level", ev.Level))
			select {
			case s.kick <- struct{}{}:
			default:
			}
		case <-done:
			return
		}
	}
}

// Close unregisters the kernel notifications.
func (s *Sensor) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.events != nil {
		s.events.Close()
		s.events = nil
	}
}

func (s *Sensor) stats() (cgroup.Stats, error) {
	if s.read != nil {
		return s.read()
	}
	if s.cg == nil {
		if s.own != nil {
			return s.own.Stats()
		}
		return cgroup.HostStats(), nil
	}
	t := cgroup.ReadTree(s.cg)
	if t.ParentErr != nil {
		return t.Parent, t.ParentErr
	}
	st := t.Parent
	st.OOMKills += t.Buckets.OOMKills
	return st, nil
}

// LastStats implements StatsSource: the stats of the last sample, and
// whether it could read them. Without a memory limit (the host is
// watched) MemoryLimit and MemoryUsage are the host's total and used
// memory.
func (s *Sensor) LastStats() (cgroup.Stats, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.last
	if s.haveLast && st.MemoryLimit == 0 {
		if used, total, err := s.host(); err == nil {
			st.MemoryLimit, st.MemoryUsage, st.InactiveFile = total, used, 0
		}
	}
	return st, s.haveLast
}

// Sample implements Source: it reads the watched cgroup once and runs
// every watcher over it.
func (s *Sensor) Sample(now time.Time) []Pressure {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pol := s.policy(); pol != s.pol { // first call, or a reload
		s.pol = pol
		s.ws = newWatchers(&pol.Adaptive, s.host)
		s.syncEventsLocked(pol)
	}
	if s.oomNote != "" {
		for _, w := range s.ws {
			if o, ok := w.(*OOMWatcher); ok {
				o.Notify(s.oomNote)
			}
		}
		s.oomNote = ""
	}
	st, err := s.stats()
	if err != nil {
		s.log.Warn("adaptive: reading cgroup stats", zap.Error(err))
		s.haveLast = false
		return nil
	}
	s.last, s.haveLast = st, true
	var out []Pressure
	for _, w := range s.ws {
		v, err := w.Observe(st, now)
		if err != nil {
			if errors.Is(err, ErrSignalMissing) {
				if !s.reported[w.Name()] {
					s.reported[w.Name()] = true
					s.onWatcherError(w.Name())
					s.log.Warn("adaptive: a pressure signal is missing and is ignored", zap.String("watcher", w.Name()), zap.Error(err))
				}
				continue
			}
			s.onWatcherError(w.Name())
			s.log.Warn("adaptive: watcher error", zap.String("watcher", w.Name()), zap.Error(err))
			continue
		}
		if v.Pressure {
			_, hold := w.(*saturationGate)
			out = append(out, Pressure{Watcher: w.Name(), Detail: v.Detail, HoldOnly: hold})
		}
	}
	return out
}
