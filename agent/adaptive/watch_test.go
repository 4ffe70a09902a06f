package adaptive

import (
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/cgroup"
)

func TestMemoryWatcher(t *testing.T) {
	const gib = 1 << 30
	s := cgroup.Stats{MemoryLimit: 2 * gib, MemoryUsage: 1900 << 20, InactiveFile: 200 << 20, Anon: 1000 << 20}
	ws := &MemoryWatcher{Threshold: 0.9}
	if v, err := ws.Observe(s, time.Time{}); err != nil || v.Pressure {
		t.Fatalf("working set 1700 MiB of 2 GiB (0.83): %+v %v", v, err)
	}
	s.InactiveFile = 0
	if v, _ := ws.Observe(s, time.Time{}); !v.Pressure {
		t.Fatalf("working set 1900 MiB of 2 GiB (0.93) did not fire: %+v", v)
	}
	anon := &MemoryWatcher{Anon: true, Threshold: 0.6}
	if v, _ := anon.Observe(s, time.Time{}); v.Pressure {
		t.Fatalf("anon 1000 MiB of 2 GiB (0.49) fired: %+v", v)
	}
	s.Anon = 1300 << 20
	if v, _ := anon.Observe(s, time.Time{}); !v.Pressure {
		t.Fatalf("anon 0.63 did not fire: %+v", v)
	}
	// No limit: the host's memory.
	host := &MemoryWatcher{Threshold: 0.9, Host: func() (uint64, uint64, error) { return 95, 100, nil }}
	if v, err := host.Observe(cgroup.Stats{}, time.Time{}); err != nil || !v.Pressure {
		t.Fatalf("host 0.95: %+v %v", v, err)
	}
	if _, err := (&MemoryWatcher{Threshold: 0.9}).Observe(cgroup.Stats{}, time.Time{}); !errors.Is(err, ErrSignalMissing) {
		t.Fatalf("no limit, no host: %v", err)
	}
}

func TestOOMWatcher(t *testing.T) {
	w := &OOMWatcher{}
	for i, c := range []struct {
		kills uint64
		want  bool
	}{{3, false}, {3, false}, {4, true}, {4, false}, {6, true}} {
		if v, _ := w.Observe(cgroup.Stats{OOMKills: c.kills}, time.Time{}); v.Pressure != c.want {
			t.Fatalf("sample %d (%d kills): pressure %v, want %v", i, c.kills, v.Pressure, c.want)
		}
	}
}

func TestThrottleWatcher(t *testing.T) {
	w := &ThrottleWatcher{Threshold: 0.5}
	for i, c := range []struct {
		periods, throttled uint64
		want               bool
	}{{100, 0, false}, {110, 4, false}, {120, 10, true}, {120, 10, false}, {130, 14, false}} {
		if v, _ := w.Observe(cgroup.Stats{CPUPeriods: c.periods, CPUThrottledPeriods: c.throttled}, time.Time{}); v.Pressure != c.want {
			t.Fatalf("sample %d: pressure %v (%s), want %v", i, v.Pressure, v.Detail, c.want)
		}
	}
}

func TestPSIWatcherUsesRawTotals(t *testing.T) {
	w := &PSIWatcher{Resource: "memory", Full: true, Threshold: 0.1}
	t0 := time.Unix(0, 0)
	// avg10 would still read low one second into a full stall; the raw
	// total grows by the stall time at once.
	samples := []struct {
		at    time.Duration
		stall time.Duration
		want  bool
	}{{0, 0, false}, {time.Second, 20 * time.Millisecond, false}, {2 * time.Second, 520 * time.Millisecond, true}, {3 * time.Second, 530 * time.Millisecond, false}}
	for i, c := range samples {
		s := cgroup.Stats{MemoryPressure: &cgroup.PSI{FullTotal: c.stall, FullAvg10: 0.01}}
		if v, err := w.Observe(s, t0.Add(c.at)); err != nil || v.Pressure != c.want {
			t.Fatalf("sample %d: %+v %v, want pressure %v", i, v, err, c.want)
		}
	}
	if _, err := (&PSIWatcher{Resource: "cpu", Threshold: 0.5}).Observe(cgroup.Stats{}, t0); !errors.Is(err, ErrSignalMissing) {
		t.Fatalf("missing cpu.pressure: %v", err)
	}
}

func TestOOMWatcherNotify(t *testing.T) {
	w := &OOMWatcher{}
	t0 := time.Unix(100, 0)
	w.Observe(cgroup.Stats{OOMKills: 2}, t0)
	// v1 notifies before it kills: the notification is reported at once...
	w.Notify("kernel OOM notification for /x")
	if v, _ := w.Observe(cgroup.Stats{OOMKills: 2}, t0.Add(10*time.Millisecond)); !v.Pressure || v.Detail != "kernel OOM notification for /x" {
		t.Fatalf("notified: %+v", v)
	}
	// ...and the counter's move that follows is the same kill.
	if v, _ := w.Observe(cgroup.Stats{OOMKills: 3}, t0.Add(time.Second)); v.Pressure {
		t.Fatalf("the notified kill reported twice: %+v", v)
	}
	// A later kill is new.
	if v, _ := w.Observe(cgroup.Stats{OOMKills: 4}, t0.Add(10*time.Second)); !v.Pressure {
		t.Fatalf("a later kill: %+v", v)
	}
	// A notification after the counter already moved: one report, nothing absorbed.
	w.Notify("again")
	if v, _ := w.Observe(cgroup.Stats{OOMKills: 5}, t0.Add(20*time.Second)); !v.Pressure {
		t.Fatalf("notified with the counter moved: %+v", v)
	}
	if v, _ := w.Observe(cgroup.Stats{OOMKills: 6}, t0.Add(20500*time.Millisecond)); !v.Pressure {
		t.Fatalf("the next kill was absorbed: %+v", v)
	}
}
