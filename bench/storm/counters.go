package main

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// agentCounters is what the harness reads of sluiced's /metrics to judge
// the work its commands did: CPU by subcommand and the pack cache's
// counters. A run keeps the difference between the end of the storm
// window and its start (idle probes excluded).
type agentCounters struct {
	// CPU is sluice_command_cpu_seconds_total summed over mode (user +
	// system) and cmd, by subcmd. It counts finished commands only: a
	// command still running when the window closed is not in it. A
	// command's CPU includes its reaped children's (the tracer reads
	// cutime/cstime), so upload-pack's includes its pack-objects hook:
	// pack-objects itself, or the shim streaming a cache hit.
	CPU map[string]float64
	// Finished is sluice_commands_total by subcmd, outcomes other than
	// rejected.
	Finished map[string]float64 `json:",omitempty"`
	// PackCache is nil when the agent exports no sluice_pack_cache_*
	// series (the cache is off, or could not start).
	PackCache *packCacheCounters `json:",omitempty"`
}

// packCacheCounters are the pack cache's counters (exporter/packcache.go).
type packCacheCounters struct {
	Hits, Joins, Misses, Fills, FillFailures float64
	ServedBytes, WrittenBytes                float64
	// Bypasses by reason: cold, disk, too_large.
	Bypasses map[string]float64
}

// hitRatio is (hits + joins) / (hits + joins + misses): the share of
// pack-objects requests the cache answered without running pack-objects.
// NaN when no request reached the cache.
func (p *packCacheCounters) hitRatio() float64 {
	if p == nil {
		return math.NaN()
	}
	served := p.Hits + p.Joins
	if served+p.Misses == 0 {
		return math.NaN()
	}
	return served / (served + p.Misses)
}

func (p *packCacheCounters) bypasses() float64 {
	var n float64
	for _, v := range p.Bypasses {
		n += v
	}
	return n
}

// parseAgentCounters reads a Prometheus text exposition.
func parseAgentCounters(r io.Reader) (agentCounters, error) {
	c := agentCounters{CPU: map[string]float64{}, Finished: map[string]float64{}}
	var pc packCacheCounters
	seenPC := false
	err := eachSample(r, func(name, labels string, v float64) {
		if strings.HasPrefix(name, "sluice_pack_cache_") {
			seenPC = true
		}
		switch name {
		case "sluice_command_cpu_seconds_total":
			c.CPU[labelValue(labels, "subcmd")] += v
		case "sluice_commands_total":
			if labelValue(labels, "outcome") != "rejected" {
				c.Finished[labelValue(labels, "subcmd")] += v
			}
		case "sluice_pack_cache_hits_total":
			pc.Hits += v
		case "sluice_pack_cache_joins_total":
			pc.Joins += v
		case "sluice_pack_cache_misses_total":
			pc.Misses += v
		case "sluice_pack_cache_fills_total":
			pc.Fills += v
		case "sluice_pack_cache_fill_failures_total":
			pc.FillFailures += v
		case "sluice_pack_cache_served_bytes_total":
			pc.ServedBytes += v
		case "sluice_pack_cache_written_bytes_total":
			pc.WrittenBytes += v
		case "sluice_pack_cache_bypasses_total":
			if pc.Bypasses == nil {
				pc.Bypasses = map[string]float64{}
			}
			pc.Bypasses[labelValue(labels, "reason")] += v
		}
	})
	if seenPC {
		c.PackCache = &pc
	}
	return c, err
}

// readAgentCounters scrapes the agent's /metrics.
func readAgentCounters(c *http.Client, url string) (agentCounters, error) {
	r, err := c.Get(url)
	if err != nil {
		return agentCounters{}, err
	}
	defer r.Body.Close()
	if r.StatusCode != http.StatusOK {
		return agentCounters{}, fmt.Errorf("%s: %s", url, r.Status)
	}
	return parseAgentCounters(r.Body)
}

// since is end minus start, counter by counter (a series absent at the
// start counts from 0).
func (end agentCounters) since(start agentCounters) agentCounters {
	sub := func(a, b map[string]float64) map[string]float64 {
		out := map[string]float64{}
		for k, v := range a {
			out[k] = v - b[k]
		}
		return out
	}
	d := agentCounters{CPU: sub(end.CPU, start.CPU), Finished: sub(end.Finished, start.Finished)}
	if e := end.PackCache; e != nil {
		s := start.PackCache
		if s == nil {
			s = &packCacheCounters{}
		}
		d.PackCache = &packCacheCounters{
			Hits: e.Hits - s.Hits, Joins: e.Joins - s.Joins, Misses: e.Misses - s.Misses,
			Fills: e.Fills - s.Fills, FillFailures: e.FillFailures - s.FillFailures,
			ServedBytes: e.ServedBytes - s.ServedBytes, WrittenBytes: e.WrittenBytes - s.WrittenBytes,
			Bypasses: sub(e.Bypasses, s.Bypasses),
		}
	}
	return d
}

// cpuAcct is a v1 cpuacct cgroup the harness reads CPU usage from: the
// clients' or the server's.
type cpuAcct struct {
	dir  string
	cpus int // CPUs the side may use (its cpuset, else every CPU)
}

// usage is cpuacct.usage: CPU time used by every task in the cgroup and
// below since it was created.
func (a *cpuAcct) usage() (time.Duration, bool) {
	if a == nil {
		return 0, false
	}
	b, err := os.ReadFile(filepath.Join(a.dir, "cpuacct.usage"))
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return time.Duration(n), err == nil
}

// acctFor is where a side's CPU is accounted: one of its pins when the
// cpuacct controller is co-mounted with cpu (cpu,cpuacct), else a new
// cpuacct cgroup <name> (returned as created, for the caller to enter and
// remove). cpuacct limits nothing: it only counts.
func acctFor(pins []*pin, root, name string) (dir string, created *pin, err error) {
	for _, p := range pins {
		if _, err := os.Stat(filepath.Join(p.dir, "cpuacct.usage")); err == nil {
			return p.dir, nil, nil
		}
	}
	p, err := newPin(root, "cpuacct", name, nil)
	if err != nil {
		return "", nil, err
	}
	return p.dir, p, nil
}

// cpusetCount is how many CPUs a cpuset list ("1", "0-3", "0,2-3") names;
// 0 when it does not parse.
func cpusetCount(list string) int {
	n := 0
	for _, part := range strings.Split(list, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return 0
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0
			}
		}
		n += b - a + 1
	}
	return n
}
