package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluicehq/sluice/cgroup"
)

// reactionRun measures, once, how long the adaptive limiter takes to back
// off after memory pressure appears: a hog run through the shim fills the
// parent cgroup (256 MiB) past the working-set threshold and holds it; the
// time from "hog in place" to the agent's backoff log line is the reaction.
// sampleInterval is the agent's [adaptive] sample_interval: 1s is sluice's
// default; 30s reproduces Gitaly's calibration, which looks for pressure
// only once per 30 s calibration.
//
// events sets [adaptive] kernel_events: vmpressure notifications wake the
// watchers before the next sample (off for the Gitaly-style run).
func reactionRun(o options, dir, realGit string, env []string, sampleInterval string, events bool, run int) (time.Duration, error) {
	rdir := filepath.Join(dir, fmt.Sprintf("reaction-%s-%v-%d", sampleInterval, events, run))
	if err := os.MkdirAll(rdir, 0o755); err != nil {
		return 0, err
	}
	root := fmt.Sprintf("sluice-bench-%d-%d-%v", os.Getpid(), run, events)
	socket := filepath.Join(rdir, "run", "sluice.sock")
	cfg := fmt.Sprintf(`
[agent]
socket = %q
metrics_addr = "off"
[git]
bin = %q
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_queue_size = 10
max_queue_wait = "10s"
adaptive = true
min_limit = 1
initial_limit = 8
max_limit = 8
[adaptive]
sample_interval = %q
calibration_interval = "30s"
watchers = ["memory"]
kernel_events = %v
[cgroups]
enabled = true
required = true
hierarchy_root = %q
memory_bytes = 268435456
[cgroups.repositories]
count = 1
`, socket, realGit, sampleInterval, events, root)
	a, backoff, err := startReactionAgent(o, rdir, cfg, env)
	if err != nil {
		return 0, err
	}
	defer a.stop()
	defer removeBenchHierarchy(root)
	// Spread the onset of pressure over the agent's sampling period (golden
	// ratio steps), as a real storm arrives at any phase of it.
	period, _ := time.ParseDuration(sampleInterval)
	time.Sleep(time.Duration(math.Mod(float64(run+1)*0.618034, 1) * float64(period)))

	mark, stop := filepath.Join(rdir, "mark"), filepath.Join(rdir, "stop")
	hog := filepath.Join(rdir, "hog")
	script := fmt.Sprintf("#!/bin/sh\n(head -c 246415360 /dev/zero; date +%%s.%%N > %s; i=0; while [ ! -e %s ] && [ $i -lt 700 ]; do sleep 0.1; i=$((i+1)); done) | tail -n 1 > /dev/null\n", mark, stop)
	if err := os.WriteFile(hog, []byte(script), 0o755); err != nil {
		return 0, err
	}
	shimDir := filepath.Join(rdir, "shimbin")
	os.MkdirAll(shimDir, 0o755)
	shim, _ := filepath.Abs(filepath.Join(o.bin, "sluice-shim"))
	os.Symlink(shim, filepath.Join(shimDir, "git-upload-pack"))
	h := exec.Command(filepath.Join(shimDir, "git-upload-pack"), rdir)
	h.Env = append(append([]string{}, env...), "SLUICE_SOCKET="+socket, "SLUICE_REAL_GIT="+hog)
	if err := h.Start(); err != nil {
		return 0, err
	}
	defer func() {
		os.WriteFile(stop, nil, 0o644)
		h.Wait()
	}()
	select {
	case at := <-backoff:
		b, err := os.ReadFile(mark)
		if err != nil {
			return 0, fmt.Errorf("backoff before the hog was in place: %v", err)
		}
		var sec, nsec int64
		if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d.%d", &sec, &nsec); err != nil {
			return 0, err
		}
		return at.Sub(time.Unix(sec, nsec)), nil
	case <-time.After(70 * time.Second):
		return 0, errors.New("no backoff within 70s")
	}
}

