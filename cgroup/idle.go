package cgroup

import (
	"sync"
	"time"
)

// Idle buckets are not read file by file.
//
// Three readers walk every bucket about once a second (the adaptive
// sensor, the budget and, per scrape, the exporter): with 64 buckets and
// eight or nine files each that was ~600 file reads per walk, and during
// a storm sluiced spent most of its CPU there — on the server's CPU, the
// one the storm saturates. Most buckets are empty most of the time, and
// an empty bucket's counters (CPU time, throttling, OOM kills) cannot
// move, so a bucket whose cgroup.procs is empty and whose CPU usage has
// not moved since it was last read empty is answered from that read, for
// up to idleRefresh: two file reads instead of nine. The CPU usage check
// catches a process that came and went between two reads (anything that
// ran, charged memory or was throttled used CPU). Its memory usage (page
// cache still charged to it) can only shrink meanwhile, by reclaim; it is
// read again every idleRefresh, and at once after a reload (Update may
// change its limits). A bucket with a process is always read in full. In
// ModeV1 a bucket's statistics carry no PSI: there is none per cgroup, and
// the host's is read with the parent's statistics.
const idleRefresh = 10 * time.Second

// idleCache holds each bucket's statistics from its last full read while
// it had no process.
type idleCache struct {
	mu   sync.Mutex
	last map[int]idleStats
}

type idleStats struct {
	st Stats
	at time.Time
}

// read returns bucket i's statistics: from the cache when procsDir's
// cgroup.procs is empty, usage() equals the cached CPUUsage and the idle
// read is younger than idleRefresh; else from full (which is then cached
// if the bucket was idle).
func (c *idleCache) read(i int, procsDir string, usage func() (time.Duration, error), full func() (Stats, error)) (Stats, error) {
	now := time.Now()
	c.mu.Lock()
	e, ok := c.last[i]
	c.mu.Unlock()
	if ok && now.Sub(e.at) < idleRefresh {
		if pids, err := readProcs(procsDir); err == nil && len(pids) == 0 {
			if u, err := usage(); err == nil && u == e.st.CPUUsage {
				return e.st, nil
			}
		}
	}
	st, err := full()
	if err != nil || st.Processes != 0 {
		c.forget(i)
		return st, err
	}
	c.mu.Lock()
	if c.last == nil {
		c.last = map[int]idleStats{}
	}
	c.last[i] = idleStats{st: st, at: now}
	c.mu.Unlock()
	return st, nil
}

// reset drops every cached read (after a reload).
func (c *idleCache) reset() {
	c.mu.Lock()
	c.last = nil
	c.mu.Unlock()
}

func (c *idleCache) forget(i int) {
	c.mu.Lock()
	delete(c.last, i)
	c.mu.Unlock()
}
