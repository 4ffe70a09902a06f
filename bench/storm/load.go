package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shirou/gopsutil/v3/process"
)

// outcome of one client operation.
type outcome string

const (
	ok       outcome = "ok"
	rejected outcome = "rejected" // the client saw a `sluice:` line
	timedOut outcome = "timeout"
	cutOff   outcome = "cut_off" // still running when the mode's drain time ran out
	failed   outcome = "other"   // anything else: hung up (OOM kill, a git:// rejection), errors
)

type op struct {
	Start   time.Duration // since the mode started
	Seconds float64
	Outcome outcome
	Stderr  string `json:",omitempty"`
}

// runGit runs git with a timeout in its own process group (so clone's
// children go too) and classifies the result. hard cancels it early
// without counting a timeout.
func runGit(hard context.Context, env []string, timeout time.Duration, args ...string) (time.Duration, outcome, string) {
	ctx, cancel := context.WithTimeout(hard, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	t0 := time.Now()
	err := cmd.Run()
	d := time.Since(t0)
	msg := strings.TrimSpace(stderr.String())
	if len(msg) > 300 {
		msg = msg[len(msg)-300:]
	}
	switch {
	case err == nil:
		return d, ok, ""
	case hard.Err() != nil:
		return d, cutOff, msg
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return d, timedOut, msg
	case strings.Contains(msg, "sluice:"):
		return d, rejected, msg
	default:
		return d, failed, msg
	}
}

// storm runs k clients cloning url until stopAt, each clone into a fresh
// directory removed afterwards. Clones still running at stopAt get until
// drainUntil, then are cut off (and not counted as failures).
func storm(ctx context.Context, k int, url, tmp string, env []string, timeout time.Duration, t0, stopAt, drainUntil time.Time) []op {
	hard, cancel := context.WithDeadline(ctx, drainUntil)
	defer cancel()
	var mu sync.Mutex
	var ops []op
	var wg sync.WaitGroup
	for i := 0; i < k; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stopAt) && ctx.Err() == nil {
				dir, err := os.MkdirTemp(tmp, "clone-")
				if err != nil {
					return
				}
				start := time.Since(t0)
				d, oc, msg := runGit(hard, env, timeout, "clone", "-q", "--bare", url, dir)
				os.RemoveAll(dir)
				mu.Lock()
				ops = append(ops, op{Start: start, Seconds: d.Seconds(), Outcome: oc, Stderr: msg})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return ops
}

// probe runs `git ls-remote url` once per second until ctx ends.
func probe(ctx context.Context, url string, env []string, t0 time.Time) []op {
	var ops []op
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		start := time.Since(t0)
		d, oc, msg := runGit(ctx, env, 10*time.Second, "ls-remote", url)
		if oc != cutOff {
			ops = append(ops, op{Start: start, Seconds: d.Seconds(), Outcome: oc, Stderr: msg})
		}
		select {
		case <-ctx.Done():
			return ops
		case <-tick.C:
		}
	}
}

// sample is one 500 ms reading of the server and the agent.
type sample struct {
	T        float64            // seconds since the mode started
	MemBytes int64              // server cgroup usage
	Limit    map[string]float64 `json:",omitempty"` // sluice_concurrency_limiting_current_limit by rule
	InFlight map[string]float64 `json:",omitempty"`
	Queued   map[string]float64 `json:",omitempty"`
	AgentRSS int64              `json:",omitempty"`
}

// sampler reads the server cgroup and scrapes the agent every 500 ms.
func sampler(ctx context.Context, cg *serverCgroup, ag *agent, t0 time.Time) []sample {
	var out []sample
	var p *process.Process
	if ag != nil {
		p, _ = process.NewProcess(int32(ag.pid))
	}
	client := &http.Client{Timeout: 400 * time.Millisecond}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		s := sample{T: time.Since(t0).Seconds()}
		if cg != nil {
			s.MemBytes = cg.usage()
		}
		if ag != nil {
			if m, err := scrape(client, ag.metrics); err == nil {
				s.Limit = m["sluice_concurrency_limiting_current_limit"]
				s.InFlight = m["sluice_concurrency_limiting_in_progress"]
				s.Queued = m["sluice_concurrency_limiting_queued"]
			}
			if p != nil {
				if mi, err := p.MemoryInfo(); err == nil {
					s.AgentRSS = int64(mi.RSS)
				}
			}
		}
		out = append(out, s)
		select {
		case <-ctx.Done():
			return out
		case <-tick.C:
		}
	}
}

// scrape reads a Prometheus text exposition and returns, for each metric
// name, its values summed by the `limit` label (or under "" without one).
func scrape(c *http.Client, url string) (map[string]map[string]float64, error) {
	r, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer r.Body.Close()
	out := map[string]map[string]float64{}
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(l, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[sp+1:], 64)
		if err != nil {
			continue
		}
		name, labels := l[:sp], ""
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name, labels = name[:i], name[i:]
		}
		key := labelValue(labels, "limit")
		if out[name] == nil {
			out[name] = map[string]float64{}
		}
		out[name][key] += v
	}
	return out, sc.Err()
}

// counter sums a metric over the series whose labels contain every given
// name="value" pair.
func counter(c *http.Client, url, name string, match ...string) float64 {
	r, err := c.Get(url)
	if err != nil {
		return 0
	}
	defer r.Body.Close()
	var sum float64
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		all := true
		for _, m := range match {
			all = all && strings.Contains(l, m)
		}
		if sp := strings.LastIndexByte(l, ' '); all && sp > 0 {
			v, _ := strconv.ParseFloat(l[sp+1:], 64)
			sum += v
		}
	}
	return sum
}

func labelValue(labels, name string) string {
	i := strings.Index(labels, name+`="`)
	if i < 0 {
		return ""
	}
	rest := labels[i+len(name)+2:]
	if j := strings.IndexByte(rest, '"'); j >= 0 {
		return rest[:j]
	}
	return ""
}
