package main

import (
	"errors"
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
	return out
}

// hostMemory is the host's used (total minus available) and total memory.
func hostMemory() (uint64, uint64, error) {
	v, err := mem.VirtualMemory()
	if err != nil {
		return 0, 0, err
	}
	return v.Total - v.Available, v.Total, nil
}

// pressureSource samples sluice's parent cgroup (with the buckets' OOM
// kills added, since a v1 parent does not count its children's), or the
// host when there is no cgroup, and runs the watchers over it.
type pressureSource struct {
	a   *agent.Agent
	cg  *cgroups // nil: watch the host
	exp interface{ WatcherError(string) }
	log *zap.Logger

	mu       sync.Mutex // guards the fields below
	pol      *policy.Config
	ws       []cgroup.Watcher
	reported map[string]bool // missing signals already logged
}

func (p *pressureSource) stats() (cgroup.Stats, error) {
	if p.cg == nil {
		return cgroup.HostStats(), nil
	}
	s, err := p.cg.m.ParentStats()
	if err != nil {
		return s, err
	}
	p.cg.mu.Lock()
	n := p.cg.buckets
	p.cg.mu.Unlock()
	for i := 0; i < n; i++ {
		if b, err := p.cg.m.BucketStats(i); err == nil {
			s.OOMKills += b.OOMKills
		}
	}
	return s, nil
}

// sample implements agent.PressureFunc.
func (p *pressureSource) sample(now time.Time) []agent.Pressure {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pol := p.a.Policy(); pol != p.pol { // first call, or a reload
		p.pol = pol
		p.ws = watchers(&pol.Adaptive)
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
			out = append(out, agent.Pressure{Watcher: w.Name(), Detail: v.Detail})
		}
	}
	return out
}
