package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluicehq/sluice/agent/admitpb"
)

// renderBudget writes the host budget: one line per class (limit, use,
// fair shares), then how the adapted limit was derived and why it last
// moved.
func renderBudget(b *strings.Builder, budgets []*admitpb.BudgetStatus, now time.Time) {
	if len(budgets) == 0 {
		return
	}
	b.WriteString("\n")
	if !budgets[0].Enabled {
		b.WriteString("host budget: off ([budget] enabled = false)\n")
		return
	}
	fmt.Fprintf(b, "host budget (fair shares by %s; %.3g CPUs from %s; memory %s from %s)\n",
		budgets[0].FairKey, budgets[0].Cpus, budgets[0].CpusSource, fmtBytes(budgets[0].MemoryBytes), budgets[0].MemorySource)
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CLASS\tLIMIT\tIN USE\tQUEUED\tKEYS (WAITING)\tFAIRNESS\tADMITTED\tDROPPED SIZE/TIME")
	for _, c := range budgets {
		kind := "derived"
		if c.Adaptive {
			kind = "adaptive"
		} else if strings.HasPrefix(c.Derivation, "fixed") {
			kind = "fixed"
		}
		fmt.Fprintf(tw, "%s\t%d %s\t%d\t%d\t%d (%d)\t%.2f\t%d\t%d/%d\n", c.Class, c.Limit, kind, c.InUse, c.Queued,
			c.Keys, c.BackloggedKeys, c.Fairness, c.AdmittedTotal, c.DroppedMaxSize, c.DroppedMaxTime)
	}
	tw.Flush()
	for _, c := range budgets {
		fmt.Fprintf(b, "  %s: %s\n", c.Class, c.Derivation)
		if !c.Adaptive {
			continue
		}
		est := "prior"
		if c.ServiceTimeUsec > 0 {
			est = fmt.Sprintf("learned; mean command %s", fmtDuration(time.Duration(c.ServiceTimeUsec)*time.Microsecond))
		}
		epoch := "no busy epoch yet"
		if c.GoodputBytesPerSec > 0 || c.CpuUse > 0 {
			epoch = fmt.Sprintf("last epoch (%s): goodput %s/s, CPU %.0f%%, %.2f cores per command",
				fmtDuration(time.Duration(c.EpochUsec)*time.Microsecond), fmtBytes(uint64(c.GoodputBytesPerSec)), 100*c.CpuUse, c.CoresPerCommand)
		}
		fmt.Fprintf(b, "    per-command memory estimate %s (%s); %s\n", fmtBytes(c.EstimateRssBytes), est, epoch)
		if c.LastMoveUnixUsec == 0 {
			fmt.Fprintf(b, "    not moved since start\n")
		} else {
			fmt.Fprintf(b, "    last moved %s ago: %s\n", fmtDuration(now.Sub(time.UnixMicro(c.LastMoveUnixUsec))), c.LastMoveReason)
		}
	}
}
