package exporter

import "github.com/prometheus/client_golang/prometheus"

// PackCacheStats are the pack-objects cache's counters (agent/packcache).
// No repository or address labels: a cache key names neither.
type PackCacheStats struct {
	Hits, Joins, Misses, Writes uint64
	BytesServed, BytesWritten   uint64
	EvictionsSize, EvictionsAge uint64
	WriterFailures              uint64
	// Bypasses by reason: cold (min_occurrences not reached), disk (full
	// or not writable), too_large (over max_bytes).
	BypassCold, BypassDisk, BypassTooLarge uint64
	Entries                                int
	SizeBytes, MaxBytes                    int64
}

var (
	pcHitsDesc     = prometheus.NewDesc(namespace+"_pack_cache_hits_total", "Pack-objects requests served from a complete cache entry (no pack-objects, no admission slot).", nil, nil)
	pcJoinsDesc    = prometheus.NewDesc(namespace+"_pack_cache_joins_total", "Pack-objects requests that joined an entry still being written (in-flight dedupe).", nil, nil)
	pcMissesDesc   = prometheus.NewDesc(namespace+"_pack_cache_misses_total", "Pack-objects requests the cache could not serve (they ran pack-objects: as the entry's writer, or bypassing).", nil, nil)
	pcWritesDesc   = prometheus.NewDesc(namespace+"_pack_cache_fills_total", "Cache entries started (a writer ran pack-objects into the cache).", nil, nil)
	pcServedDesc   = prometheus.NewDesc(namespace+"_pack_cache_served_bytes_total", "Bytes of cached packs handed to readers (hits and completed joins).", nil, nil)
	pcWrittenDesc  = prometheus.NewDesc(namespace+"_pack_cache_written_bytes_total", "Bytes of complete packs written to the cache.", nil, nil)
	pcEvictDesc    = prometheus.NewDesc(namespace+"_pack_cache_evictions_total", "Entries removed: reason size (LRU over max_bytes) or age (older than max_age).", []string{"reason"}, nil)
	pcFailDesc     = prometheus.NewDesc(namespace+"_pack_cache_fill_failures_total", "Entries whose writer failed (pack-objects died, the writer went away, disk full, over max_bytes); joined readers fell back or failed cleanly.", nil, nil)
	pcBypassDesc   = prometheus.NewDesc(namespace+"_pack_cache_bypasses_total", "Requests run uncached: reason cold (min_occurrences not reached), disk (cache file system full or not writable), too_large (pack over max_bytes).", []string{"reason"}, nil)
	pcEntriesDesc  = prometheus.NewDesc(namespace+"_pack_cache_entries", "Entries in the cache (complete and being written).", nil, nil)
	pcSizeDesc     = prometheus.NewDesc(namespace+"_pack_cache_size_bytes", "Bytes of complete entries in the cache.", nil, nil)
	pcMaxBytesDesc = prometheus.NewDesc(namespace+"_pack_cache_max_bytes", "The cache's size cap ([pack_cache] max_bytes).", nil, nil)
	packCacheDescs = []*prometheus.Desc{pcHitsDesc, pcJoinsDesc, pcMissesDesc, pcWritesDesc, pcServedDesc, pcWrittenDesc, pcEvictDesc, pcFailDesc, pcBypassDesc, pcEntriesDesc, pcSizeDesc, pcMaxBytesDesc}
)

type packCacheCollector struct{ stats func() PackCacheStats }

func (c packCacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range packCacheDescs {
		ch <- d
	}
}

func (c packCacheCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(pcHitsDesc, s.Hits)
	counter(pcJoinsDesc, s.Joins)
	counter(pcMissesDesc, s.Misses)
	counter(pcWritesDesc, s.Writes)
	counter(pcServedDesc, s.BytesServed)
	counter(pcWrittenDesc, s.BytesWritten)
	counter(pcEvictDesc, s.EvictionsSize, "size")
	counter(pcEvictDesc, s.EvictionsAge, "age")
	counter(pcFailDesc, s.WriterFailures)
	counter(pcBypassDesc, s.BypassCold, "cold")
	counter(pcBypassDesc, s.BypassDisk, "disk")
	counter(pcBypassDesc, s.BypassTooLarge, "too_large")
	ch <- prometheus.MustNewConstMetric(pcEntriesDesc, prometheus.GaugeValue, float64(s.Entries))
	ch <- prometheus.MustNewConstMetric(pcSizeDesc, prometheus.GaugeValue, float64(s.SizeBytes))
	ch <- prometheus.MustNewConstMetric(pcMaxBytesDesc, prometheus.GaugeValue, float64(s.MaxBytes))
}

// RegisterPackCache exports the pack cache's counters (sluice_pack_cache_*).
// Call it once, when the cache is enabled; without it the series are absent.
func (e *Exporter) RegisterPackCache(stats func() PackCacheStats) {
	e.reg.MustRegister(packCacheCollector{stats: stats})
}
