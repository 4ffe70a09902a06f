package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// activePolicy is the policy startAgent writes.
var activePolicy = policy

// restartPolicy: one slot for every upload-pack, a queue long enough for
// every shim, waits long enough to ride out restarts.
const restartPolicy = `
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "global"
max_per_key = 1
max_queue_size = 200
max_queue_wait = "60s"

[cgroups]
enabled = false

[ebpf]
enabled = false
`

// restartResult is what the restart soak reports.
type restartResult struct {
	Duration       string  `json:"duration"`
	Shims          int     `json:"shims"`
	Restarts       int     `json:"restarts"`
	ReadyP50Ms     float64 `json:"sigterm_to_ready_p50_ms"`
	ReadyMaxMs     float64 `json:"sigterm_to_ready_max_ms"`
	Runs           int64   `json:"shim_runs"`
	OK             int64   `json:"shim_ok"`
	Failed         int64   `json:"shim_failed"`
	GitRuns        int     `json:"git_runs_completed"`
	MaxConcurrent  int     `json:"max_concurrent_git"`
	WithoutLease   int     `json:"runs_without_lease"`
	GaugesZero     bool    `json:"gauges_zero"`
	GaugesDetail   string  `json:"gauges_detail"`
	StateFilesLeft int     `json:"state_files_left"`
}

// restartSoak runs o.shims real shims in a loop, each running a fake git
// that holds the only slot ~20ms and records how many copies run at once,
// while the agent is restarted every o.restartEvery.
func restartSoak(o options, ag **agentProc, dir string) (*restartResult, error) {
	shimLink := filepath.Join(dir, "git-upload-pack")
	if err := os.Symlink(mustAbs(filepath.Join(o.bin, "sluice-shim")), shimLink); err != nil {
		return nil, err
	}
	count := filepath.Join(dir, "count")
	if err := os.MkdirAll(count, 0o755); err != nil {
		return nil, err
	}
	fakeGit := filepath.Join(dir, "fake-git")
	script := fmt.Sprintf(`#!/bin/sh
S=%s
exec 9>>"$S/lock"
flock 9; n=$(cat "$S/cur" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$S/cur"
m=$(cat "$S/max" 2>/dev/null || echo 0); [ $n -gt $m ] && echo $n > "$S/max"; flock -u 9
sleep 0.02
flock 9; n=$(cat "$S/cur"); echo $((n-1)) > "$S/cur"; echo x >> "$S/done"; flock -u 9
`, count)
	if err := os.WriteFile(fakeGit, []byte(script), 0o755); err != nil {
		return nil, err
	}
	shims := max(o.shims, 8)
	sock := (*ag).socket // the same for every agent
	res := &restartResult{Duration: o.duration.String(), Shims: shims}
	var runs, ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < shims; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				runs.Add(1)
				cmd := exec.Command(shimLink, "/srv/soak/r.git")
				cmd.Env = []string{"PATH=/usr/bin:/bin", "SLUICE_SOCKET=" + sock, "SLUICE_REAL_GIT=" + fakeGit,
					"SLUICE_SHIM_LOG=" + filepath.Join(dir, "shim.log")}
				if cmd.Run() == nil {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		}()
	}
	var ready []time.Duration
	end := time.Now().Add(o.duration)
	var err error
	for time.Now().Add(o.restartEvery).Before(end) {
		time.Sleep(o.restartEvery)
		t0 := time.Now()
		if err = (*ag).stop(); err != nil {
			break
		}
		var next *agentProc
		if next, err = startAgent(o, dir); err != nil {
			break
		}
		ready = append(ready, time.Since(t0))
		*ag = next
		res.Restarts++
	}
	time.Sleep(time.Until(end))
	close(stop)
	wg.Wait()
	if err != nil {
		return res, err
	}
	res.Runs, res.OK, res.Failed = runs.Load(), ok.Load(), failed.Load()
	if len(ready) > 0 {
		p50, _, _, _ := percentiles(ready)
		res.ReadyP50Ms = p50
		mx := ready[0]
		for _, d := range ready {
			mx = max(mx, d)
		}
		res.ReadyMaxMs = float64(mx.Microseconds()) / 1000
	}
	b, _ := os.ReadFile(filepath.Join(count, "done"))
	res.GitRuns = strings.Count(string(b), "x")
	b, _ = os.ReadFile(filepath.Join(count, "max"))
	res.MaxConcurrent, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	b, _ = os.ReadFile(filepath.Join(dir, "shim.log"))
	res.WithoutLease = strings.Count(string(b), "without a lease")
	if res.WithoutLease > 0 {
		// Say why: the shim's log names the reason of each.
		seen := map[string]bool{}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "without a lease") && len(seen) < 5 && !seen[l] {
				seen[l] = true
				fmt.Printf("  shim log: %s\n", l)
			}
		}
	}
	res.GaugesZero, res.GaugesDetail = (*ag).waitIdle(10 * time.Second)
	ents, _ := os.ReadDir(filepath.Join(dir, "run", "leases"))
	res.StateFilesLeft = len(ents)
	fmt.Printf("restart soak: %s, %d shims, limit 1, agent restarted %d times (SIGTERM to ready p50 %.0f ms, max %.0f ms)\n",
		res.Duration, res.Shims, res.Restarts, res.ReadyP50Ms, res.ReadyMaxMs)
	fmt.Printf("shim runs %d: ok %d, failed %d; git runs completed %d; most git running at once %d; runs without a lease %d\n",
		res.Runs, res.OK, res.Failed, res.GitRuns, res.MaxConcurrent, res.WithoutLease)
	fmt.Printf("gauges back to zero: %v (%s); state files left %d\n", res.GaugesZero, res.GaugesDetail, res.StateFilesLeft)
	switch {
	case res.MaxConcurrent > 1:
		return res, fmt.Errorf("%d git commands ran at once behind a limit of 1", res.MaxConcurrent)
	case res.WithoutLease > 0:
		return res, fmt.Errorf("%d commands ran without a lease", res.WithoutLease)
	case res.Failed > 0:
		return res, fmt.Errorf("%d shim runs failed", res.Failed)
	case !res.GaugesZero:
		return res, errors.New("gauges not back to zero: " + res.GaugesDetail)
	case res.StateFilesLeft > 0:
		return res, fmt.Errorf("%d state files left", res.StateFilesLeft)
	}
	return res, nil
}
