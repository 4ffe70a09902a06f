package cgroup

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestIdleBucketsAreNotReread: a bucket with an empty cgroup.procs is
// answered from its last idle read; one with a process is read in full
// every time, and its statistics are never served from the cache.
func TestIdleBucketsAreNotReread(t *testing.T) {
	dir := t.TempDir()
	procs := filepath.Join(dir, "cgroup.procs")
	setProcs := func(s string) {
		if err := os.WriteFile(procs, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var c idleCache
	reads := 0
	usage := time.Second
	cur := func() (time.Duration, error) { return usage, nil }
	full := func() (Stats, error) {
		reads++
		pids, _ := readProcs(dir)
		return Stats{CPUUsage: usage, Processes: len(pids)}, nil
	}
	setProcs("")
	for i := 0; i < 3; i++ {
		if st, err := c.read(7, dir, cur, full); err != nil || st.CPUUsage != time.Second {
			t.Fatalf("idle read %d: %+v, %v", i, st, err)
		}
	}
	if reads != 1 {
		t.Fatalf("an idle bucket was read in full %d times, want once", reads)
	}
	setProcs("4242\n")
	usage = 3 * time.Second
	for i := 0; i < 2; i++ {
		if st, _ := c.read(7, dir, cur, full); st.CPUUsage != 3*time.Second || st.Processes != 1 {
			t.Fatalf("busy read %d: %+v, want the fresh statistics", i, st)
		}
	}
	if reads != 3 {
		t.Fatalf("a busy bucket was read in full %d times in 2 reads", reads-1)
	}
	// Idle again: the first idle read is a full one (the counters moved
	// while it ran), then the cache answers.
	setProcs("")
	usage = 4 * time.Second
	for i := 0; i < 2; i++ {
		if st, _ := c.read(7, dir, cur, full); st.CPUUsage != 4*time.Second {
			t.Fatalf("idle-again read %d: %+v, want the counters from after the process", i, st)
		}
	}
	if reads != 4 {
		t.Fatalf("full reads = %d, want 4", reads)
	}
	// A process that came and went between two reads (cgroup.procs empty
	// both times) moved the CPU usage: read in full, never the stale copy.
	// (CI caught this: a burner's throttling was invisible to a scrape.)
	usage = 5 * time.Second
	if st, _ := c.read(7, dir, cur, full); st.CPUUsage != 5*time.Second {
		t.Fatalf("after a process came and went: %+v, want the fresh statistics", st)
	}
	if reads != 5 {
		t.Fatalf("full reads = %d, want 5", reads)
	}
	c.read(7, dir, cur, full)
	if reads != 5 {
		t.Fatalf("idle again and unchanged: full reads = %d, want still 5", reads)
	}
	// An old idle read is refreshed.
	c.mu.Lock()
	e := c.last[7]
	e.at = e.at.Add(-idleRefresh)
	c.last[7] = e
	c.mu.Unlock()
	c.read(7, dir, cur, full)
	if reads != 6 {
		t.Fatalf("an idle read older than idleRefresh was reused (full reads %d)", reads)
	}
}
