package exporter

import (
	"github.com/prometheus/client_golang/prometheus"
)

// TracerStats is what the eBPF tracer reports about itself.
type TracerStats struct {
	// Events is how many events were read from the kernel.
	Events uint64
	// Lost is how many events the kernel dropped (ring buffer full).
	Lost uint64
	// Tracked is how many processes are tracked now (admitted processes
	// and their descendants).
	Tracked uint64
}

var (
	tracerEventsDesc = prometheus.NewDesc(namespace+"_ebpf_events_total",
		"Events read from the eBPF tracer's ring buffer.", nil, nil)
	tracerLostDesc = prometheus.NewDesc(namespace+"_ebpf_events_lost_total",
		"Events the kernel dropped because the tracer's ring buffer was full.", nil, nil)
	tracerTrackedDesc = prometheus.NewDesc(namespace+"_ebpf_tracked_processes",
		"Processes the tracer follows now: admitted git processes and their descendants.", nil, nil)
)

// tracerCollector reads the tracer's counters at scrape time.
type tracerCollector struct{ stats func() TracerStats }

func (c tracerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- tracerEventsDesc
	ch <- tracerLostDesc
	ch <- tracerTrackedDesc
}

func (c tracerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(tracerEventsDesc, prometheus.CounterValue, float64(s.Events))
	ch <- prometheus.MustNewConstMetric(tracerLostDesc, prometheus.CounterValue, float64(s.Lost))
	ch <- prometheus.MustNewConstMetric(tracerTrackedDesc, prometheus.GaugeValue, float64(s.Tracked))
}

// RegisterTracer exports the running tracer's counters. Call it once, when
// the tracer runs; without a tracer these series are absent.
func (e *Exporter) RegisterTracer(stats func() TracerStats) {
	e.reg.MustRegister(tracerCollector{stats: stats})
}

// Unwrapped counts an exec of a limited git subcommand that did not go
// through sluice: sluice_unwrapped_exec_total{subcmd}.
func (e *Exporter) Unwrapped(subcmd string) {
	e.unwrapped.WithLabelValues(subcmd).Inc()
}

func newUnwrappedCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "unwrapped_exec_total",
		Help:      "Execs of git subcommands that a limit matches but that did not go through the sluice shim (seen by the eBPF tracer).",
	}, []string{"subcmd"})
}
