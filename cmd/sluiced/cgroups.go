package main

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/cgroup"
	"github.com/sluicehq/sluice/exporter"
	"github.com/sluicehq/sluice/policy"
)

// cgroupConfig translates the policy's [cgroups] section.
func cgroupConfig(p *policy.Cgroups) cgroup.Config {
	return cgroup.Config{
		Mountpoint: p.Mountpoint,
		Root:       p.HierarchyRoot,
		Parent:     cgroup.Limits{MemoryBytes: p.MemoryBytes, CPUShares: uint64(p.CPUShares), CPUQuotaUs: p.CPUQuotaUs},
		Buckets:    p.Repositories.Count,
		Bucket: cgroup.Limits{MemoryBytes: p.Repositories.MemoryBytes, CPUShares: uint64(p.Repositories.CPUShares),
			CPUQuotaUs: p.Repositories.CPUQuotaUs},
	}
}

// cgroups joins the cgroup manager to the agent (as its Placer) and to the
// exporter (as its CgroupSource).
type cgroups struct {
	m        cgroup.Manager
	failures func() uint64 // the agent's placement failure count

	mu      sync.Mutex // guards buckets
	buckets int
}

// setupCgroups creates or adopts the hierarchy. With cgroups disabled it
// returns no manager and no error. When they cannot be set up it returns nil and logs one
// line saying what is missing and how to fix it, unless required is set,
// in which case it returns the error.
//
// The returned state is what `sluice status` shows when there is no manager.
func setupCgroups(cfg *policy.Config, log *zap.Logger) (*cgroups, string, error) {
	if !cfg.Cgroups.Enabled {
		log.Info("cgroups disabled ([cgroups] enabled = false): commands run in their caller's cgroup")
		return nil, "disabled", nil
	}
	m, err := cgroup.New(cgroupConfig(&cfg.Cgroups), log.Named("cgroup"))
	if err != nil {
		if cfg.Cgroups.Required {
			return nil, "", fmt.Errorf("[cgroups] required = true, but cgroups cannot be set up: %w", err)
		}
		var ue *cgroup.UnsupportedError
		fix := "set [cgroups] enabled = false to silence this"
		if errors.As(err, &ue) {
			fix = ue.Need + "; or " + fix
		}
		log.Warn("cgroups unavailable: admitting without placement", zap.Error(err), zap.String("fix", fix))
		return nil, "unavailable: " + err.Error(), nil
	}
	log.Info("cgroups ready", zap.String("mode", m.Mode().String()), zap.String("bucket0", m.BucketPath(0)),
		zap.Int("buckets", cfg.Cgroups.Repositories.Count))
	return &cgroups{m: m, buckets: cfg.Cgroups.Repositories.Count}, "", nil
}

// Bucket implements agent.Placer.
func (c *cgroups) Bucket(repo []byte) int {
	c.mu.Lock()
	n := c.buckets
	c.mu.Unlock()
	return cgroup.BucketFor(repo, n)
}

// BucketPath implements agent.Placer.
func (c *cgroups) BucketPath(i int) string { return c.m.BucketPath(i) }

// Place implements agent.Placer.
func (c *cgroups) Place(pid, bucket int) error { return c.m.Place(pid, bucket) }

// update applies a reloaded [cgroups] section.
func (c *cgroups) update(p *policy.Cgroups) []string {
	if err := c.m.Update(cgroupConfig(p)); err != nil {
		return []string{"cgroups: limits not updated: " + err.Error()}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buckets != p.Repositories.Count {
		note := fmt.Sprintf("cgroups: buckets %d -> %d (repositories may move to another bucket for new commands)", c.buckets, p.Repositories.Count)
		c.buckets = p.Repositories.Count
		return []string{note}
	}
	return nil
}

// CgroupStats implements exporter.CgroupSource: the parent, and the sum of
// the buckets.
func (c *cgroups) CgroupStats() ([]exporter.CgroupStat, uint64, bool) {
	var failures uint64
	if c.failures != nil {
		failures = c.failures()
	}
	var out []exporter.CgroupStat
	if s, err := c.m.ParentStats(); err == nil {
		out = append(out, toExporter(exporter.ScopeParent, s))
	}
	c.mu.Lock()
	n := c.buckets
	c.mu.Unlock()
	sum := exporter.CgroupStat{Scope: exporter.ScopeBuckets}
	for i := 0; i < n; i++ {
		s, err := c.m.BucketStats(i)
		if err != nil {
			continue
		}
		b := toExporter(exporter.ScopeBuckets, s)
		sum.MemoryUsage += b.MemoryUsage
		sum.MemoryInactiveFile += b.MemoryInactiveFile
		sum.CPUPeriods += b.CPUPeriods
		sum.CPUThrottledPeriods += b.CPUThrottledPeriods
		sum.CPUThrottledSeconds += b.CPUThrottledSeconds
		sum.CPUUsageSeconds += b.CPUUsageSeconds
		sum.OOMKills += b.OOMKills
		sum.Processes += b.Processes
	}
	return append(out, sum), failures, true
}

func toExporter(scope string, s cgroup.Stats) exporter.CgroupStat {
	return exporter.CgroupStat{
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

// status describes the cgroup state for `sluice status`.
func (c *cgroups) status() *admitpb.CgroupStatus {
	st := &admitpb.CgroupStatus{State: c.m.Mode().String()}
	c.mu.Lock()
	st.Buckets = int32(c.buckets)
	c.mu.Unlock()
	if p := c.m.BucketPath(0); p != "" {
		st.ParentPath = strings.TrimSuffix(p, "/repos/0")
	}
	if s, err := c.m.ParentStats(); err == nil {
		st.MemoryUsageBytes = s.MemoryUsage
		st.MemoryLimitBytes = s.MemoryLimit
		st.CpuPeriods = s.CPUPeriods
		st.CpuThrottledPeriods = s.CPUThrottledPeriods
	}
	if stats, failures, ok := c.CgroupStats(); ok {
		st.PlacementFailures = failures
		for _, s := range stats {
			st.OomKills += s.OOMKills
		}
	}
	return st
}
