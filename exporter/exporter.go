// Package exporter owns sluice's Prometheus metrics and the agent's HTTP mux
// (/metrics, /debug/pprof/, /healthz, /readyz).
//
// Metrics live in a private registry, never the default one. Command and
// admission events are recorded by the agent through the Exporter's methods
// (safe for concurrent use); the limiter's current state (in progress,
// queued, current limit) is read from a LimitSource at scrape time, so the
// exporter never keeps a copy that could drift. The list of collectors is
// explicit in New; nothing registers itself in init. The cgroup tree, the
// eBPF tracer and the pack cache are read through FromCgroups, FromTracer
// and FromPackCache (sources.go).
//
// Metric names and labels are part of sluice's contract (see DESIGN.md). No
// metric is labelled by repository, remote IP or user.
package exporter

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// namespace prefixes every sluice metric.
const namespace = "sluice"

// Values of the outcome label of sluice_commands_total.
const (
	OutcomeOK       = "ok"       // the command exited with status 0
	OutcomeError    = "error"    // the command exited with a non-zero status
	OutcomeSignaled = "signaled" // the command was killed by a signal
	OutcomeRejected = "rejected" // the command was refused admission and never ran
	OutcomeUnknown  = "unknown"  // exec mode: the tracer never reported how it ended
)

// Values of the reason label of sluice_requests_dropped_total.
const (
	ReasonMaxSize     = "max_size"    // the key's queue was full
	ReasonMaxTime     = "max_time"    // the request waited max_queue_wait without a slot
	ReasonUnavailable = "unavailable" // the agent could not admit (shutting down, ...)
)

// dropReasons lists every reason SetLimits initialises to zero.
var dropReasons = [...]string{ReasonMaxSize, ReasonMaxTime, ReasonUnavailable}

// LimitStat is the state of one configured limit at one instant, summed over
// all of the limit's keys.
type LimitStat struct {
	Name         string // the limit's name; the metrics' limit label
	InProgress   int    // commands holding a lease
	Queued       int    // requests waiting in the limit's queues
	CurrentLimit int    // concurrency allowed per key now (adaptive or static)
	Keys         int    // distinct keys with a command running or waiting
}

// LimitSource reports the state of every configured limit. It is called at
// scrape time, possibly concurrently with anything else the agent does, and
// must be cheap and safe for concurrent use. A name that appears twice is
// reported once (the first entry wins).
type LimitSource interface {
	LimitStats() []LimitStat
}

// Options configures an Exporter. The zero value is usable.
type Options struct {
	// Version is the build version reported by sluice_build_info;
	// "" reports "unknown".
	Version string
	// Limits is read at scrape time for the concurrency_limiting gauges;
	// nil exports no limit gauges.
	Limits LimitSource
	// Ready backs /readyz: a nil error answers 200 "ok", an error answers
	// 503 with the error's text. A nil func means always ready.
	Ready func() error
	// Cgroups is read at scrape time for the sluice_cgroup_* metrics; nil
	// exports none.
	Cgroups CgroupSource
	// LeaseStateErrors is read at scrape time for
	// sluice_lease_state_errors_total; nil exports nothing.
	LeaseStateErrors func() uint64
	// Connections is read at scrape time for sluice_connections and
	// sluice_connections_rejected_total; nil exports neither.
	Connections ConnectionSource
	// Budget is read at scrape time for the sluice_host_budget_* metrics;
	// nil exports none.
	Budget BudgetSource
	// Pprof serves /debug/pprof/ ([agent] pprof). False (the default)
	// answers 404 there: profiles of a root agent are not for every local
	// user who can reach the metrics port.
	Pprof bool
}

// Exporter holds sluice's metrics and serves them. Its recording methods are
// safe for concurrent use.
type Exporter struct {
	reg      *prometheus.Registry
	ready    func() error
	commands *commandMetrics
	limits   *limitMetrics
	// unwrapped is sluice_unwrapped_exec_total{subcmd}.
	unwrapped *prometheus.CounterVec
	timeouts  *timeoutMetrics
	pprof     bool // serve /debug/pprof/
}

// New builds an Exporter with its private registry: sluice's metrics plus the
// Go runtime and process collectors.
func New(opts Options) *Exporter {
	version := opts.Version
	if version == "" {
		version = "unknown"
	}
	e := &Exporter{
		reg:       prometheus.NewRegistry(),
		ready:     opts.Ready,
		commands:  newCommandMetrics(),
		limits:    newLimitMetrics(),
		unwrapped: newUnwrappedCounter(),
		timeouts:  newTimeoutMetrics(),
		pprof:     opts.Pprof,
	}
	cs := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newBuildInfoCollector(version, runtime.Version()),
	}
	cs = append(cs, e.commands.collectors()...)
	cs = append(cs, e.limits.collectors()...)
	cs = append(cs, e.unwrapped)
	cs = append(cs, e.timeouts.collectors()...)
	if opts.Limits != nil {
		cs = append(cs, newLimitCollector(opts.Limits))
	}
	if opts.Cgroups != nil {
		cs = append(cs, newCgroupCollector(opts.Cgroups))
	}
	if opts.Connections != nil {
		cs = append(cs, newConnCollector(opts.Connections))
	}
	if opts.Budget != nil {
		cs = append(cs, newBudgetCollector(opts.Budget))
	}
	if f := opts.LeaseStateErrors; f != nil {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: namespace, Name: "lease_state_errors_total",
			Help: "Running commands whose restart state file the agent could not write (a full or unusable state directory): a restart of the agent would forget them.",
		}, func() float64 { return float64(f()) }))
	}
	e.reg.MustRegister(cs...)
	return e
}

// Registry returns the Exporter's private registry, for callers that want to
// add their own collectors or gather in tests.
func (e *Exporter) Registry() *prometheus.Registry { return e.reg }

// SetLimits declares the configured limit names. Every limit gets
// sluice_requests_dropped_total{limit,reason} at 0 for each reason and an
// empty sluice_concurrency_limiting_acquiring_seconds histogram, and
// sluice_timeouts_total{limit,kind} at 0 for each kind, so rate()
// works from the first scrape. Series of limits no longer in names (after a
// reload removed or renamed them) are deleted. Calling it again with the same
// names changes nothing: counts recorded so far are kept.
func (e *Exporter) SetLimits(names []string) {
	e.limits.setLimits(names)
	e.timeouts.setLimits(names)
}
