package exporter

import "github.com/prometheus/client_golang/prometheus"

// ConnectionSource reports the agent's admission socket connections. It is
// called at scrape time and must be cheap and safe for concurrent use.
type ConnectionSource interface {
	// ConnectionStats returns the connections served now and the number
	// refused since start because [agent] max_connections were open.
	ConnectionStats() (open int, rejected uint64)
}

// connCollector reads a ConnectionSource at scrape time.
type connCollector struct {
	src      ConnectionSource
	open     *prometheus.Desc
	rejected *prometheus.Desc
}

func newConnCollector(src ConnectionSource) *connCollector {
	return &connCollector{
		src: src,
		open: prometheus.NewDesc(prometheus.BuildFQName(namespace, "", "connections"),
			"Connections the agent serves on its admission socket now (shims queued or holding a lease, CLI calls).",
			nil, nil),
		rejected: prometheus.NewDesc(prometheus.BuildFQName(namespace, "", "connections_rejected_total"),
			"Connections refused at once because [agent] max_connections were open (their shims applied fail_mode).",
			nil, nil),
	}
}

func (c *connCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.open
	ch <- c.rejected
}

func (c *connCollector) Collect(ch chan<- prometheus.Metric) {
	open, rejected := c.src.ConnectionStats()
	ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(open))
	ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(rejected))
}
