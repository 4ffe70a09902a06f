package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// adaptivePolicy: an adaptive upload-pack rule with fast sampling, under a
// parent cgroup with the given limits.
func adaptivePolicy(root, parentLimits string) string {
	return fmt.Sprintf(`
[[limit]]
name = "upload-pack"
match = ["upload-pack"]
key = "repo"
max_queue_size = 4
max_queue_wait = "30s"
adaptive = true
min_limit = 1
initial_limit = 8
max_limit = 8

[adaptive]
sample_interval = "200ms"
calibration_interval = "1s"
cooldown = "3s"
watchers = ["memory", "oom", "cpu_throttle"]

[cgroups]
enabled = true
required = true
hierarchy_root = %q
%s

[cgroups.repositories]
count = 4
`, root, parentLimits)
}

// backoffs returns the times and reasons of the agent's backoff log lines.
func backoffs(t *testing.T, logs string) (times []time.Time, reasons []string) {
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) != nil || l["msg"] != "adaptive limit backed off" {
			continue
		}
		ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", l["time"].(string))
		if err != nil {
			t.Fatalf("log time %v: %v", l["time"], err)
		}
		times = append(times, ts)
		reasons = append(reasons, fmt.Sprint(l["reason"]))
	}
	return times, reasons
}

func TestAdaptiveMemoryBackoffAndRecovery(t *testing.T) {
	needCgroups(t)
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err != nil {
		t.Skip("no cgroup v1 memory controller")
	}
	root := cgroupRoot(t)
	// Parent limited to 256 MiB: a 235 MiB hog (plus its shim) is over 0.9 of it.
	// Cool-down 8 s: the hog's one episode (2 s of holding, longer on a
	// loaded machine, where CI saw it stretch past a 3 s cool-down and
	// halve twice) must cost one decrease.
	a := startAgent(t, strings.Replace(adaptivePolicy(root, "memory_bytes = 268435456"), `cooldown = "3s"`, `cooldown = "8s"`, 1), "open")
	repo := makeRepo(t, a.dir, "r", 2)
	mark := filepath.Join(a.dir, "hog-ready")
	// tail keeps a newline-free stream in memory until its input ends:
	// 235 MiB held for 2 s, the time it was all in place written to mark.
	hogGit := fakeGit(t, a.dir, fmt.Sprintf("(head -c 246415360 /dev/zero; date +%%s.%%N > %s; sleep 2) | tail -n 1 > /dev/null", mark))
	hog := startProc(t, a.dir, a.env("SLUICE_REAL_GIT="+hogGit), filepath.Join(a.shimBin, "git-upload-pack"), repo)
	// A bound, not a reaction time (that is logged below): on a loaded
	// machine writing the 235 MiB alone took over 10 s in CI.
	waitFor(t, 60*time.Second, "the limit to back off", func() bool {
		return a.metric(`sluice_concurrency_limiting_current_limit{limit="upload-pack"}`) == 4
	})
	if code := hog.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("hog exit %d: %s", code, hog.stderr.String())
	}
	b, err := os.ReadFile(mark)
	if err != nil {
		t.Fatal(err)
	}
	var sec, nsec int64
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d.%d", &sec, &nsec); err != nil {
		t.Fatalf("hog mark %q: %v", b, err)
	}
	ready := time.Unix(sec, nsec)
	times, reasons := backoffs(t, a.Logs())
	if len(times) == 0 || !strings.Contains(reasons[0], "memory: working set") {
		t.Fatalf("no memory backoff in the log: %v", reasons)
	}
	t.Logf("reaction: backoff logged %v after the hog's working set was in place (sample interval 200ms)", times[0].Sub(ready).Round(time.Millisecond))
	if n := a.metric(`sluice_concurrency_limiting_backoff_events_total{watcher="memory"}`); n < 1 {
		t.Errorf("backoff events{memory} = %v", n)
	}
	// One pressure episode of 2 s, cool-down 8 s: one decrease only.
	if got := a.metric(`sluice_concurrency_limiting_current_limit{limit="upload-pack"}`); got != 4 {
		t.Errorf("limit after one episode = %v, want 4 (8 halved once)", got)
	}

	// The load ends; with the rule in use (4 held: at least half of any
	// limit up to 8) and no pressure, the limit climbs back by 1 per
	// calibration interval up to max.
	var held []*proc
	for i := 0; i < 4; i++ {
		h := holdUploadPack(t, a, repo)
		<-h.first
		held = append(held, h)
	}
	waitFor(t, 60*time.Second, "the limit to climb back to 8", func() bool {
		return a.metric(`sluice_concurrency_limiting_current_limit{limit="upload-pack"}`) == 8
	})
	for _, h := range held {
		h.release()
		h.wait(t, 10*time.Second)
	}
}

func TestAdaptiveCPUThrottleBackoff(t *testing.T) {
	needCgroups(t)
	if _, err := os.Stat("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"); err != nil {
		t.Skip("no cgroup v1 cpu controller with CFS quota")
	}
	root := cgroupRoot(t)
	// Parent limited to 10% of a CPU; a busy loop is throttled nearly always.
	a := startAgent(t, adaptivePolicy(root, "cpu_quota_us = 10000"), "open")
	repo := makeRepo(t, a.dir, "r", 2)
	burn := fakeGit(t, a.dir, "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done")
	p := startProc(t, a.dir, a.env("SLUICE_REAL_GIT="+burn), filepath.Join(a.shimBin, "git-upload-pack"), repo)
	waitFor(t, 15*time.Second, "a throttle backoff", func() bool {
		return a.metric(`sluice_concurrency_limiting_backoff_events_total{watcher="cpu_throttle"}`) >= 1
	})
	if got := a.metric(`sluice_concurrency_limiting_current_limit{limit="upload-pack"}`); got >= 8 {
		t.Errorf("limit %v after throttling, want below 8", got)
	}
	_, reasons := backoffs(t, a.Logs())
	if len(reasons) == 0 || !strings.Contains(reasons[0], "cpu_throttle: throttled in") {
		t.Errorf("backoff log reasons %v", reasons)
	}
	p.wait(t, 120*time.Second)
}
