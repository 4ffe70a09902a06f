package agent

import (
	"context"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/policy"
)

// countingObserver counts backoff events per watcher.
type countingObserver struct {
	nopObserver
	backoffs map[string]int
}

func (o *countingObserver) Backoff(w string) { o.backoffs[w]++ }

func adaptiveAgent(t *testing.T, min, initial, max int) (*Agent, *countingObserver) {
	t.Helper()
	cfg, err := policy.Parse("a.toml", []byte(fmt.Sprintf(`
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_queue_size = 10
max_queue_wait = "10s"
adaptive = true
min_limit = %d
initial_limit = %d
max_limit = %d

[adaptive]
calibration_interval = "30s"
cooldown = "5s"
backoff_factor = 0.5
`, min, initial, max)))
	if err != nil {
		t.Fatal(err)
	}
	obs := &countingObserver{backoffs: map[string]int{}}
	return New(Options{Policy: cfg, Log: zaptest.NewLogger(t), Observer: obs}), obs
}

func currentLimit(a *Agent) int { return a.Limiters()[0].Limit }

var memPressure = []Pressure{{Watcher: "memory", Detail: "working set 0.95 of limit >= 0.90"}}

func TestCalibratorDocumentedSequence(t *testing.T) {
	a, obs := adaptiveAgent(t, 10, 60, 60)
	t0 := time.Unix(1000, 0)
	if got := currentLimit(a); got != 60 {
		t.Fatalf("initial limit %d", got)
	}
	// Pressure every second: one decrease per cool-down (5 s), not per sample.
	var seq []int
	for s := 0; s <= 20; s++ {
		a.calib.step(t0.Add(time.Duration(s)*time.Second), memPressure)
		if n := currentLimit(a); len(seq) == 0 || seq[len(seq)-1] != n {
			seq = append(seq, n)
		}
	}
	if fmt.Sprint(seq) != "[30 15 10]" {
		t.Fatalf("backoff sequence %v, want [30 15 10] (60 halved, floor at min 10)", seq)
	}
	if obs.backoffs["memory"] != 21 {
		t.Errorf("backoff events counted %d, want one per pressured sample (21)", obs.backoffs["memory"])
	}
	at, why := a.calib.lastBackoffOf("upload-pack")
	if at != t0.Add(20*time.Second) || why == "" { // a backoff at the floor still counts as one
		t.Errorf("last backoff %v %q", at, why)
	}

	// No pressure, but idle: the limit must not climb.
	now := t0.Add(20 * time.Second)
	for i := 0; i < 5; i++ {
		now = now.Add(30 * time.Second)
		a.calib.step(now, nil)
	}
	if got := currentLimit(a); got != 10 {
		t.Fatalf("idle rule climbed to %d", got)
	}

	// In use (busiest key runs half the limit): +1 per calibration interval up to max.
	lim := a.limiter("upload-pack")
	var releases []func()
	hold := func(n int) {
		for len(releases) < n {
			rel, _, err := lim.Acquire(context.Background(), "k", nil)
			if err != nil {
				t.Fatal(err)
			}
			releases = append(releases, rel)
		}
	}
	for step := 0; step < 100 && currentLimit(a) < 60; step++ {
		hold((currentLimit(a) + 1) / 2)
		before := currentLimit(a)
		a.calib.step(now.Add(10*time.Second), nil) // within the interval: no change
		if currentLimit(a) != before {
			t.Fatalf("increase before the calibration interval passed")
		}
		now = now.Add(30 * time.Second)
		a.calib.step(now, nil)
		if got := currentLimit(a); got != before+1 {
			t.Fatalf("after one interval in use: %d, want %d", got, before+1)
		}
	}
	if got := currentLimit(a); got != 60 {
		t.Fatalf("limit %d, want max 60", got)
	}
	hold(40)
	now = now.Add(30 * time.Second)
	a.calib.step(now, nil)
	if got := currentLimit(a); got != 60 {
		t.Fatalf("climbed above max: %d", got)
	}
	for _, r := range releases {
		r()
	}
}

func TestCalibratorNeverBelowMinAndRestartResets(t *testing.T) {
	a, _ := adaptiveAgent(t, 3, 4, 8)
	t0 := time.Unix(0, 0)
	for s := 0; s < 60; s += 6 {
		a.calib.step(t0.Add(time.Duration(s)*time.Second), memPressure)
	}
	if got := currentLimit(a); got != 3 {
		t.Fatalf("limit %d, want the floor 3", got)
	}
	// A new agent (restart) starts at initial_limit.
	b, _ := adaptiveAgent(t, 3, 4, 8)
	if got := currentLimit(b); got != 4 {
		t.Fatalf("restarted limit %d, want initial 4", got)
	}
}

