package agent

import (
	"testing"

	"github.com/sluicehq/sluice/exporter"
)

// The agent produces the label values the exporter documents; the two
// packages stay independent, so this test keeps their constants in step.
func TestLabelValuesMatchExporter(t *testing.T) {
	for got, want := range map[string]string{
		OutcomeOK: exporter.OutcomeOK, OutcomeError: exporter.OutcomeError,
		OutcomeSignaled: exporter.OutcomeSignaled, OutcomeRejected: exporter.OutcomeRejected,
		DropMaxSize: exporter.ReasonMaxSize, DropMaxTime: exporter.ReasonMaxTime, DropUnavailable: exporter.ReasonUnavailable,
		KindUploadPackNegotiation: exporter.KindUploadPackNegotiation, KindUploadArchiveNegotiation: exporter.KindUploadArchiveNegotiation,
		KindMaxRuntime: exporter.KindMaxRuntime,
	} {
		if got != want {
			t.Errorf("agent label %q != exporter %q", got, want)
		}
	}
}
