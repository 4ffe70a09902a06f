package main

import (
	"errors"
	"fmt"

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

// setupCgroups creates or adopts the hierarchy. With cgroups disabled it
// returns no manager and no error. When they cannot be set up it returns nil and logs one
// line saying what is missing and how to fix it, unless required is set,
// in which case it returns the error.
//
// The returned state is what `sluice status` shows when there is no manager.
func setupCgroups(cfg *policy.Config, log *zap.Logger) (cgroup.Manager, string, error) {
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
		zap.Int("buckets", m.Buckets()))
	return m, "", nil
}

// updateCgroups applies a reloaded [cgroups] section.
func updateCgroups(m cgroup.Manager, p *policy.Cgroups) []string {
	before := m.Buckets()
	if err := m.Update(cgroupConfig(p)); err != nil {
		return []string{"cgroups: limits not updated: " + err.Error()}
	}
	if after := m.Buckets(); after != before {
		return []string{fmt.Sprintf("cgroups: buckets %d -> %d (repositories may move to another bucket for new commands)", before, after)}
	}
	return nil
}

// cgroupStats adapts the hierarchy's statistics to the exporter (as its
// CgroupSource) and to `sluice status`.
type cgroupStats struct {
	m        cgroup.Manager
	failures func() uint64 // the agent's placement failure count
}

// CgroupStats implements exporter.CgroupSource: the parent, and the sum of
// the buckets.
func (c cgroupStats) CgroupStats() ([]exporter.CgroupStat, uint64, bool) {
	t := cgroup.ReadTree(c.m)
	var out []exporter.CgroupStat
	if t.ParentErr == nil {
		out = append(out, toExporter(exporter.ScopeParent, t.Parent))
	}
	return append(out, toExporter(exporter.ScopeBuckets, t.Buckets)), c.failures(), true
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
func (c cgroupStats) status() *admitpb.CgroupStatus {
	t := cgroup.ReadTree(c.m)
	st := &admitpb.CgroupStatus{State: c.m.Mode().String(), Buckets: int32(c.m.Buckets()), ParentPath: c.m.ParentPath(),
		PlacementFailures: c.failures(), OomKills: t.Parent.OOMKills + t.Buckets.OOMKills}
	if t.ParentErr == nil {
		st.MemoryUsageBytes = t.Parent.MemoryUsage
		st.MemoryLimitBytes = t.Parent.MemoryLimit
		st.CpuPeriods = t.Parent.CPUPeriods
		st.CpuThrottledPeriods = t.Parent.CPUThrottledPeriods
	}
	return st
}
