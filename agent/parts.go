package agent

import (
	"time"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/shimproto"
	"github.com/sluicehq/sluice/cgroup"
	"github.com/sluicehq/sluice/ebpf"
	"github.com/sluicehq/sluice/policy"
)

// parts.go holds what the agent does with the parts sluiced runs beside
// it (Options.Cgroups, the tracer, the pack cache) and with shim.conf:
// translate the policy for them, report them in Status, apply a reload.

// ShimConfig is what the shim needs to know without parsing the policy.
// packCache says whether a pack cache serves (enabled and started).
// Changing [pack_cache] takes a restart: a reload rewrites shim.conf, but
// the cache keeps its directory and bounds.
func ShimConfig(cfg *policy.Config, packCache bool) shimproto.ShimConfig {
	return shimproto.ShimConfig{
		FailClosed: cfg.Agent.FailMode == "closed",
		GitBin:     cfg.Git.Bin,
		Match:      cfg.MatchedSubcommands(),
		// The longest a shim may legitimately wait, plus slack for the
		// agent to answer.
		AdmitTimeout:       cfg.MaxQueueWait() + 2*time.Second,
		QueueFeedbackAfter: cfg.Agent.QueueFeedbackAfter.Duration,
		RestartGrace:       cfg.Agent.RestartGrace.Duration,
		PackCache:          cfg.PackCache.Enabled && packCache,
	}
}

// writeShimConfig writes shim.conf for cfg beside the socket Start opened.
func (a *Agent) writeShimConfig(cfg *policy.Config) error {
	return shimproto.WriteShimConfig(a.shimConf, ShimConfig(cfg, a.packCache != nil))
}

// CgroupConfig translates the policy's [cgroups] section.
func CgroupConfig(p *policy.Cgroups) cgroup.Config {
	return cgroup.Config{
		Mountpoint: p.Mountpoint,
		Root:       p.HierarchyRoot,
		Parent:     cgroup.Limits{MemoryBytes: p.MemoryBytes, CPUShares: uint64(p.CPUShares), CPUQuotaUs: p.CPUQuotaUs},
		Buckets:    p.Repositories.Count,
		Bucket: cgroup.Limits{MemoryBytes: p.Repositories.MemoryBytes, CPUShares: uint64(p.Repositories.CPUShares),
			CPUQuotaUs: p.Repositories.CPUQuotaUs},
	}
}

// reloadParts applies a reloaded cfg to shim.conf (once Start wrote it)
// and the cgroup hierarchy, and returns the notes for the reload's
// changes.
func (a *Agent) reloadParts(cfg *policy.Config) []string {
	var notes []string
	if a.shimConf != "" {
		if err := a.writeShimConfig(cfg); err != nil {
			notes = append(notes, "shim.conf not rewritten: "+err.Error())
		}
	}
	if a.cgroups != nil {
		notes = append(notes, cgroup.Reconfigure(a.cgroups, CgroupConfig(&cfg.Cgroups))...)
	}
	return notes
}

// describeParts adds the cgroup, eBPF and pack cache state to a Status
// answer.
func (a *Agent) describeParts(resp *admitpb.StatusResponse) {
	if m := a.cgroups; m != nil {
		t := cgroup.ReadTree(m)
		st := &admitpb.CgroupStatus{State: m.Mode().String(), Buckets: int32(m.Buckets()), ParentPath: m.ParentPath(),
			PlacementFailures: a.PlacementFailures(), OomKills: t.Parent.OOMKills + t.Buckets.OOMKills}
		if t.ParentErr == nil {
			st.MemoryUsageBytes = t.Parent.MemoryUsage
			st.MemoryLimitBytes = t.Parent.MemoryLimit
			st.CpuPeriods = t.Parent.CPUPeriods
			st.CpuThrottledPeriods = t.Parent.CPUThrottledPeriods
		}
		resp.Cgroups = st
	} else if a.cgroupState != "" {
		resp.Cgroups = &admitpb.CgroupStatus{State: a.cgroupState}
	}
	if a.tracerState != "" {
		resp.EbpfState = a.tracerState
	}
	if a.packCache != nil {
		resp.PackCache = a.packCache.Status()
	}
}

// TracerEvents feeds the tracer's events to a (ebpf.Tracer.Run's handler).
func (a *Agent) TracerEvents() ebpf.Handler { return tracerEvents{a} }

type tracerEvents struct{ a *Agent }

func (h tracerEvents) Exec(e ebpf.Exec) {
	h.a.GitExecuted(GitExec{PID: e.PID, PPID: e.PPID, Root: e.Root, ParentComm: e.ParentComm,
		Filename: e.Filename, Argv: e.Argv})
}

func (h tracerEvents) Exit(e ebpf.Exit) {
	if e.Root != e.PID {
		return // a descendant: its CPU is in its root's report once reaped
	}
	h.a.ProcessExited(ProcessExit{PID: e.PID, User: e.User, System: e.System, MaxRSSKiB: e.MaxRSSKiB,
		ExitCode: e.ExitCode, Signal: e.Signal, End: e.End, StartTicks: e.StartTicks})
}