func TestCalibratorIgnoresStaticRules(t *testing.T) {
	cfg, err := policy.Parse("s.toml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{Policy: cfg, Log: zaptest.NewLogger(t)})
	a.calib.step(time.Unix(0, 0), memPressure)
	if got := currentLimit(a); got != 1 {
		t.Fatalf("static limit changed to %d", got)
	}
}

// TestRunCalibratorKickSamplesAtOnce: with an hour-long sample interval, a
// kick (a kernel memory notification) makes the calibrator sample and back
// off at once; a burst of kicks within the cool-down costs one decrease.
func TestRunCalibratorKickSamplesAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, obs := adaptiveAgent(t, 1, 8, 8)
		pol := *a.Policy()
		pol.Adaptive.SampleInterval = policy.Duration{Duration: time.Hour}
		a.mu.Lock()
		a.policy = &pol
		a.mu.Unlock()
		kick := make(chan struct{})
		samples := 0
		src := func(time.Time) []Pressure { samples++; return memPressure }
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { a.RunCalibrator(ctx, src, kick); close(done) }()
		start := time.Now()
		kick <- struct{}{}
		synctest.Wait()
		if samples != 1 || currentLimit(a) != 4 {
			t.Fatalf("after one kick: %d samples, limit %d; want 1 sample, limit 4", samples, currentLimit(a))
		}
		if waited := time.Since(start); waited >= time.Second {
			t.Fatalf("the kicked sample waited %v (fake clock)", waited)
		}
		for i := 0; i < 5; i++ {
			kick <- struct{}{}
			time.Sleep(100 * time.Millisecond) // well inside the 5 s cool-down
			synctest.Wait()
		}
		if samples != 6 || currentLimit(a) != 4 || obs.backoffs["memory"] != 6 {
			t.Fatalf("burst of 5 kicks within the cool-down: %d samples, limit %d, %d backoff events; want 6, 4, 6",
				samples, currentLimit(a), obs.backoffs["memory"])
		}
		cancel()
		<-done
	})
}

// TestCalibratorHoldsIncreaseOnSaturatedCPU: saturation (HoldOnly) in at
// least half the samples of a calibration interval holds the +1 back and
// never lowers the limit; in fewer than half, the limit climbs as usual.
func TestCalibratorHoldsIncreaseOnSaturatedCPU(t *testing.T) {
	a, obs := adaptiveAgent(t, 1, 2, 10)
	// Keep the rule in use: both slots of one key taken.
	l := a.limiter("upload-pack")
	for i := 0; i < 2; i++ {
		rel, _, err := l.Acquire(context.Background(), "k", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer rel()
	}
	sat := []Pressure{{Watcher: "increase_gate_psi_cpu", Detail: "cpu some stalled 0.97", HoldOnly: true}}
	t0 := time.Unix(1000, 0)
	// The first sample (saturated) starts the increase clock at t0; the
	// check comes with the sample at t0+30s: 31 samples, 16 saturated.
	a.calib.step(t0, sat)
	for s := 1; s <= 30; s++ {
		var ps []Pressure
		if s%2 == 0 {
			ps = append(ps, sat...)
		}
		a.calib.step(t0.Add(time.Duration(s)*time.Second), ps)
		if s == 29 && currentLimit(a) != 2 {
			t.Fatalf("limit moved before the interval ended: %d", currentLimit(a))
		}
	}
	if got := currentLimit(a); got != 2 {
		t.Fatalf("limit %d after an interval half saturated, want 2 (held)", got)
	}
	if st := a.calib.rules["upload-pack"]; st.lastIncrease != t0.Add(30*time.Second) {
		t.Fatalf("no increase check at t0+30s (last %v)", st.lastIncrease)
	}
	// The next interval, 10 of 30 saturated: +1 at t0+60s.
	for s := 31; s <= 60; s++ {
		var ps []Pressure
		if s%3 == 0 {
			ps = append(ps, sat...)
		}
		a.calib.step(t0.Add(time.Duration(s)*time.Second), ps)
	}
	if got := currentLimit(a); got != 3 {
		t.Fatalf("limit %d after an interval a third saturated, want 3", got)
	}
	if len(obs.backoffs) != 0 {
		t.Fatalf("saturation counted as backoff: %v", obs.backoffs)
	}
}
