package main

import (
	"fmt"
	"time"

	"github.com/sluicehq/sluice/agent/admitpb"
)

// packCacheLine is the status report's "pack cache" line.
func packCacheLine(p *admitpb.PackCacheStatus) string {
	if p == nil {
		return "off"
	}
	lookups := p.Hits + p.Joins + p.Misses
	ratio := "-"
	if lookups > 0 {
		ratio = fmt.Sprintf("%.0f%%", 100*float64(p.Hits+p.Joins)/float64(lookups))
	}
	return fmt.Sprintf("%s: %d entries, %s of %s (max_age %s, min_occurrences %d); served %d hits + %d joins of %d (%s), %d misses, %d fills (%d failed); %s served, %s written; evicted %d by size, %d by age; bypassed %d cold, %d disk, %d too large",
		p.Dir, p.Entries, fmtBytes(uint64(p.SizeBytes)), fmtBytes(uint64(p.MaxBytes)), fmtDuration(time.Duration(p.MaxAgeUsec)*time.Microsecond), p.MinOccurrences,
		p.Hits, p.Joins, lookups, ratio, p.Misses, p.Fills, p.FillFailures, fmtBytes(p.ServedBytes), fmtBytes(p.WrittenBytes),
		p.EvictionsSize, p.EvictionsAge, p.BypassCold, p.BypassDisk, p.BypassTooLarge)
}
