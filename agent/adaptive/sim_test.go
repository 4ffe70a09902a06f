package adaptive

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/cgroup"
)

// simHost is a host in a 1 GiB cgroup whose memory is what the running
// commands use (100 MiB each) plus a hog the test sets, and whose CPU
// stalls for the share of time the test sets (PSI "some", accumulated
// on the fake clock).
type simHost struct {
	running func() int

	mu       sync.Mutex
	hog      uint64
	cpuStall float64
	stall    time.Duration
	last     time.Time
}

const (
	simLimit      = 1 << 30
	simPerCommand = 100 << 20
)

func (h *simHost) set(hog uint64, cpuStall float64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hog, h.cpuStall = hog, cpuStall
}

func (h *simHost) stats() (cgroup.Stats, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	if !h.last.IsZero() {
		h.stall += time.Duration(h.cpuStall * float64(now.Sub(h.last)))
	}
	h.last = now
	return cgroup.Stats{
		MemoryLimit: simLimit, MemoryUsage: uint64(h.running())*simPerCommand + h.hog,
		CPUPressure: &cgroup.PSI{SomeTotal: h.stall}, MemoryPressure: &cgroup.PSI{},
	}, nil
}

// TestControllerOnSimulatedHost runs the real Sensor and Controller over
// a simulated host under a constant storm (20 clients on one key, 500 ms
// per command), on testing/synctest's fake clock, and checks the
// documented law end to end: +1 per calibration interval while the rule is
// in use; a memory hog halves the limit at the first sample that sees it,
// once (the cool-down, and running commands draining, end the episode);
// a saturated CPU holds the increase without lowering the limit; the climb
// resumes when the CPU frees up. The limit's whole history is checked, so
// any extra move (oscillation) fails the test.
func TestControllerOnSimulatedHost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := parsePolicy(t, `
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_queue_size = 10
max_queue_wait = "10s"
adaptive = true
min_limit = 2
initial_limit = 4
max_limit = 8

[adaptive]
sample_interval = "1s"
calibration_interval = "10s"
cooldown = "5s"
backoff_factor = 0.5
watchers = ["memory"]
memory_threshold = 0.9
increase_max_psi_cpu = 0.8
kernel_events = false
`)
		lims := newTestLimits(t, cfg)
		lim := lims.lims["upload-pack"]
		host := &simHost{running: func() int { return lim.Stats().Running }}
		b := &backoffs{n: map[string]int{}}
		ctl := NewController(Options{Limits: lims, Log: zaptest.NewLogger(t), OnBackoff: b.count})
		sensor := NewSensor(SensorOptions{Policy: lims.Policy, Log: zaptest.NewLogger(t), stats: host.stats,
			findOwn: func(string, string) (*cgroup.OwnCgroup, error) { return nil, nil }})
		defer sensor.Close()

		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		for range 20 { // the storm: each client clones again as soon as it can
			wg.Go(func() {
				for ctx.Err() == nil {
					release, _, err := lim.Acquire(ctx, "/srv/hot.git", nil)
					if err != nil {
						time.Sleep(100 * time.Millisecond) // rejected: retry
						continue
					}
					time.Sleep(500 * time.Millisecond)
					release()
				}
			})
		}
		wg.Go(func() { ctl.Run(ctx, sensor) })

		t0 := time.Now()
		time.Sleep(50 * time.Millisecond) // look between samples, never at one
		var history []string              // "limit@second" each time the limit moves
		last := lim.Stats().Limit
		// until watches the limit every 100 ms until d after t0.
		until := func(d time.Duration) {
			for time.Since(t0) < d {
				time.Sleep(100 * time.Millisecond)
				synctest.Wait()
				if n := lim.Stats().Limit; n != last {
					history = append(history, fmt.Sprintf("%d@%ds", n, time.Since(t0)/time.Second))
					last = n
				}
			}
		}
		// Samples at 1 s, 2 s, …; the increase clock starts at the first.
		until(21550 * time.Millisecond) // +1 at 11 s and 21 s
		host.set(600<<20, 0)            // a hog: 6 × 100 MiB + 600 MiB > 0.9 GiB
		until(24550 * time.Millisecond) // halved at the 22 s sample, once
		host.set(0, 0)
		until(32550 * time.Millisecond) // the increase clock restarted at 22 s: +1 at 32 s
		host.set(0, 0.95)               // CPU saturated: increases held, no cut
		until(52550 * time.Millisecond) // checks at 42 s and 52 s are held
		host.set(0, 0)
		until(62550 * time.Millisecond) // +1 at 62 s
		cancel()
		wg.Wait()

		want := []string{"5@11s", "6@21s", "3@22s", "4@32s", "5@62s"}
		if fmt.Sprint(history) != fmt.Sprint(want) {
			t.Fatalf("limit history %v, want %v", history, want)
		}
		if b.get("memory") != 1 || len(b.n) != 1 {
			t.Fatalf("backoff events %v, want one memory backoff (the drained episode ends in one sample)", b.n)
		}
	})
}
