package adaptive

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluicehq/sluice/cgroup"
	"github.com/sluicehq/sluice/policy"
)

const sensorPolicy = `
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_queue_size = 10
max_queue_wait = "10s"
adaptive = true
min_limit = 1
initial_limit = 4
max_limit = 8

[adaptive]
kernel_events = false
%s
`

// TestNewWatchers: [adaptive] watchers become the watchers in the order
// listed, with their thresholds; memory_signal = "anon" switches the
// memory watcher to anonymous memory and anon_threshold; a positive
// increase_max_psi_cpu adds the saturation gate, which holds increases
// only (HoldOnly) and has its own name.
func TestNewWatchers(t *testing.T) {
	host := func() (uint64, uint64, error) { return 1, 2, nil }
	cfg := parsePolicy(t, fmt.Sprintf(sensorPolicy, `watchers = ["psi_cpu", "memory", "oom", "cpu_throttle", "psi_memory"]
memory_threshold = 0.85
cpu_throttle_threshold = 0.4
psi_memory_full_threshold = 0.2
psi_cpu_some_threshold = 0.7
increase_max_psi_cpu = 0.6`))
	ws := newWatchers(&cfg.Adaptive, host)
	var names []string
	for _, w := range ws {
		names = append(names, w.Name())
	}
	if want := []string{"psi_cpu", "memory", "oom", "cpu_throttle", "psi_memory", "increase_gate_psi_cpu"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("watchers %v, want %v", names, want)
	}
	if w := ws[0].(*PSIWatcher); w.Resource != "cpu" || w.Full || w.Threshold != 0.7 {
		t.Errorf("psi_cpu: %+v", w)
	}
	if w := ws[1].(*MemoryWatcher); w.Anon || w.Threshold != 0.85 || w.Host == nil {
		t.Errorf("memory: %+v", w)
	}
	if w := ws[3].(*ThrottleWatcher); w.Threshold != 0.4 {
		t.Errorf("cpu_throttle: %+v", w)
	}
	if w := ws[4].(*PSIWatcher); w.Resource != "memory" || !w.Full || w.Threshold != 0.2 {
		t.Errorf("psi_memory: %+v", w)
	}
	if g := ws[5].(*saturationGate); g.Resource != "cpu" || g.Full || g.Threshold != 0.6 {
		t.Errorf("gate: %+v", g)
	}

	anon := parsePolicy(t, fmt.Sprintf(sensorPolicy, `watchers = ["memory"]
memory_signal = "anon"
anon_threshold = 0.55
increase_max_psi_cpu = 0`))
	ws = newWatchers(&anon.Adaptive, host)
	if len(ws) != 1 {
		t.Fatalf("anon, no gate: %d watchers, want 1", len(ws))
	}
	if w := ws[0].(*MemoryWatcher); !w.Anon || w.Threshold != 0.55 {
		t.Errorf("anon memory watcher: %+v", w)
	}
}

// simStats is a stats sequence a test sets sample by sample.
type simStats struct {
	mu  sync.Mutex
	s   cgroup.Stats
	err error
}

func (h *simStats) set(s cgroup.Stats, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.s, h.err = s, err
}

func (h *simStats) read() (cgroup.Stats, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.s, h.err
}

// errorCounts counts OnWatcherError per watcher.
type errorCounts struct {
	mu sync.Mutex
	n  map[string]int
}

func (e *errorCounts) count(w string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n[w]++
}

func watcherNames(ps []Pressure) string {
	var out []string
	for _, p := range ps {
		n := p.Watcher
		if p.HoldOnly {
			n += "(hold)"
		}
		out = append(out, n)
	}
	return strings.Join(out, ",")
}

