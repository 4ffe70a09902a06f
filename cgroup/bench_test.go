package cgroup

import (
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/internal/stats"
)

// BenchmarkPlacement measures what putting a new process into a bucket costs:
//
//	fork-exec            start /bin/cat, no cgroup work (the baseline)
//	fork-exec+Place      start, then Place (v1 memory, cpu, cpuacct, pids + unified: what Place does)
//	clone-into           start with CLONE_INTO_CGROUP into the bucket's unified dir
//	clone-into+v1        the same plus the v1 cgroup.procs writes (what a hybrid host still needs)
//	place-running        Place alone, moving a running process between two buckets
//
// Each reports p50/p95/p99/mean in µs (from before Start to after the
// placement); the start variants also report the fork-exec baseline measured
// in the same loop (interleaved, alternating which goes first, so both see the
// same machine state) and their p50 as a ratio of it.
func BenchmarkPlacement(b *testing.B) {
	cat, err := exec.LookPath("cat")
	if err != nil {
		b.Skip("no cat in PATH for the child process")
	}
	m := newTestManager(b, Config{Buckets: 2})
	bucket := 1

	start := func(attr *syscall.SysProcAttr, place func(pid int) error) (time.Duration, func()) {
		cmd := exec.Command(cat)
		cmd.SysProcAttr = attr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		if place != nil {
			if err := place(cmd.Process.Pid); err != nil {
				b.Fatal(err)
			}
		}
		d := time.Since(t0)
		return d, func() {
			stdin.Close()
			cmd.Wait()
		}
	}
	run := func(b *testing.B, attr func() *syscall.SysProcAttr, place func(pid int) error) {
		var base, got []time.Duration
		for i := 0; b.Loop(); i++ {
			var d0, d1 time.Duration
			var done0, done1 func()
			if i%2 == 0 { // alternate the order: the first start of a pair is slower
				d0, done0 = start(nil, nil)
				d1, done1 = start(attr(), place)
			} else {
				d1, done1 = start(attr(), place)
				d0, done0 = start(nil, nil)
			}
			b.StopTimer()
			done0()
			done1()
			b.StartTimer()
			base, got = append(base, d0), append(got, d1)
		}
		report(b, got, "")
		if p50b := percentile(base, 50); p50b > 0 {
			b.ReportMetric(float64(p50b)/float64(time.Microsecond), "baseline-p50-µs")
			b.ReportMetric(float64(percentile(got, 50))/float64(p50b), "x-baseline-p50")
		}
	}
	noAttr := func() *syscall.SysProcAttr { return nil }

	b.Run("fork-exec", func(b *testing.B) {
		var got []time.Duration
		for b.Loop() {
			d, done := start(nil, nil)
			b.StopTimer()
			done()
			b.StartTimer()
			got = append(got, d)
		}
		report(b, got, "")
	})
	b.Run("fork-exec+Place", func(b *testing.B) {
		run(b, noAttr, func(pid int) error { return m.Place(pid, bucket) })
	})
	dir := m.UnifiedDir(bucket)
	cloneInto := func(b *testing.B) func() *syscall.SysProcAttr {
		if dir == "" {
			b.Skipf("no cgroup2 tree in mode %v: CLONE_INTO_CGROUP needs one", m.Mode())
		}
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { unix.Close(fd) })
		return func() *syscall.SysProcAttr { return &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd} }
	}
	b.Run("clone-into", func(b *testing.B) {
		run(b, cloneInto(b), nil)
	})
	b.Run("clone-into+v1", func(b *testing.B) {
		attr := cloneInto(b)
		mm, ok := m.(*v1Manager)
		if !ok {
			b.Skipf("mode %v has no v1 hierarchies to write", m.Mode())
		}
		run(b, attr, func(pid int) error { return mm.buckets[bucket].AddProc(uint64(pid)) })
	})
	b.Run("place-running", func(b *testing.B) {
		cmd := exec.Command(cat)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { stdin.Close(); cmd.Wait() }()
		var got []time.Duration
		i := 0
		for b.Loop() {
			i++
			t0 := time.Now()
			if err := m.Place(cmd.Process.Pid, i%2); err != nil {
				b.Fatal(err)
			}
			got = append(got, time.Since(t0))
		}
		report(b, got, "")
	})
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return stats.Percentile(s, float64(p)/100)
}

func report(b *testing.B, ds []time.Duration, prefix string) {
	if len(ds) == 0 {
		return
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	b.ReportMetric(us(percentile(ds, 50)), prefix+"p50-µs")
	b.ReportMetric(us(percentile(ds, 95)), prefix+"p95-µs")
	b.ReportMetric(us(percentile(ds, 99)), prefix+"p99-µs")
	b.ReportMetric(us(sum/time.Duration(len(ds))), prefix+"mean-µs")
}
