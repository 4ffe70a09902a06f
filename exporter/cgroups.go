package exporter

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Cgroup scopes, the `scope` label of the cgroup metrics: the parent cgroup
// (everything sluice placed) and the sum over the per-repository buckets.
// Buckets are summed, never labelled one by one, so the series count stays
// fixed however many buckets are configured.
const (
	ScopeParent  = "parent"
	ScopeBuckets = "buckets"
)

// CgroupStat is one scope's cgroup statistics at scrape time.
type CgroupStat struct {
	Scope string
	// MemoryUsage and MemoryLimit in bytes; a zero limit means none and is
	// not exported.
	MemoryUsage, MemoryLimit uint64
	// MemoryInactiveFile is evictable page cache (usage minus it is the
	// working set the adaptive limiter watches).
	MemoryInactiveFile uint64
	// CPUPeriods and CPUThrottledPeriods count CFS enforcement periods;
	// CPUThrottledSeconds is throttled time summed over CPUs.
	CPUPeriods, CPUThrottledPeriods uint64
	CPUThrottledSeconds             float64
	CPUUsageSeconds                 float64
	OOMKills                        uint64
	Processes                       int
}

// CgroupSource reports cgroup statistics, read at scrape time. Stats
// returns ok=false while cgroups are disabled or unavailable.
type CgroupSource interface {
	CgroupStats() (stats []CgroupStat, placementFailures uint64, ok bool)
}

type cgroupCollector struct {
	src                                    CgroupSource
	memUsage, memLimit, memInactive        *prometheus.Desc
	periods, throttled, throttledSec, cpuS *prometheus.Desc
	oom, procs, placementFailures          *prometheus.Desc
}

func newCgroupCollector(src CgroupSource) *cgroupCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "cgroup", name), help, labels, nil)
	}
	return &cgroupCollector{
		src:               src,
		memUsage:          d("memory_usage_bytes", "Memory charged to sluice's cgroups (page cache included).", "scope"),
		memLimit:          d("memory_limit_bytes", "Memory limit of the parent cgroup (absent when unlimited).", "scope"),
		memInactive:       d("memory_inactive_file_bytes", "Evictable page cache in sluice's cgroups.", "scope"),
		periods:           d("cpu_periods_total", "CFS enforcement periods that elapsed with a CPU quota set.", "scope"),
		throttled:         d("cpu_throttled_periods_total", "CFS periods in which the cgroup was throttled.", "scope"),
		throttledSec:      d("cpu_throttled_seconds_total", "Time the cgroup's tasks were throttled, summed over CPUs.", "scope"),
		cpuS:              d("cpu_usage_seconds_total", "CPU time used by the cgroup's tasks.", "scope"),
		oom:               d("oom_kills_total", "Processes the OOM killer killed inside the cgroup.", "scope"),
		procs:             d("processes", "Processes in the cgroup now.", "scope"),
		placementFailures: d("placement_failures_total", "Admitted processes sluice could not move into their bucket."),
	}
}

func (c *cgroupCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.memUsage, c.memLimit, c.memInactive, c.periods, c.throttled, c.throttledSec, c.cpuS, c.oom, c.procs, c.placementFailures} {
		ch <- d
	}
}

func (c *cgroupCollector) Collect(ch chan<- prometheus.Metric) {
	stats, failures, ok := c.src.CgroupStats()
	if !ok {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.placementFailures, prometheus.CounterValue, float64(failures))
	seen := map[string]bool{}
	for _, s := range stats {
		if seen[s.Scope] {
			continue
		}
		seen[s.Scope] = true
		g := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, s.Scope)
		}
		cnt := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, s.Scope)
		}
		g(c.memUsage, float64(s.MemoryUsage))
		if s.MemoryLimit > 0 {
			g(c.memLimit, float64(s.MemoryLimit))
		}
		g(c.memInactive, float64(s.MemoryInactiveFile))
		cnt(c.periods, float64(s.CPUPeriods))
		cnt(c.throttled, float64(s.CPUThrottledPeriods))
		cnt(c.throttledSec, s.CPUThrottledSeconds)
		cnt(c.cpuS, s.CPUUsageSeconds)
		cnt(c.oom, float64(s.OOMKills))
		g(c.procs, float64(s.Processes))
	}
}
