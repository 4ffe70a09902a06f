package exporter

import "github.com/prometheus/client_golang/prometheus"

// buildInfoCollector exports sluice_build_info{version,goversion} 1.
type buildInfoCollector struct {
	metric prometheus.Metric
}

func newBuildInfoCollector(version, goVersion string) *buildInfoCollector {
	desc := prometheus.NewDesc(
		prometheus.BuildFQName(namespace, "", "build_info"),
		"A metric with a constant '1' value labelled by the version sluice was built from and the Go version it was built with.",
		[]string{"version", "goversion"}, nil,
	)
	return &buildInfoCollector{
		metric: prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, 1, version, goVersion),
	}
}

func (c *buildInfoCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.metric.Desc() }

func (c *buildInfoCollector) Collect(ch chan<- prometheus.Metric) { ch <- c.metric }
