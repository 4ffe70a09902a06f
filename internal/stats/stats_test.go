package stats

import (
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	s := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tt := range []struct {
		p    float64
		want float64
	}{{0.5, 5}, {0.95, 10}, {0.99, 10}, {0.1, 1}, {0.11, 2}, {1, 10}, {0.001, 1}} {
		if got := Percentile(s, tt.p); got != tt.want {
			t.Errorf("Percentile(1..10, %v) = %v, want %v", tt.p, got, tt.want)
		}
	}
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(i + 1)
	}
	if got := Summarize(hundred); got.P50 != 50 || got.P95 != 95 || got.P99 != 99 || got.Mean != 50.5 || got.N != 100 {
		t.Errorf("Summarize(1..100) = %+v", got)
	}
	if got := Summarize(nil); got != (Summary[float64]{}) {
		t.Errorf("Summarize(nil) = %+v", got)
	}
	d := SummarizeDurations([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond})
	if d.P50 != 2*time.Millisecond || d.P99 != 3*time.Millisecond || d.Mean != 2*time.Millisecond {
		t.Errorf("SummarizeDurations = %+v", d)
	}
}
