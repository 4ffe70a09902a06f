package exporter

import (
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluicehq/sluice/cgroup"
)

// twoBuckets is a hierarchy of two buckets; the parent cannot be read
// when parentErr is set.
type twoBuckets struct {
	cgroup.Manager
	parentErr error
}

func (twoBuckets) Buckets() int { return 2 }

func (m twoBuckets) ParentStats() (cgroup.Stats, error) {
	return cgroup.Stats{MemoryUsage: 100, MemoryLimit: 1000, OOMKills: 1}, m.parentErr
}

func (twoBuckets) BucketStats(i int) (cgroup.Stats, error) {
	return cgroup.Stats{MemoryUsage: 10, InactiveFile: 4, CPUUsage: time.Second, CPUThrottledTime: time.Second / 2,
		CPUPeriods: 3, CPUThrottledPeriods: 1, OOMKills: uint64(i), Processes: 2}, nil
}

func TestFromCgroups(t *testing.T) {
	src := FromCgroups(twoBuckets{}, func() uint64 { return 7 })
	stats, failures, ok := src.CgroupStats()
	want := []CgroupStat{
		{Scope: ScopeParent, MemoryUsage: 100, MemoryLimit: 1000, OOMKills: 1},
		{Scope: ScopeBuckets, MemoryUsage: 20, MemoryInactiveFile: 8, CPUPeriods: 6, CPUThrottledPeriods: 2,
			CPUThrottledSeconds: 1, CPUUsageSeconds: 2, OOMKills: 1, Processes: 4},
	}
	if !ok || failures != 7 || len(stats) != 2 || stats[0] != want[0] || stats[1] != want[1] {
		t.Fatalf("CgroupStats = %+v, %d, %v; want %+v", stats, failures, ok, want)
	}
	// A parent that cannot be read is left out; the buckets still count.
	stats, _, _ = FromCgroups(twoBuckets{parentErr: errors.New("gone")}, func() uint64 { return 0 }).CgroupStats()
	if len(stats) != 1 || stats[0].Scope != ScopeBuckets {
		t.Fatalf("without parent: %+v", stats)
	}
}

func TestOpenLogs(t *testing.T) {
	for _, c := range []struct {
		addr  string
		pprof bool
		warn  bool
	}{{"127.0.0.1:0", true, false}, {"0.0.0.0:0", false, true}} {
		core, logs := observer.New(zapcore.InfoLevel)
		ln, err := New(Options{Pprof: c.pprof}).Open(c.addr, zap.New(core))
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
		e := logs.All()
		if len(e) == 0 || e[0].Message != "metrics listening" || e[0].ContextMap()["addr"] != ln.Addr().String() ||
			e[0].ContextMap()["pprof"] != c.pprof {
			t.Fatalf("%s: logs %v", c.addr, e)
		}
		if warned := len(e) == 2 && e[1].Level == zapcore.WarnLevel && e[1].ContextMap()["key"] == "[agent] metrics_addr"; warned != c.warn || len(e) > 2 {
			t.Errorf("%s: warning %v, want %v: %v", c.addr, warned, c.warn, e)
		}
	}
	if _, err := New(Options{}).Open("256.0.0.1:0", nil); err == nil {
		t.Error("a bad address opened")
	}
}