// TestSensorSample drives a Sensor through a stats sequence: the sample
// taken by NewSensor is the rate watchers' baseline (an OOM kill before
// the first tick is seen); each watcher reports what crossed its
// threshold; saturation is HoldOnly; a missing signal is counted and
// logged once, other errors every time; a reload rebuilds the watchers.
func TestSensorSample(t *testing.T) {
	cfg := parsePolicy(t, fmt.Sprintf(sensorPolicy, `watchers = ["memory", "oom", "psi_memory"]
increase_max_psi_cpu = 0.8`))
	var pol sync.Map
	pol.Store("p", cfg)
	current := func() *policy.Config { v, _ := pol.Load("p"); return v.(*policy.Config) }
	const gib = 1 << 30
	sim := &simStats{}
	cpu := &cgroup.PSI{}
	sim.set(cgroup.Stats{MemoryLimit: gib, MemoryUsage: gib / 2, OOMKills: 3, CPUPressure: cpu}, nil)
	errs := &errorCounts{n: map[string]int{}}
	core, logs := observer.New(zap.InfoLevel)
	s := NewSensor(SensorOptions{Policy: current, OnWatcherError: errs.count, Log: zap.New(core), stats: sim.read,
		findOwn: func(string, string) (*cgroup.OwnCgroup, error) { return nil, nil }})
	defer s.Close()
	t0 := time.Unix(1000, 0)

	sim.set(cgroup.Stats{MemoryLimit: gib, MemoryUsage: gib / 2, OOMKills: 4, CPUPressure: cpu}, nil)
	if got := watcherNames(s.Sample(t0)); got != "oom" {
		t.Fatalf("OOM kill after the baseline: pressures %q, want oom", got)
	}
	sim.set(cgroup.Stats{MemoryLimit: gib, MemoryUsage: gib * 95 / 100, OOMKills: 4, CPUPressure: cpu}, nil)
	ps := s.Sample(t0.Add(time.Second))
	if watcherNames(ps) != "memory" || !strings.Contains(ps[0].Detail, "working set") {
		t.Fatalf("working set 0.95 of the limit: %+v, want memory", ps)
	}
	// CPU stalled 0.9 of the last second: the gate, HoldOnly.
	sim.set(cgroup.Stats{MemoryLimit: gib, MemoryUsage: gib / 2, OOMKills: 4,
		CPUPressure: &cgroup.PSI{SomeTotal: 900 * time.Millisecond}}, nil)
	if got := watcherNames(s.Sample(t0.Add(2 * time.Second))); got != "increase_gate_psi_cpu(hold)" {
		t.Fatalf("saturated CPU: pressures %q, want the gate, hold only", got)
	}
	// psi_memory has had no memory.pressure in any sample: counted and
	// logged once however many samples miss it.
	if errs.n["psi_memory"] != 1 || logs.FilterMessage("adaptive: a pressure signal is missing and is ignored").Len() != 1 {
		t.Fatalf("missing PSI: %d errors counted, %d logged; want 1, 1", errs.n["psi_memory"],
			logs.FilterMessage("adaptive: a pressure signal is missing and is ignored").Len())
	}
	// Unreadable stats: nothing reported, a warning each time.
	sim.set(cgroup.Stats{}, errors.New("read memory.usage_in_bytes: no such file"))
	for i := range 2 {
		if ps := s.Sample(t0.Add(time.Duration(3+i) * time.Second)); len(ps) != 0 {
			t.Fatalf("stats unreadable: %+v", ps)
		}
	}
	if n := logs.FilterMessage("adaptive: reading cgroup stats").Len(); n != 2 {
		t.Fatalf("unreadable stats logged %d times, want 2", n)
	}
	// A reload to memory only, at 0.5 of the limit: no OOM watcher left.
	pol.Store("p", parsePolicy(t, fmt.Sprintf(sensorPolicy, `watchers = ["memory"]
memory_threshold = 0.5
increase_max_psi_cpu = 0`)))
	sim.set(cgroup.Stats{MemoryLimit: gib, MemoryUsage: gib * 6 / 10, OOMKills: 9}, nil)
	if got := watcherNames(s.Sample(t0.Add(5 * time.Second))); got != "memory" {
		t.Fatalf("after the reload: pressures %q, want memory alone", got)
	}
}

