package exporter

import (
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// ConnectionSource reports the agent's admission socket connections. It is
// called at scrape time and must be cheap and safe for concurrent use.
type ConnectionSource interface {
	// ConnectionStats returns the connections served now and, per reason
	// ("max_connections", "per_uid", "handshake"), the number refused or
	// closed since start.
	ConnectionStats() (open int, rejected map[string]uint64)
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
			"Connections the agent serves on its admission socket now (shims queued or holding a lease, gRPC clients), plus the gRPC calls in progress on them: each counts against [agent] max_connections and max_connections_per_uid.",
			nil, nil),
		rejected: prometheus.NewDesc(prometheus.BuildFQName(namespace, "", "connections_rejected_total"),
			"Connections refused or closed by the agent, by reason: max_connections (the table, or its share outside the root/admin reserve, was full), per_uid (the peer's uid held max_connections_per_uid), handshake (no hello, HTTP/2 handshake or request in time). Refused shims exit 75 whatever fail_mode says.",
			[]string{"reason"}, nil),
	}
}

func (c *connCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.open
	ch <- c.rejected
}

func (c *connCollector) Collect(ch chan<- prometheus.Metric) {
	open, rejected := c.src.ConnectionStats()
	ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(open))
	for _, r := range slices.Sorted(maps.Keys(rejected)) {
		ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(rejected[r]), r)
	}
}
