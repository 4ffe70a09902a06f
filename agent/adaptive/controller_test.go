package adaptive

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/agent/limiter"
	"github.com/sluicehq/sluice/policy"
)

// testLimits is what the agent gives the controller: a policy and one
// real limiter per rule.
type testLimits struct {
	mu   sync.Mutex
	pol  *policy.Config
	lims map[string]*limiter.Limiter
}

func newTestLimits(t *testing.T, pol *policy.Config) *testLimits {
	t.Helper()
	l := &testLimits{pol: pol, lims: map[string]*limiter.Limiter{}}
	for _, r := range pol.Limits {
		l.lims[r.Name] = limiter.New(limiter.Config{Name: r.Name, Limit: r.Limit(), MaxQueueSize: r.MaxQueueSize,
			MaxQueueWait: r.MaxQueueWait.Duration, Order: r.Order()})
	}
	return l
}

func (l *testLimits) Policy() *policy.Config {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pol
}

func (l *testLimits) Limiter(rule string) Adjustable {
	if lim := l.lims[rule]; lim != nil {
		return lim
	}
	return nil
}

// setPolicy swaps the policy as a reload does.
func (l *testLimits) setPolicy(p *policy.Config) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pol = p
}

// current is the first rule's limit.
func (l *testLimits) current() int { return l.lims[l.Policy().Limits[0].Name].Stats().Limit }

// backoffs counts OnBackoff per watcher; the controller calls it from
// one goroutine at a time.
type backoffs struct {
	mu sync.Mutex
	n  map[string]int
}

func (b *backoffs) count(w string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n[w]++
}

func (b *backoffs) get(w string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n[w]
}

const adaptivePolicy = `
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
`

func parsePolicy(t *testing.T, text string) *policy.Config {
	t.Helper()
	cfg, err := policy.Parse("a.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// newTestController returns a controller over one adaptive rule
// (upload-pack, per repository) with the given bounds.
func newTestController(t *testing.T, min, initial, max int) (*Controller, *testLimits, *backoffs) {
	t.Helper()
	lims := newTestLimits(t, parsePolicy(t, fmt.Sprintf(adaptivePolicy, min, initial, max)))
	b := &backoffs{n: map[string]int{}}
	return NewController(Options{Limits: lims, Log: zaptest.NewLogger(t), OnBackoff: b.count}), lims, b
}

var memPressure = []Pressure{{Watcher: "memory", Detail: "working set 0.95 of limit >= 0.90"}}

func TestControllerDocumentedSequence(t *testing.T) {
	c, lims, obs := newTestController(t, 10, 60, 60)
	currentLimit := func() int { return lims.current() }
	t0 := time.Unix(1000, 0)
	if got := currentLimit(); got != 60 {
		t.Fatalf("initial limit %d", got)
	}
	// Pressure every second: one decrease per cool-down (5 s), not per sample.
	var seq []int
	for s := 0; s <= 20; s++ {
		c.Step(t0.Add(time.Duration(s)*time.Second), memPressure)
		if n := currentLimit(); len(seq) == 0 || seq[len(seq)-1] != n {
			seq = append(seq, n)
		}
	}
	if fmt.Sprint(seq) != "[30 15 10]" {
		t.Fatalf("backoff sequence %v, want [30 15 10] (60 halved, floor at min 10)", seq)
	}
	if obs.get("memory") != 21 {
		t.Errorf("backoff events counted %d, want one per pressured sample (21)", obs.get("memory"))
	}
	at, why := c.LastBackoff("upload-pack")
	if at != t0.Add(20*time.Second) || why == "" { // a backoff at the floor still counts as one
		t.Errorf("last backoff %v %q", at, why)
	}

	// No pressure, but idle: the limit must not climb.
	now := t0.Add(20 * time.Second)
	for i := 0; i < 5; i++ {
		now = now.Add(30 * time.Second)
		c.Step(now, nil)
	}
	if got := currentLimit(); got != 10 {
		t.Fatalf("idle rule climbed to %d", got)
	}

	// In use (busiest key runs half the limit): +1 per calibration interval up to max.
	lim := lims.lims["upload-pack"]
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
	for step := 0; step < 100 && currentLimit() < 60; step++ {
		hold((currentLimit() + 1) / 2)
		before := currentLimit()
		c.Step(now.Add(10*time.Second), nil) // within the interval: no change
		if currentLimit() != before {
			t.Fatalf("increase before the calibration interval passed")
		}
		now = now.Add(30 * time.Second)
		c.Step(now, nil)
		if got := currentLimit(); got != before+1 {
			t.Fatalf("after one interval in use: %d, want %d", got, before+1)
		}
	}
	if got := currentLimit(); got != 60 {
		t.Fatalf("limit %d, want max 60", got)
	}
	hold(40)
	now = now.Add(30 * time.Second)
	c.Step(now, nil)
	if got := currentLimit(); got != 60 {
		t.Fatalf("climbed above max: %d", got)
	}
	for _, r := range releases {
		r()
	}
}

func TestControllerNeverBelowMinAndRestartResets(t *testing.T) {
	c, lims, _ := newTestController(t, 3, 4, 8)
	currentLimit := func() int { return lims.current() }
	t0 := time.Unix(0, 0)
	for s := 0; s < 60; s += 6 {
		c.Step(t0.Add(time.Duration(s)*time.Second), memPressure)
	}
	if got := currentLimit(); got != 3 {
		t.Fatalf("limit %d, want the floor 3", got)
	}
	// A new agent (restart) starts at initial_limit.
	_, restarted, _ := newTestController(t, 3, 4, 8)
	if got := restarted.current(); got != 4 {
		t.Fatalf("restarted limit %d, want initial 4", got)
	}
}

func TestControllerIgnoresStaticRules(t *testing.T) {
	lims := newTestLimits(t, parsePolicy(t, `
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_per_key = 1
max_queue_size = 2
max_queue_wait = "10s"
`))
	c := NewController(Options{Limits: lims, Log: zaptest.NewLogger(t)})
	c.Step(time.Unix(0, 0), memPressure)
	if got := lims.current(); got != 1 {
		t.Fatalf("static limit changed to %d", got)
	}
}

// funcSource is a Source made of a function and a kick channel.
type funcSource struct {
	sample func(time.Time) []Pressure
	kick   chan struct{}
}

func (s funcSource) Sample(now time.Time) []Pressure { return s.sample(now) }
func (s funcSource) Kicks() <-chan struct{}          { return s.kick }

// TestRunKickSamplesAtOnce: with an hour-long sample interval, a kick (a
// kernel memory notification) makes the controller sample and back off at
// once; a burst of kicks within the cool-down costs one decrease.
func TestRunKickSamplesAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, lims, obs := newTestController(t, 1, 8, 8)
		currentLimit := func() int { return lims.current() }
		pol := *lims.Policy()
		pol.Adaptive.SampleInterval = policy.Duration{Duration: time.Hour}
		lims.setPolicy(&pol)
		kick := make(chan struct{})
		samples := 0
		src := funcSource{func(time.Time) []Pressure { samples++; return memPressure }, kick}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { c.Run(ctx, src); close(done) }()
		start := time.Now()
		kick <- struct{}{}
		synctest.Wait()
		if samples != 1 || currentLimit() != 4 {
			t.Fatalf("after one kick: %d samples, limit %d; want 1 sample, limit 4", samples, currentLimit())
		}
		if waited := time.Since(start); waited >= time.Second {
			t.Fatalf("the kicked sample waited %v (fake clock)", waited)
		}
		for i := 0; i < 5; i++ {
			kick <- struct{}{}
			time.Sleep(100 * time.Millisecond) // well inside the 5 s cool-down
			synctest.Wait()
		}
		if samples != 6 || currentLimit() != 4 || obs.get("memory") != 6 {
			t.Fatalf("burst of 5 kicks within the cool-down: %d samples, limit %d, %d backoff events; want 6, 4, 6",
				samples, currentLimit(), obs.get("memory"))
		}
		cancel()
		<-done
	})
}

