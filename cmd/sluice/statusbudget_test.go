package main

import (
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent/admitpb"
)

func TestRenderBudget(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	var b strings.Builder
	renderBudget(&b, []*admitpb.BudgetStatus{
		{Class: "pack", Enabled: true, Limit: 4, InUse: 4, Queued: 30, Keys: 5, BackloggedKeys: 5, Fairness: 0.98, FairKey: "remote_ip",
			Cpus: 2, CpusSource: "2 CPUs in the affinity mask", MemoryBytes: 1536 << 20, MemorySource: "host memory", Adaptive: true,
			Derivation:       "start 4 = min(2 × 2 CPUs = 4; 70% of 1536 MiB / 256 MiB per command = 4); ceiling 16 = 8 × CPUs",
			EstimateRssBytes: 178 << 20, ServiceTimeUsec: 45e6, EpochUsec: 30e6, GoodputBytesPerSec: 8 << 20, CpuUse: 0.95, CoresPerCommand: 0.4,
			LastMoveUnixUsec: now.Add(-90 * time.Second).UnixMicro(), LastMoveReason: "6 -> 3: psi_memory: memory full stalled 0.39"},
		{Class: "upload-pack", Enabled: true, Limit: 96, InUse: 20, Derivation: "96 = 50% of 1536 MiB / 8 MiB per upload-pack, within [16, 4096]"},
		{Class: "receive-pack", Enabled: true, Limit: 8, Derivation: "fixed by [budget] receive_pack = 8"},
	}, now)
	out := b.String()
	for _, want := range []string{
		"host budget (fair shares by remote_ip; 2 CPUs from 2 CPUs in the affinity mask; memory 1.5 GiB from host memory)",
		"pack          4 adaptive", "5 (5)", "0.98",
		"upload-pack   96 derived", "receive-pack  8 fixed",
		"pack: start 4 = min(2 × 2 CPUs = 4",
		"last epoch (30s): goodput 8.0 MiB/s, CPU 95%, 0.40 cores per command",
		"last moved 1m30s ago: 6 -> 3: psi_memory",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	renderBudget(&b, []*admitpb.BudgetStatus{{Class: "pack"}}, now)
	if !strings.Contains(b.String(), "host budget: off") {
		t.Errorf("disabled budget: %q", b.String())
	}
}
