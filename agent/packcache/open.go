package packcache

import (
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/agent/admitpb"
)

// Open is New for sluiced: it logs on log (as given) that the cache is
// enabled, or why it cannot use its directory, and then returns nil:
// fetches run uncached, they never fail. New gets log.Named("packcache").
func Open(cfg Config, log *zap.Logger) *Cache {
	if log == nil {
		log = zap.NewNop()
	}
	c, err := New(cfg, log.Named("packcache"))
	if err != nil {
		log.Error("pack cache disabled: cannot use its directory; fetches run uncached", zap.Error(err),
			zap.String("key", "[pack_cache] dir"), zap.String("value", cfg.Dir))
		return nil
	}
	log.Info("pack cache enabled", zap.String("dir", cfg.Dir), zap.Duration("max_age", cfg.MaxAge),
		zap.Int64("max_bytes", cfg.MaxBytes), zap.Int("min_occurrences", cfg.MinOccurrences))
	return c
}

// Status is the cache's part of `sluice status`: its settings and counters.
func (c *Cache) Status() *admitpb.PackCacheStatus {
	s := c.Stats()
	return &admitpb.PackCacheStatus{
		Dir: c.cfg.Dir, MaxAgeUsec: c.cfg.MaxAge.Microseconds(), MaxBytes: c.cfg.MaxBytes, MinOccurrences: int32(c.cfg.MinOccurrences),
		Entries: int64(s.Entries), SizeBytes: s.SizeBytes,
		Hits: s.Hits, Joins: s.Joins, Misses: s.Misses, Fills: s.Writes, FillFailures: s.WriterFailures,
		ServedBytes: s.BytesServed, WrittenBytes: s.BytesWritten,
		EvictionsSize: s.EvictionsSize, EvictionsAge: s.EvictionsAge,
		BypassCold: s.BypassCold, BypassDisk: s.BypassDisk, BypassTooLarge: s.BypassTooLarge,
	}
}
