package exporter

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Values of the kind label of sluice_timeouts_total.
const (
	KindUploadPackNegotiation    = "upload_pack_negotiation"    // upload-pack did not finish negotiating in time
	KindUploadArchiveNegotiation = "upload_archive_negotiation" // upload-archive did not finish negotiating in time
	KindMaxRuntime               = "max_runtime"                // the command ran longer than its rule's max_runtime
)

// timeoutKinds lists every kind SetLimits initialises to zero.
var timeoutKinds = [...]string{KindUploadPackNegotiation, KindUploadArchiveNegotiation, KindMaxRuntime}

// timeoutMetrics counts commands stopped by a timeout.
type timeoutMetrics struct {
	total *prometheus.CounterVec // limit, kind

	declared declaredLimits
}

func newTimeoutMetrics() *timeoutMetrics {
	return &timeoutMetrics{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "timeouts_total",
			Help:      "Commands stopped by a timeout, by kind (upload_pack_negotiation, upload_archive_negotiation, max_runtime).",
		}, []string{"limit", "kind"}),
	}
}

func (m *timeoutMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.total}
}

// setLimits keeps a zero series per limit and kind, as limitMetrics does.
func (m *timeoutMetrics) setLimits(names []string) {
	m.declared.set(names, func(name string) {
		for _, k := range timeoutKinds {
			m.total.WithLabelValues(name, k)
		}
	}, m.total)
}

// Timeout records a command of limit stopped by a timeout of the given
// kind (KindUploadPackNegotiation, KindUploadArchiveNegotiation,
// KindMaxRuntime).
func (e *Exporter) Timeout(limit, kind string) {
	e.timeouts.total.WithLabelValues(limit, kind).Inc()
}