// removeBenchHierarchy removes a reaction run's cgroup hierarchy once its
// processes are gone (bounded to about 5 s).
func removeBenchHierarchy(root string) {
	if m, err := cgroup.New(cgroup.Config{Root: root, Buckets: 1}, nil); err == nil {
		for i := 0; i < 100 && m.Destroy() != nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// startReactionAgent starts sluiced with policy cfg and returns it with a
// channel receiving the time of its first "adaptive limit backed off" or
// "host budget lowered" log line.
func startReactionAgent(o options, rdir, cfg string, env []string) (*agentProc, <-chan time.Time, error) {
	backoff := make(chan time.Time, 1)
	onLine := func(line []byte) {
		var l map[string]any
		// The host budget is stepped on the same sample as the adaptive
		// rules, just before them: its "host budget lowered" line is the
		// first reaction, and is measured when present.
		if json.Unmarshal(line, &l) == nil && (l["msg"] == "adaptive limit backed off" || l["msg"] == "host budget lowered") {
			if ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", fmt.Sprint(l["time"])); err == nil {
				select {
				case backoff <- ts:
				default:
				}
			}
		}
	}
	a, err := startBenchAgent(o, rdir, filepath.Join(rdir, "run", "sluice.sock"), cfg, env, nil, nil, onLine)
	if err != nil {
		return nil, nil, err
	}
	return a, backoff, nil
}

// oomReactionRun measures, once, how long the adaptive limiter takes to
// back off after an OOM kill: a hog run through the shim in a bucket
// limited to 64 MiB is OOM-killed. The kill's time is when the bucket's
// memory.oom_control oom_kill moves, read every millisecond by the bench;
// the reaction is from it to the agent's backoff log line (1 ms
// resolution). With events, the kernel's OOM notification (v1 eventfd,
// signalled just before the kill) wakes the calibrator, so the reaction
// can be slightly negative; without, the OOM watcher sees oom_kill move at
// the next 1 s sample.
func oomReactionRun(o options, dir, realGit string, env []string, events bool, run int) (time.Duration, error) {
	rdir := filepath.Join(dir, fmt.Sprintf("oom-reaction-%v-%d", events, run))
	if err := os.MkdirAll(rdir, 0o755); err != nil {
		return 0, err
	}
	root := fmt.Sprintf("sluice-bench-oom-%d-%d-%v", os.Getpid(), run, events)
	socket := filepath.Join(rdir, "run", "sluice.sock")
	cfg := fmt.Sprintf(`
[agent]
socket = %q
metrics_addr = "off"
[git]
bin = %q
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_queue_size = 10
max_queue_wait = "10s"
adaptive = true
min_limit = 1
initial_limit = 8
max_limit = 8
[adaptive]
sample_interval = "1s"
calibration_interval = "30s"
watchers = ["oom"]
kernel_events = %v
[cgroups]
enabled = true
required = true
hierarchy_root = %q
[cgroups.repositories]
count = 1
memory_bytes = 67108864
`, socket, realGit, events, root)
	a, backoff, err := startReactionAgent(o, rdir, cfg, env)
	if err != nil {
		return 0, err
	}
	defer a.stop()
	defer removeBenchHierarchy(root)
	// Spread the kill over the sampling period (golden ratio steps).
	time.Sleep(time.Duration(math.Mod(float64(run+1)*0.618034, 1) * float64(time.Second)))
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0, err
	}
	memPath := ""
	for _, l := range strings.Split(string(own), "\n") {
		if f := strings.SplitN(l, ":", 3); len(f) == 3 && f[1] == "memory" {
			memPath = f[2]
		}
	}
	if memPath == "" {
		return 0, errors.New("no v1 memory line in /proc/self/cgroup")
	}
	oomControl := filepath.Join("/sys/fs/cgroup/memory", memPath, root, "repos/0/memory.oom_control")
	killed := make(chan time.Time, 1)
	stopPoll := make(chan struct{})
	defer close(stopPoll)
	go func() {
		// Every millisecond, at most 20 s: the time oom_kill moves.
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			select {
			case <-stopPoll:
				return
			default:
			}
			b, err := os.ReadFile(oomControl)
			if err == nil && !strings.Contains(string(b), "oom_kill 0\n") {
				killed <- time.Now()
				return
			}
		}
	}()
	hog := filepath.Join(rdir, "hog")
	script := "#!/bin/sh\nhead -c 268435456 /dev/zero | tail -n 1 > /dev/null\n"
	if err := os.WriteFile(hog, []byte(script), 0o755); err != nil {
		return 0, err
	}
	shimDir := filepath.Join(rdir, "shimbin")
	os.MkdirAll(shimDir, 0o755)
	shim, _ := filepath.Abs(filepath.Join(o.bin, "sluice-shim"))
	os.Symlink(shim, filepath.Join(shimDir, "git-upload-pack"))
	h := exec.Command(filepath.Join(shimDir, "git-upload-pack"), rdir)
	h.Env = append(append([]string{}, env...), "SLUICE_SOCKET="+socket, "SLUICE_REAL_GIT="+hog)
	h.Run() // exits 137: its tail is the OOM killer's victim
	var kill time.Time
	select {
	case kill = <-killed:
	case <-time.After(20 * time.Second):
		return 0, fmt.Errorf("%s: oom_kill did not move within 20s", oomControl)
	}
	select {
	case at := <-backoff:
		return at.Sub(kill), nil
	case <-time.After(10 * time.Second):
		return 0, errors.New("no backoff within 10s of the OOM kill")
	}
}
