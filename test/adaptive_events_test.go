package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestAdaptiveOOMEventBackoff: with a one-minute sample interval (no poll
// before the first minute), a hog OOM-killed in its 64 MiB bucket backs
// the limit off at once: the kernel's OOM notification (v1 eventfd through
// cgroup.event_control) wakes the calibrator.
func TestAdaptiveOOMEventBackoff(t *testing.T) {
	needCgroups(t)
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err != nil {
		t.Skip("no cgroup v1 memory controller: OOM notifications through cgroup.event_control are v1")
	}
	noSwap(t)
	root := cgroupRoot(t)
	pol := strings.Replace(adaptivePolicy(root, ""), `sample_interval = "200ms"`, `sample_interval = "1m"`, 1)
	pol = strings.Replace(pol, `watchers = ["memory", "oom", "cpu_throttle"]`, `watchers = ["oom"]`, 1)
	pol = strings.Replace(pol, "count = 4\n", "count = 4\nmemory_bytes = 67108864\n", 1)
	a := startAgent(t, pol, "open")
	if !strings.Contains(a.Logs(), "kernel memory notifications registered") {
		t.Fatalf("no registration line in the log:\n%s", a.Logs())
	}
	repo := makeRepo(t, a.dir, "r", 2)
	hogGit := fakeGit(t, a.dir, "head -c 268435456 /dev/zero | tail -n 1 > /dev/null")
	hog := startProc(t, a.dir, a.env("SLUICE_REAL_GIT="+hogGit), filepath.Join(a.shimBin, "git-upload-pack"), repo)
	hog.wait(t, 30*time.Second)
	waitFor(t, 30*time.Second, "the limit to back off (before the first 1 min sample)", func() bool {
		return a.metric(`sluice_concurrency_limiting_current_limit{limit="upload-pack"}`) == 4
	})
	// With no poll for a minute, only a kernel notification can have woken
	// the calibrator. Which reason it logs depends on which the sample saw
	// first: the OOM notification itself, or (woken by a pressure-level
	// notification of the same episode) the kill counter already moved.
	_, reasons := backoffs(t, a.Logs())
	if len(reasons) != 1 || !strings.HasPrefix(reasons[0], "oom: ") {
		t.Fatalf("backoff reasons %q, want one OOM backoff woken by a kernel notification", reasons)
	}
	if n := a.metric(`sluice_cgroup_oom_kills_total{scope="buckets"}`); n < 1 {
		t.Errorf("sluice_cgroup_oom_kills_total{scope=buckets} = %v, want >= 1", n)
	}
}

// TestAdaptiveWatchesOwnCgroup: with [cgroups] enabled = false and sluiced
// started inside a memory cgroup limited to 256 MiB (standing for the Git
// server's), the memory watcher compares against that limit, not the
// host's memory, and says so in the log; a hog run through the shim in the
// same cgroup backs the limit off.
func TestAdaptiveWatchesOwnCgroup(t *testing.T) {
	needCgroups(t)
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err != nil {
		t.Skip("no cgroup v1 memory controller (the test builds its server cgroup with it)")
	}
	own := ""
	b, _ := os.ReadFile("/proc/self/cgroup")
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "4:memory:"); ok {
			own = p
		} else if f := strings.SplitN(l, ":", 3); len(f) == 3 && f[1] == "memory" {
			own = f[2]
		}
	}
	if own == "" {
		t.Skip("no memory line in /proc/self/cgroup")
	}
	dir := filepath.Join("/sys/fs/cgroup/memory", own, fmt.Sprintf("sluice-e2e-own-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 100; i++ {
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Errorf("server cgroup %s left behind", dir)
	})
	if err := os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), []byte(strconv.Itoa(256<<20)), 0); err != nil {
		t.Fatal(err)
	}
	enter := []string{"/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, dir}
	a := newAgentDir(t)
	a.wrap = enter
	pol := strings.Replace(adaptivePolicy("unused", ""), "enabled = true\nrequired = true", "enabled = false", 1)
	a.start(pol, "open")
	if !strings.Contains(a.Logs(), "watching the agent's own memory cgroup") ||
		!strings.Contains(a.Logs(), `"memory_limit_bytes":268435456`) {
		t.Fatalf("the log does not say the agent's own 256 MiB cgroup is watched:\n%s", a.Logs())
	}
	repo := makeRepo(t, a.dir, "r", 2)
	mark := filepath.Join(a.dir, "hog-ready")
	hogGit := fakeGit(t, a.dir, fmt.Sprintf("(head -c 246415360 /dev/zero; date +%%s.%%N > %s; sleep 5) | tail -n 1 > /dev/null", mark))
	hog := startProc(t, a.dir, a.env("SLUICE_REAL_GIT="+hogGit), append(enter, filepath.Join(a.shimBin, "git-upload-pack"), repo)...)
	// Generous bounds: on a loaded machine the hog takes a while to fill
	// its 235 MiB, and it holds them for 5 s so a late sample still sees it.
	waitFor(t, 30*time.Second, "the limit to back off", func() bool {
		return a.metric(`sluice_concurrency_limiting_current_limit{limit="upload-pack"}`) == 4
	})
	hog.wait(t, 60*time.Second)
	_, reasons := backoffs(t, a.Logs())
	if len(reasons) == 0 || !strings.Contains(reasons[0], "of limit 256 MiB") {
		t.Fatalf("backoff reasons %q, want the memory watcher against the 256 MiB limit", reasons)
	}
}

// noSwap skips when swap is on: a small memory limit without a memsw
// limit would swap rather than OOM-kill.
func noSwap(t *testing.T) {
	t.Helper()
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "SwapTotal:" && f[1] != "0" {
			t.Skipf("swap is on (%s): a small memory limit would swap, not OOM-kill", line)
		}
	}
}
