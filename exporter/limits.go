package exporter

import (
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// acquiringBuckets spans 1 ms (admitted at once) to 5 min. Queue waits are
// bounded by max_queue_wait, typically 1 s to a minute or two, so the buckets
// are dense from 1 s to 2 min.
var acquiringBuckets = []float64{
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2.5, 5, 10, 20, 30, 60, 120, 300,
}

// limitMetrics are the admission events the agent records as they happen.
type limitMetrics struct {
	acquiring *prometheus.HistogramVec // limit
	dropped   *prometheus.CounterVec   // limit, reason
	backoff   *prometheus.CounterVec   // watcher
	watchErr  *prometheus.CounterVec   // watcher

	declared declaredLimits
}

func newLimitMetrics() *limitMetrics {
	return &limitMetrics{
		acquiring: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "concurrency_limiting_acquiring_seconds",
			Help:      "Time requests waited for a slot before being admitted (0 for requests admitted at once).",
			Buckets:   acquiringBuckets,
		}, []string{"limit"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "requests_dropped_total",
			Help:      "Requests rejected by a limit, by reason (max_size, max_time, unavailable).",
		}, []string{"limit", "reason"}),
		backoff: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "concurrency_limiting_backoff_events_total",
			Help:      "Backoff events raised by each pressure watcher of the adaptive limiter.",
		}, []string{"watcher"}),
		watchErr: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "watcher_errors_total",
			Help:      "Samples a pressure watcher could not read (a missing signal counts once).",
		}, []string{"watcher"}),
	}
}

func (m *limitMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.acquiring, m.dropped, m.backoff, m.watchErr}
}

func (m *limitMetrics) setLimits(names []string) {
	m.declared.set(names, func(name string) {
		m.acquiring.WithLabelValues(name)
		for _, reason := range dropReasons {
			m.dropped.WithLabelValues(name, reason)
		}
	}, m.acquiring, m.dropped)
}

// declaredLimits are the limits whose zero series a metric declared.
type declaredLimits struct {
	mu    sync.Mutex // guards names
	names map[string]bool
}

// set declares the limits of names not declared yet (declare makes their
// zero series) and deletes the series of the limits no longer in names
// from vecs.
func (d *declaredLimits) set(names []string, declare func(limit string), vecs ...interface {
	DeletePartialMatch(prometheus.Labels) int
}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.names == nil {
		d.names = map[string]bool{}
	}
	for old := range d.names {
		if !slices.Contains(names, old) {
			for _, v := range vecs {
				v.DeletePartialMatch(prometheus.Labels{"limit": old})
			}
			delete(d.names, old)
		}
	}
	for _, name := range names {
		if !d.names[name] {
			d.names[name] = true
			declare(name)
		}
	}
}

// Acquired records that a request under limit was admitted after waiting
// waited (0 when it was admitted at once). Negative waits count as 0.
func (e *Exporter) Acquired(limit string, waited time.Duration) {
	e.limits.acquiring.WithLabelValues(limit).Observe(max(waited, 0).Seconds())
}

// Dropped records a request that limit rejected; reason is ReasonMaxSize,
// ReasonMaxTime or ReasonUnavailable.
func (e *Exporter) Dropped(limit, reason string) {
	e.limits.dropped.WithLabelValues(limit, reason).Inc()
}

// WatcherError records a sample the named watcher could not read.
func (e *Exporter) WatcherError(watcher string) {
	e.limits.watchErr.WithLabelValues(watcher).Inc()
}

// Backoff records one backoff event raised by the named pressure watcher.
func (e *Exporter) Backoff(watcher string) {
	e.limits.backoff.WithLabelValues(watcher).Inc()
}

// limitCollector reads the limiter's state at scrape time.
type limitCollector struct {
	src          LimitSource
	inProgress   *prometheus.Desc
	queued       *prometheus.Desc
	currentLimit *prometheus.Desc
	keys         *prometheus.Desc
}

func newLimitCollector(src LimitSource) *limitCollector {
	labels := []string{"limit"}
	return &limitCollector{
		src: src,
		inProgress: prometheus.NewDesc(
			prometheus.BuildFQName(namespace, "concurrency_limiting", "in_progress"),
			"Commands holding a lease under each limit.",
			labels, nil),
		queued: prometheus.NewDesc(
			prometheus.BuildFQName(namespace, "concurrency_limiting", "queued"),
			"Requests waiting in each limit's queues.",
			labels, nil),
		currentLimit: prometheus.NewDesc(
			prometheus.BuildFQName(namespace, "concurrency_limiting", "current_limit"),
			"Concurrency each limit allows per key now (moves with the adaptive limiter).",
			labels, nil),
		keys: prometheus.NewDesc(
			prometheus.BuildFQName(namespace, "limiter", "keys"),
			"Distinct keys each limit tracks now: keys with a command running or waiting (idle keys are forgotten at once).",
			labels, nil),
	}
}

func (c *limitCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.inProgress
	ch <- c.queued
	ch <- c.currentLimit
	ch <- c.keys
}

func (c *limitCollector) Collect(ch chan<- prometheus.Metric) {
	seen := map[string]bool{}
	for _, s := range c.src.LimitStats() {
		if seen[s.Name] {
			continue // a duplicate would fail the whole scrape
		}
		seen[s.Name] = true
		ch <- prometheus.MustNewConstMetric(c.inProgress, prometheus.GaugeValue, float64(s.InProgress), s.Name)
		ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(s.Queued), s.Name)
		ch <- prometheus.MustNewConstMetric(c.currentLimit, prometheus.GaugeValue, float64(s.CurrentLimit), s.Name)
		ch <- prometheus.MustNewConstMetric(c.keys, prometheus.GaugeValue, float64(s.Keys), s.Name)
	}
}
