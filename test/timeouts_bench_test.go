package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	istats "github.com/sluicehq/sluice/internal/stats"
)

// TestNegotiationWatchOverhead measures what watching the negotiation phase
// costs a large clone over git daemon: clone wall time and sluiced's CPU
// time per clone, with upload_pack_negotiation on ("10m") and off ("0s"),
// in two wirings — hook (pack-objects admitted through
// uploadpack.packObjectsHook, which ends the watch) and scan (no
// pack-objects rule: only the /proc scan sees the pack start). Clones run
// interleaved (off, on, scan-off, scan, rotating the order) so machine
// noise hits every variant alike. It reports p50/p95/p99/mean and the
// ratio against "off" of the same wiring; it asserts nothing about time.
//
// By default it is a smoke run (one round, 4 MiB); the measurement:
//
//	SLUICE_BENCH_RUNS=20 SLUICE_BENCH_REPO_MB=32 go test ./test -run TestNegotiationWatchOverhead -v -timeout 30m
func TestNegotiationWatchOverhead(t *testing.T) {
	runs, repoMB := 1, 4
	if v, err := strconv.Atoi(os.Getenv("SLUICE_BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	if v, err := strconv.Atoi(os.Getenv("SLUICE_BENCH_REPO_MB")); err == nil && v > 0 {
		repoMB = v
	}
	limits := limitRule("upload-pack", "repo", 5, 5, "60s") + `
%s
[timeouts]
upload_pack_negotiation = %q
`
	packRule := limitRule("pack-objects", "remote_ip", 5, 5, "60s")
	type variant struct {
		name     string
		baseline string // the variant this one is compared with
		s        *daemonSetup
		wall     []time.Duration
		cpu      []time.Duration
	}
	vs := []*variant{
		{name: "hook, off (0s)", s: startDaemonSetup(t, fmt.Sprintf(limits, packRule, "0s"), "", true, repoMB<<20)},
		{name: "hook, on (10m)", baseline: "hook, off (0s)", s: startDaemonSetup(t, fmt.Sprintf(limits, packRule, "10m"), "", true, repoMB<<20)},
		{name: "scan, off (0s)", s: startDaemonSetup(t, fmt.Sprintf(limits, "", "0s"), "", false, repoMB<<20)},
		{name: "scan, on (10m)", baseline: "scan, off (0s)", s: startDaemonSetup(t, fmt.Sprintf(limits, "", "10m"), "", false, repoMB<<20)},
	}
	for r := 0; r < runs; r++ {
		for i := range vs {
			v := vs[(i+r)%len(vs)]
			dst := filepath.Join(v.s.client, fmt.Sprintf("clone-%d", r))
			cpu0 := procCPU(t, v.s.a.Pid())
			start := time.Now()
			if out, err := gitTry(v.s.client, v.s.clientEnv(), "clone", "-q", "--bare",
				fmt.Sprintf("git://127.0.0.1:%d/project.git", v.s.port), dst); err != nil {
				t.Fatalf("%s: clone: %v\n%s", v.name, err, out)
			}
			v.wall = append(v.wall, time.Since(start))
			// The lease ends just after the client sees the pack: let the
			// agent log it before reading its CPU.
			waitFor(t, 10*time.Second, "upload-pack finished", func() bool {
				return v.s.a.metric(`sluice_concurrency_limiting_in_progress{limit="upload-pack"}`) == 0
			})
			v.cpu = append(v.cpu, procCPU(t, v.s.a.Pid())-cpu0)
			os.RemoveAll(dst)
		}
	}
	for _, v := range vs {
		if n := len(v.s.a.LogLines("timeout: command stopped")); n != 0 {
			t.Errorf("%s: %d clones stopped by a timeout", v.name, n)
		}
	}
	byName := map[string]*variant{}
	var b strings.Builder
	fmt.Fprintf(&b, "%d clones per variant of a %d MiB repository over git daemon\n", runs, repoMB)
	fmt.Fprintf(&b, "%-16s %-6s %9s %9s %9s %9s %12s\n", "variant", "", "p50 ms", "p95 ms", "p99 ms", "mean ms", "mean ratio")
	for _, v := range vs {
		byName[v.name] = v
		for _, m := range []struct {
			what string
			d    []time.Duration
			base func(*variant) []time.Duration
		}{
			{"wall", v.wall, func(b *variant) []time.Duration { return b.wall }},
			{"cpu", v.cpu, func(b *variant) []time.Duration { return b.cpu }},
		} {
			p50, p95, p99, mean := stats(m.d)
			ratio := ""
			if base := byName[v.baseline]; base != nil {
				_, _, _, bm := stats(m.base(base))
				if bm > 0 {
					ratio = fmt.Sprintf("x%.3f", float64(mean)/float64(bm))
				} else {
					ratio = "base 0"
				}
			}
			fmt.Fprintf(&b, "%-16s %-6s %9.2f %9.2f %9.2f %9.2f %12s\n", v.name, m.what, ms(p50), ms(p95), ms(p99), ms(mean), ratio)
		}
	}
	b.WriteString("(wall: clone time seen by the client; cpu: sluiced's CPU time per clone, from /proc/PID/schedstat)\n")
	t.Log("\n" + b.String())
}

// procCPU returns the CPU time all of pid's threads have run, summed from
// /proc/PID/task/*/schedstat (nanoseconds; /proc/PID/stat counts 10 ms
// ticks, too coarse for a few ms per clone).
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no schedstat for pid %d: %v", pid, err)
	}
	var total time.Duration
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread exited
		}
		ns, err := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
		if err != nil {
			t.Fatalf("%s %q: %v", f, b, err)
		}
		total += time.Duration(ns)
	}
	return total
}

// stats returns p50, p95, p99 (internal/stats: nearest rank) and the mean of d.
func stats(d []time.Duration) (p50, p95, p99, mean time.Duration) {
	s := istats.SummarizeDurations(d)
	return s.P50, s.P95, s.P99, s.Mean
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
