// Package stats owns the one percentile rule every sluice benchmark and
// test report uses, so that a p99 in one report can be compared with a p99
// in another: nearest rank (the smallest value with at least p of the
// samples at or below it: index ceil(p·n) − 1 of the sorted samples), and
// the arithmetic mean.
package stats

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// Summary is what a benchmark reports for one series.
type Summary[T cmp.Ordered] struct {
	N                   int
	P50, P95, P99, Mean T
}

// Percentile returns the nearest-rank p-quantile (0 < p <= 1) of sorted,
// which must be sorted ascending; the zero value for no samples.
func Percentile[T cmp.Ordered](sorted []T, p float64) T {
	var zero T
	if len(sorted) == 0 {
		return zero
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Summarize returns the nearest-rank p50, p95, p99 and the mean of v
// (which it does not modify).
func Summarize(v []float64) Summary[float64] {
	if len(v) == 0 {
		return Summary[float64]{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	return Summary[float64]{N: len(s), P50: Percentile(s, 0.50), P95: Percentile(s, 0.95), P99: Percentile(s, 0.99), Mean: sum / float64(len(s))}
}

// SummarizeDurations is Summarize for durations.
func SummarizeDurations(d []time.Duration) Summary[time.Duration] {
	if len(d) == 0 {
		return Summary[time.Duration]{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	var sum time.Duration
	for _, x := range s {
		sum += x
	}
	return Summary[time.Duration]{N: len(s), P50: Percentile(s, 0.50), P95: Percentile(s, 0.95), P99: Percentile(s, 0.99), Mean: sum / time.Duration(len(s))}
}

// Jain is Jain's fairness index of x: (Σx)² / (n Σx²), 1 when every
// element is equal, 1/n when one element has everything. NaN when all are
// zero (nothing to be fair about).
func Jain(x []float64) float64 {
	var s, s2 float64
	for _, v := range x {
		s += v
		s2 += v * v
	}
	if s2 == 0 {
		return math.NaN()
	}
	return s * s / (float64(len(x)) * s2)
}
