package exporter

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// commandMetrics counts finished and rejected git commands and what they used.
type commandMetrics struct {
	cpu    *prometheus.CounterVec   // cmd, subcmd, mode
	real   *prometheus.CounterVec   // cmd, subcmd
	total  *prometheus.CounterVec   // cmd, subcmd, outcome
	maxRSS *prometheus.HistogramVec // cmd, subcmd
}

// maxRSSBuckets are 16 MiB, 32 MiB, ... 16 GiB: a git process below 16 MiB is
// not what hurts a host, and one above 16 GiB is off the scale anyway.
var maxRSSBuckets = prometheus.ExponentialBuckets(16<<20, 2, 11)

func newCommandMetrics() *commandMetrics {
	return &commandMetrics{
		cpu: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "command_cpu_seconds_total",
			Help:      "CPU time used by finished git commands, by mode (user, system).",
		}, []string{"cmd", "subcmd", "mode"}),
		real: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "command_real_seconds_total",
			Help:      "Wall-clock time taken by finished git commands.",
		}, []string{"cmd", "subcmd"}),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "commands_total",
			Help:      "Git commands by outcome (ok, error, signaled, rejected).",
		}, []string{"cmd", "subcmd", "outcome"}),
		maxRSS: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "command_max_rss_bytes",
			Help:      "Peak resident set size of finished git commands.",
			Buckets:   maxRSSBuckets,
		}, []string{"cmd", "subcmd"}),
	}
}

func (m *commandMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.cpu, m.real, m.total, m.maxRSS}
}

// CommandFinished records a git command that ran and ended: one count for its
// outcome (OutcomeOK, OutcomeError or OutcomeSignaled), its user and system
// CPU time, its wall-clock time and its peak RSS. Negative durations are
// ignored; maxRSSBytes <= 0 means unknown and is not observed.
func (e *Exporter) CommandFinished(cmd, subcmd, outcome string, user, system, real time.Duration, maxRSSBytes int64) {
	m := e.commands
	m.total.WithLabelValues(cmd, subcmd, outcome).Inc()
	addSeconds(m.cpu.WithLabelValues(cmd, subcmd, "user"), user)
	addSeconds(m.cpu.WithLabelValues(cmd, subcmd, "system"), system)
	addSeconds(m.real.WithLabelValues(cmd, subcmd), real)
	if maxRSSBytes > 0 {
		m.maxRSS.WithLabelValues(cmd, subcmd).Observe(float64(maxRSSBytes))
	}
}

// CommandRejected records a git command that was refused admission:
// sluice_commands_total{outcome="rejected"}.
func (e *Exporter) CommandRejected(cmd, subcmd string) {
	e.commands.total.WithLabelValues(cmd, subcmd, OutcomeRejected).Inc()
}

// addSeconds adds d to c; a counter cannot go down, so d < 0 is dropped.
func addSeconds(c prometheus.Counter, d time.Duration) {
	if d > 0 {
		c.Add(d.Seconds())
	}
}
