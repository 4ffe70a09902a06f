package main

import (
	"os"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/ebpf"
	"github.com/sluicehq/sluice/exporter"
	"github.com/sluicehq/sluice/gitwrap"
	"github.com/sluicehq/sluice/policy"
)

// openTracer loads the eBPF tracer when [ebpf] enabled asks for it. It
// returns nil and says why (one log line) when tracing is off or the
// kernel refuses it: shims then run supervised, which costs a resident
// shim per command but loses nothing else.
func openTracer(cfg *policy.Config, log *zap.Logger) (*ebpf.Tracer, string) {
	if !cfg.EBPF.Enabled {
		log.Info("eBPF tracing is off ([ebpf] enabled = false): shims run git as a supervised child")
		return nil, "disabled"
	}
	git, err := gitwrap.FindRealGit(os.Getenv, cfg.Git.Bin)
	if err != nil {
		log.Warn("eBPF tracing unavailable: cannot find the real git to watch; shims run git as a supervised child", zap.Error(err))
		return nil, "unavailable: " + err.Error()
	}
	bins, err := ebpf.GitBinaries(git)
	if err != nil {
		log.Warn("eBPF tracing unavailable: cannot list the git binaries to watch; shims run git as a supervised child",
			zap.String("git", git), zap.Error(err))
		return nil, "unavailable: " + err.Error()
	}
	t, err := ebpf.Open(ebpf.Options{GitBinaries: bins})
	if err != nil {
		log.Warn("eBPF tracing unavailable: shims run git as a supervised child (fix: run sluiced as root with CAP_BPF and CAP_PERFMON on a kernel with BTF, or set [ebpf] enabled = false to silence this)",
			zap.Error(err))
		return nil, "unavailable: " + err.Error()
	}
	log.Info("eBPF tracer running: shims exec git in place; unwrapped git execs are counted",
		zap.String("git", git), zap.Int("git_binaries", len(bins)))
	return t, "running"
}

// tracerEvents feeds the tracer's events to the agent.
type tracerEvents struct{ a *agent.Agent }

func (h tracerEvents) Exec(e ebpf.Exec) {
	h.a.GitExecuted(agent.GitExec{PID: e.PID, PPID: e.PPID, Root: e.Root, ParentComm: e.ParentComm,
		Filename: e.Filename, Argv: e.Argv})
}

func (h tracerEvents) Exit(e ebpf.Exit) {
	if e.Root != e.PID {
		return // a descendant: its CPU is in its root's report once reaped
	}
	h.a.ProcessExited(agent.ProcessExit{PID: e.PID, User: e.User, System: e.System, MaxRSSKiB: e.MaxRSSKiB,
		ExitCode: e.ExitCode, Signal: e.Signal, End: e.End})
}

// tracerStats adapts the tracer's counters to the exporter.
func tracerStats(t *ebpf.Tracer) func() exporter.TracerStats {
	return func() exporter.TracerStats {
		s := t.Stats()
		return exporter.TracerStats{Events: s.EventsRead, Lost: s.EventsLost, Tracked: uint64(s.Tracked)}
	}
}