// TestControllerHoldsIncreaseOnSaturatedCPU: saturation (HoldOnly) in at
// least half the samples of a calibration interval holds the +1 back and
// never lowers the limit; in fewer than half, the limit climbs as usual.
func TestControllerHoldsIncreaseOnSaturatedCPU(t *testing.T) {
	c, lims, obs := newTestController(t, 1, 2, 10)
	currentLimit := func() int { return lims.current() }
	// Keep the rule in use: both slots of one key taken.
	l := lims.lims["upload-pack"]
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
	c.Step(t0, sat)
	for s := 1; s <= 30; s++ {
		var ps []Pressure
		if s%2 == 0 {
			ps = append(ps, sat...)
		}
		c.Step(t0.Add(time.Duration(s)*time.Second), ps)
		if s == 29 && currentLimit() != 2 {
			t.Fatalf("limit moved before the interval ended: %d", currentLimit())
		}
	}
	if got := currentLimit(); got != 2 {
		t.Fatalf("limit %d after an interval half saturated, want 2 (held)", got)
	}
	if st := c.rules["upload-pack"]; st.lastIncrease != t0.Add(30*time.Second) {
		t.Fatalf("no increase check at t0+30s (last %v)", st.lastIncrease)
	}
	// The next interval, 10 of 30 saturated: +1 at t0+60s.
	for s := 31; s <= 60; s++ {
		var ps []Pressure
		if s%3 == 0 {
			ps = append(ps, sat...)
		}
		c.Step(t0.Add(time.Duration(s)*time.Second), ps)
	}
	if got := currentLimit(); got != 3 {
		t.Fatalf("limit %d after an interval a third saturated, want 3", got)
	}
	if len(obs.n) != 0 {
		t.Fatalf("saturation counted as backoff: %v", obs.n)
	}
}
