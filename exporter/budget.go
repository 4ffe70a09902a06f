package exporter

import "github.com/prometheus/client_golang/prometheus"

// BudgetStat is one class of the host budget at scrape time.
type BudgetStat struct {
	// Class is the budget class: pack, upload-pack or receive-pack.
	Class string
	// Limit is the class's limit for the whole host now; InUse and
	// Queued its commands running and waiting.
	Limit, InUse, Queued int
	// BackloggedKeys is how many fair keys wait; Fairness is Jain's index
	// of their weighted shares (1 = fair).
	BackloggedKeys int
	Fairness       float64
	// GoodputBytesPerSecond is what the class's commands wrote per second
	// in the controller's last epoch (pack only).
	GoodputBytesPerSecond float64
	// Admitted and Dropped* count since start.
	Admitted, DroppedSize, DroppedTime uint64
}

// BudgetSource reports the host budget at scrape time.
type BudgetSource interface {
	BudgetStats() []BudgetStat
}

// budgetCollector exports the host budget. Labels are the class only:
// never a repository, address or user.
type budgetCollector struct {
	src                                           BudgetSource
	limit, inUse, queued, share, backlogged, fair *prometheus.Desc
	goodput, admitted, dropped                    *prometheus.Desc
}

func newBudgetCollector(src BudgetSource) *budgetCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "host_budget", name), help, append([]string{"class"}, labels...), nil)
	}
	return &budgetCollector{
		src:        src,
		limit:      d("limit", "Commands of each budget class the whole host may run at once now (derived from CPUs and memory; pack adapts)."),
		inUse:      d("in_use", "Commands of each budget class running now."),
		queued:     d("queued", "Requests waiting for a slot of each budget class."),
		share:      d("share", "In-use over limit of each budget class."),
		backlogged: d("backlogged_keys", "Fair keys (client networks by default) with requests waiting in each budget class."),
		fair:       d("fairness", "Jain's index of the weighted shares of the keys waiting in each budget class (1 = every waiting key runs its fair share)."),
		goodput:    d("goodput_bytes_per_second", "Bytes written per second by the class's commands in the budget controller's last epoch (pack)."),
		admitted:   d("admitted_total", "Requests admitted through each budget class."),
		dropped:    d("dropped_total", "Requests each budget class turned away while they waited, by reason (max_size, max_time).", "reason"),
	}
}

func (c *budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.limit, c.inUse, c.queued, c.share, c.backlogged, c.fair, c.goodput, c.admitted, c.dropped} {
		ch <- d
	}
}

func (c *budgetCollector) Collect(ch chan<- prometheus.Metric) {
	seen := map[string]bool{}
	for _, s := range c.src.BudgetStats() {
		if seen[s.Class] {
			continue
		}
		seen[s.Class] = true
		g := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, s.Class)
		}
		g(c.limit, float64(s.Limit))
		g(c.inUse, float64(s.InUse))
		g(c.queued, float64(s.Queued))
		g(c.share, float64(s.InUse)/float64(max(s.Limit, 1)))
		g(c.backlogged, float64(s.BackloggedKeys))
		g(c.fair, s.Fairness)
		g(c.goodput, s.GoodputBytesPerSecond)
		ch <- prometheus.MustNewConstMetric(c.admitted, prometheus.CounterValue, float64(s.Admitted), s.Class)
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(s.DroppedSize), s.Class, ReasonMaxSize)
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(s.DroppedTime), s.Class, ReasonMaxTime)
	}
}
