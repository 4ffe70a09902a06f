package exporter

import (
	"github.com/sluicehq/sluice/agent/packcache"
	"github.com/sluicehq/sluice/cgroup"
	"github.com/sluicehq/sluice/ebpf"
)

// The sources below read sluice's other parts at scrape time, for
// Options.Cgroups, RegisterTracer and RegisterPackCache.

// FromCgroups is the CgroupSource of hierarchy m: the parent, and the sum of
// the buckets. failures reads the agent's placement failure count.
func FromCgroups(m cgroup.Manager, failures func() uint64) CgroupSource {
	return cgroupTree{m: m, failures: failures}
}

type cgroupTree struct {
	m        cgroup.Manager
	failures func() uint64
}

func (c cgroupTree) CgroupStats() ([]CgroupStat, uint64, bool) {
	t := cgroup.ReadTree(c.m)
	var out []CgroupStat
	if t.ParentErr == nil {
		out = append(out, cgroupStat(ScopeParent, t.Parent))
	}
	return append(out, cgroupStat(ScopeBuckets, t.Buckets)), c.failures(), true
}

func cgroupStat(scope string, s cgroup.Stats) CgroupStat {
	return CgroupStat{
		Scope:               scope,
		MemoryUsage:         s.MemoryUsage,
		MemoryLimit:         s.MemoryLimit,
		MemoryInactiveFile:  s.InactiveFile,
		CPUPeriods:          s.CPUPeriods,
		CPUThrottledPeriods: s.CPUThrottledPeriods,
		CPUThrottledSeconds: s.CPUThrottledTime.Seconds(),
		CPUUsageSeconds:     s.CPUUsage.Seconds(),
		OOMKills:            s.OOMKills,
		Processes:           s.Processes,
	}
}

// FromTracer reads t's counters, for RegisterTracer.
func FromTracer(t *ebpf.Tracer) func() TracerStats {
	return func() TracerStats {
		s := t.Stats()
		return TracerStats{Events: s.EventsRead, Lost: s.EventsLost, Tracked: uint64(s.Tracked)}
	}
}

// FromPackCache reads c's counters, for RegisterPackCache.
func FromPackCache(c *packcache.Cache) func() PackCacheStats {
	return func() PackCacheStats {
		s := c.Stats()
		return PackCacheStats{
			Hits: s.Hits, Joins: s.Joins, Misses: s.Misses, Writes: s.Writes,
			BytesServed: s.BytesServed, BytesWritten: s.BytesWritten,
			EvictionsSize: s.EvictionsSize, EvictionsAge: s.EvictionsAge, WriterFailures: s.WriterFailures,
			BypassCold: s.BypassCold, BypassDisk: s.BypassDisk, BypassTooLarge: s.BypassTooLarge,
			Entries: s.Entries, SizeBytes: s.SizeBytes, MaxBytes: s.MaxBytes,
		}
	}
}
