package cgroup

// TreeStats is one reading of sluice's hierarchy: the parent and the sum
// of its buckets. The metrics, `sluice status` and the adaptive watchers
// all read the tree this way.
type TreeStats struct {
	// Parent are the parent's statistics, zero when ParentErr is set.
	// On v1 the parent's OOM kill count does not include its buckets'
	// (memory.oom_control counts only the cgroup's own); add Buckets'.
	Parent    Stats
	ParentErr error
	// Buckets sums every bucket in force that could be read: memory usage,
	// page cache and anonymous memory, CPU usage, periods and throttling,
	// OOM kills and processes. Limits and PSI are not summed (zero, nil).
	Buckets Stats
}

// ReadTree reads the parent's and every bucket's statistics.
func ReadTree(m Manager) TreeStats {
	var t TreeStats
	t.Parent, t.ParentErr = m.ParentStats()
	if t.ParentErr != nil {
		t.Parent = Stats{}
	}
	for i := range m.Buckets() {
		b, err := m.BucketStats(i)
		if err != nil {
			continue
		}
		s := &t.Buckets
		s.MemoryUsage += b.MemoryUsage
		s.InactiveFile += b.InactiveFile
		s.ActiveFile += b.ActiveFile
		s.Anon += b.Anon
		s.CPUUsage += b.CPUUsage
		s.CPUPeriods += b.CPUPeriods
		s.CPUThrottledPeriods += b.CPUThrottledPeriods
		s.CPUThrottledTime += b.CPUThrottledTime
		s.OOMKills += b.OOMKills
		s.Processes += b.Processes
	}
	return t
}
