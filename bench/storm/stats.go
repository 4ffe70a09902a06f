package main

import (
	"encoding/json"
	"math"
	"strings"
	"unicode"

	istats "github.com/sluicehq/sluice/internal/stats"
)

// stats summarises a sample with internal/stats' rule, the one every
// sluice report uses: nearest rank (the smallest measured value with at
// least p % of the sample at or below it; no interpolation).
type stats = istats.Summary[float64]

// nearestRank is the p-th percentile (0 < p ≤ 100) of sorted s.
func nearestRank(s []float64, p float64) float64 { return istats.Percentile(s, p/100) }

func summarize(v []float64) stats { return istats.Summarize(v) }

// jain is Jain's fairness index (internal/stats).
func jain(x []float64) float64 { return istats.Jain(x) }

// worstShare is the smallest element of x over the mean of x: 1 when
// every address got its fair share, 0 when some address got nothing. NaN
// when all are zero.
func worstShare(x []float64) float64 {
	if len(x) == 0 {
		return math.NaN()
	}
	lo, sum := math.Inf(1), 0.0
	for _, v := range x {
		lo = math.Min(lo, v)
		sum += v
	}
	if sum == 0 {
		return math.NaN()
	}
	return lo / (sum / float64(len(x)))
}

// fnum is a float that may be undefined (NaN): JSON null.
type fnum float64

func (f fnum) MarshalJSON() ([]byte, error) {
	if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
		return []byte("null"), nil
	}
	return json.Marshal(float64(f))
}

func (f *fnum) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*f = fnum(math.NaN())
		return nil
	}
	var v float64
	err := json.Unmarshal(b, &v)
	*f = fnum(v)
	return err
}

// spread is the range of repeated measurements of one quantity.
type spread struct {
	Mean, Min, Max float64
	N              int
}

func spreadOf(v []float64) spread {
	if len(v) == 0 {
		return spread{}
	}
	s := spread{Min: math.Inf(1), Max: math.Inf(-1), N: len(v)}
	for _, x := range v {
		s.Mean += x / float64(len(v))
		s.Min, s.Max = math.Min(s.Min, x), math.Max(s.Max, x)
	}
	return s
}

// tie reports whether two repeated measurements cannot be told apart:
// their ranges overlap. With one run each there is no noise estimate and
// nothing is called a tie (the report says so).
func tie(a, b spread) bool {
	if a.N < 2 || b.N < 2 {
		return false
	}
	return a.Min <= b.Max && b.Min <= a.Max
}

// causeOf names the cause of a failed operation for grouping: the
// sluice: line the client saw (its correlation id dropped and digits
// folded to N, so "4 running" and "5 running" group), or the outcome.
func causeOf(o op) string {
	switch o.Outcome {
	case rejected:
		for _, l := range strings.Split(o.Stderr, "\n") {
			if i := strings.Index(l, "sluice:"); i >= 0 {
				return "sluice rejection: " + foldDigits(dropCorrelationID(strings.TrimSpace(l[i:])))
			}
		}
		return "sluice rejection"
	case hungUp:
		return "hung up"
	case timedOut:
		return "timeout"
	case failed:
		l := strings.TrimSpace(o.Stderr)
		if i := strings.LastIndexByte(l, '\n'); i >= 0 {
			l = l[i+1:]
		}
		if len(l) > 100 {
			l = l[:100]
		}
		return "other: " + foldDigits(l)
	}
	return string(o.Outcome)
}

// dropCorrelationID replaces the id in "(correlation id ID)" with "…":
// each request has its own, so it would keep every message apart.
func dropCorrelationID(s string) string {
	const p = "correlation id "
	i := strings.Index(s, p)
	if i < 0 {
		return s
	}
	j := i + len(p)
	k := j
	for k < len(s) && s[k] != ')' && s[k] != ' ' {
		k++
	}
	return s[:j] + "…" + s[k:]
}

func foldDigits(s string) string {
	var b strings.Builder
	prev := false
	for _, r := range s {
		d := unicode.IsDigit(r)
		if d && !prev {
			b.WriteByte('N')
		} else if !d {
			b.WriteRune(r)
		}
		prev = d
	}
	return b.String()
}
