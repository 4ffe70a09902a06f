package main

import (
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/agent/admitpb"
	"github.com/sluicehq/sluice/agent/packcache"
	"github.com/sluicehq/sluice/exporter"
	"github.com/sluicehq/sluice/policy"
)

// packCacheRunning is false when [pack_cache] is enabled but the cache
// could not start; shim.conf then keeps hook-mode shims from asking.
var packCacheRunning = true

// packCacheOn says whether shim.conf enables the pack cache. Changing
// [pack_cache] takes a restart: a reload rewrites shim.conf but the cache
// keeps its directory and bounds.
func packCacheOn(cfg *policy.Config) bool {
	return cfg.PackCache.Enabled && packCacheRunning
}

// openPackCache starts the pack cache when [pack_cache] enables it and
// exports its counters; nil when disabled or when it cannot start (logged:
// fetches then run uncached, never fail).
func openPackCache(cfg *policy.Config, log *zap.Logger, exp *exporter.Exporter) *packcache.Cache {
	p := cfg.PackCache
	if !p.Enabled {
		return nil
	}
	c, err := packcache.New(packcache.Config{
		Dir: p.Dir, MaxAge: p.MaxAge.Duration, MaxBytes: p.MaxBytes, MinOccurrences: p.MinOccurrences,
	}, log.Named("packcache"))
	if err != nil {
		packCacheRunning = false
		log.Error("pack cache disabled: cannot use its directory; fetches run uncached", zap.Error(err),
			zap.String("key", "[pack_cache] dir"), zap.String("value", p.Dir))
		return nil
	}
	log.Info("pack cache enabled", zap.String("dir", p.Dir), zap.Duration("max_age", p.MaxAge.Duration),
		zap.Int64("max_bytes", p.MaxBytes), zap.Int("min_occurrences", p.MinOccurrences))
	exp.RegisterPackCache(func() exporter.PackCacheStats {
		s := c.Stats()
		return exporter.PackCacheStats{
			Hits: s.Hits, Joins: s.Joins, Misses: s.Misses, Writes: s.Writes,
			BytesServed: s.BytesServed, BytesWritten: s.BytesWritten,
			EvictionsSize: s.EvictionsSize, EvictionsAge: s.EvictionsAge, WriterFailures: s.WriterFailures,
			BypassCold: s.BypassCold, BypassDisk: s.BypassDisk, BypassTooLarge: s.BypassTooLarge,
			Entries: s.Entries, SizeBytes: s.SizeBytes, MaxBytes: s.MaxBytes,
		}
	})
	return c
}

// withPackCache adds the pack cache's counters to every Status answer.
func withPackCache(describe func(*admitpb.StatusResponse), c *packcache.Cache, p policy.PackCache) func(*admitpb.StatusResponse) {
	return func(resp *admitpb.StatusResponse) {
		if describe != nil {
			describe(resp)
		}
		s := c.Stats()
		resp.PackCache = &admitpb.PackCacheStatus{
			Dir: p.Dir, MaxAgeUsec: p.MaxAge.Microseconds(), MaxBytes: p.MaxBytes, MinOccurrences: int32(p.MinOccurrences),
			Entries: int64(s.Entries), SizeBytes: s.SizeBytes,
			Hits: s.Hits, Joins: s.Joins, Misses: s.Misses, Fills: s.Writes, FillFailures: s.WriterFailures,
			ServedBytes: s.BytesServed, WrittenBytes: s.BytesWritten,
			EvictionsSize: s.EvictionsSize, EvictionsAge: s.EvictionsAge,
			BypassCold: s.BypassCold, BypassDisk: s.BypassDisk, BypassTooLarge: s.BypassTooLarge,
		}
	}
}