// TestSensorScope: without sluice cgroups the sensor watches the agent's
// own memory cgroup when it has a limit, else the host, and says which.
func TestSensorScope(t *testing.T) {
	cfg := parsePolicy(t, fmt.Sprintf(sensorPolicy, `watchers = ["memory"]`))
	for _, c := range []struct {
		name string
		own  *cgroup.OwnCgroup
		err  error
		log  string
	}{
		{"host", nil, nil, "adaptive: no sluice cgroups and no memory limit on the agent's own cgroup: watching the host's memory"},
		{"own", &cgroup.OwnCgroup{Path: "/srv.slice/git.service", MemDir: t.TempDir(), Limit: 1 << 30}, nil,
			"adaptive: no sluice cgroups: watching the agent's own memory cgroup, which has a limit (it stands for the Git server's)"},
		{"unreadable", nil, errors.New("read own cgroup: permission denied"),
			"adaptive: cannot read the agent's own memory cgroup; watching the host's memory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			core, logs := observer.New(zap.InfoLevel)
			s := NewSensor(SensorOptions{Policy: func() *policy.Config { return cfg }, Log: zap.New(core),
				host:    func() (uint64, uint64, error) { return 1, 2, nil },
				findOwn: func(string, string) (*cgroup.OwnCgroup, error) { return c.own, c.err }})
			defer s.Close()
			if s.own != c.own {
				t.Errorf("watching %+v, want %+v", s.own, c.own)
			}
			if logs.FilterMessage(c.log).Len() != 1 {
				t.Errorf("log %q missing; got %v", c.log, logs.All())
			}
		})
	}
}

// TestSensorForwardsKernelEvents: an OOM notification kicks at once and
// is reported by the next sample's OOM watcher, even before the kill
// counter moves; the last signal of a removed cgroup is not an OOM;
// vmpressure bursts kick at most once per minKickGap.
func TestSensorForwardsKernelEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := parsePolicy(t, fmt.Sprintf(sensorPolicy, `watchers = ["oom"]`))
		sim := &simStats{}
		s := NewSensor(SensorOptions{Policy: func() *policy.Config { return cfg }, stats: sim.read,
			findOwn: func(string, string) (*cgroup.OwnCgroup, error) { return nil, nil }})
		events, done := make(chan cgroup.Event), make(chan struct{})
		go s.forward(events, done)
		defer close(done)
		kicked := func() bool {
			synctest.Wait()
			select {
			case <-s.Kicks():
				return true
			default:
				return false
			}
		}

		bucket := filepath.Join(t.TempDir(), "repos", "1")
		if err := os.MkdirAll(bucket, 0o755); err != nil {
			t.Fatal(err)
		}
		events <- cgroup.Event{Kind: cgroup.EventOOM, Dir: bucket}
		if !kicked() {
			t.Fatal("an OOM notification did not kick")
		}
		ps := s.Sample(time.Now())
		if len(ps) != 1 || ps[0].Watcher != "oom" || ps[0].Detail != "kernel OOM notification for "+bucket {
			t.Fatalf("sample after the notification: %+v", ps)
		}

		events <- cgroup.Event{Kind: cgroup.EventOOM, Dir: filepath.Join(t.TempDir(), "pruned")}
		if kicked() {
			t.Fatal("the signal of a removed cgroup kicked as an OOM")
		}
		if ps := s.Sample(time.Now()); len(ps) != 0 {
			t.Fatalf("a removed cgroup's signal reported: %+v", ps)
		}

		time.Sleep(minKickGap) // the OOM's kick started a gap
		for range 10 {         // a reclaim burst within one gap
			events <- cgroup.Event{Kind: cgroup.EventPressure, Dir: bucket, Level: "medium"}
		}
		if !kicked() || kicked() {
			t.Fatal("a vmpressure burst: want exactly one kick")
		}
		time.Sleep(minKickGap)
		events <- cgroup.Event{Kind: cgroup.EventMemoryEvents, Dir: bucket}
		if !kicked() {
			t.Fatal("a notification after minKickGap did not kick")
		}
	})
}
